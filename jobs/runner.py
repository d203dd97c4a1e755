"""What every entry point shares: argument parsing, exit codes, stage fingerprints and reuse.

Exit codes: 0 success, 2 a problem with the config or the inputs (one message on stderr, nothing
written), 1 anything else.

A stage's *fingerprint* hashes its parameters and the identity of its inputs (a Delta table's
version; files' names, sizes and modification times; the upstream stages' fingerprints). After a
stage commits its output it records ``(stage, fingerprint)`` in the ``stages`` table; a later run
with the same fingerprint reuses the output instead of recomputing it, so a pipeline that failed
half-way resumes where it stopped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
from typing import Callable

from jobs.config import ConfigError, JobConfig, SourceSection, load_config
from jobs.sources import _REMOTE


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(spark, src: SourceSection) -> dict:
    """What identifies a source's content without reading it."""
    ident = {"format": src.format, "path": src.path, "text": src.text_column,
             "id": src.id_column, "embedding": src.embedding_column,
             "options": src.options}
    if src.format == "demo":
        ident["python"] = sys.version
    elif src.format == "delta":
        from delta.tables import DeltaTable
        last = DeltaTable.forPath(spark, src.path).history(1).select("version").first()
        ident["version"] = int(last[0])
    elif not src.path.startswith(_REMOTE):
        files = []
        if os.path.isfile(src.path):
            st = os.stat(src.path)
            files.append((os.path.basename(src.path), st.st_size, st.st_mtime_ns))
        for root, _, names in sorted(os.walk(src.path)):
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                files.append((os.path.relpath(os.path.join(root, name), src.path), st.st_size,
                              st.st_mtime_ns))
        ident["files"] = files
    return ident


def stage_done(spark, cfg: JobConfig, stage: str, fp: str, *tables: str) -> bool:
    """Whether ``stage`` already committed its output for this fingerprint."""
    from pyspark.sql import functions as F

    from jobs.tables import exists, table_path
    stages = table_path(cfg.output.path, "stages")
    if not exists(spark, stages):
        return False
    if not all(exists(spark, table_path(cfg.output.path, t)) for t in tables):
        return False
    found = (spark.read.format("delta").load(stages)
             .where((F.col("stage") == stage) & (F.col("fingerprint") == fp)).take(1))
    return bool(found)


def record_stage(spark, cfg: JobConfig, stage: str, fp: str) -> None:
    from jobs.tables import STAGES, replace_where, table_path
    row = spark.createDataFrame([(stage, fp, dt.datetime.now())], STAGES)
    replace_where(spark, row, table_path(cfg.output.path, "stages"), "stage", stage)


def log(message: str) -> None:
    print(f"[gio-spark] {message}", flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML job config (see conf/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, for example select.k=7 (repeatable)")
    return p


def run_main(description: str, body: Callable, argv=None) -> int:
    """Parses ``--config``/``--set``, validates, builds the session and runs ``body(spark, cfg)``."""
    args = parser(description).parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"gio-spark: error: {err}", file=sys.stderr)
        return 2
    from jobs.session import build_session
    try:
        spark = build_session(cfg.spark.app_name, cfg.spark.master, cfg.spark.conf)
        body(spark, cfg)
    except ConfigError as err:
        print(f"gio-spark: error: {err}", file=sys.stderr)
        return 2
    return 0
