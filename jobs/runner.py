"""How every Spark command runs: arguments, checks before the JVM, the session, exit codes.

Exit codes (see :mod:`jobs.common.errors`): 0 success; 2 bad input, one line on stderr, nothing
written; 75 a concurrent run got in the way, run again; 1 anything else, with the traceback and a
line saying what to do. The error is always the last line printed: the Spark session (when this
command started it) is stopped before it is written.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import sys
import traceback
from typing import Callable

from jobs.common.errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_RETRY, ConcurrentRunError,
                         InputError, PartialFailure)
from jobs.common.log import set_verbose
from jobs.common.runtime import jvm_cache_dir
from jobs.config import JobConfig, load_config
from jobs.io.session import build_session, check_classic, current_log
from jobs.io.sources import check_file_systems, preflight


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", help="YAML job config (see conf/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, for example select.k=7 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Spark's log (WARN and up) and stage bars, the model libraries' "
                        "notices and every few picks of the selection (default: the project's "
                        "own lines and one progress bar; spark.log_level sets a level)")
    return p


def _stop(spark) -> None:
    if spark is not None:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001 - the error being reported matters more
            pass


def _spark_log() -> str:
    path = current_log()
    return f" and Spark's own log, {path}" if path else ""


def _disk_full(err: BaseException, cfg: JobConfig | None) -> str | None:
    """The line for a write that failed because a disk is full (``No space left on device``,
    from Python or from Spark's JVM), naming the output location and its free space; None for
    any other failure."""
    text = f"{err}\n{getattr(err, 'java_exception', '')}"
    if not (isinstance(err, OSError) and err.errno == errno.ENOSPC) \
            and "No space left on device" not in text:
        return None
    where = ""
    if cfg is not None:
        path = cfg.output.path.removeprefix("file:")
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(os.path.abspath(probe))
        free = shutil.disk_usage(probe).free if probe and "://" not in path else None
        where = (f" under output.path {cfg.output.path!r}"
                 + (f" ({free // 1024} KiB free there now)" if free is not None else ""))
    return (f"no space left on device: a write{where} or in Spark's local folders "
            "(spark.local.dir) ran out of room. Free space or choose another output.path, then "
            "run again: committed stages are kept and the re-run resumes.")


_TASK_FAILURE = re.compile(r"Job aborted due to stage failure: (Task \S+ in stage \S+ failed \d+ "
                           r"times?).*?\): (?:[\w.$]+(?:Exception|Error): )?([^\n]*)")


def _summary(err: BaseException) -> str:
    """The failure's one-line summary: for a Spark job that a task's failure aborted, the task
    and what ended it (``Python worker exited unexpectedly (crashed)``, an executor lost...),
    which a Py4J error's own first line (``An error occurred while calling o1561.getResult``)
    does not say."""
    found = _TASK_FAILURE.search(f"{err}\n{getattr(err, 'java_exception', '')}")
    if found is not None:
        cause = found.group(2).split(". Consider setting")[0].strip().rstrip(".")
        return f"a Spark task failed ({found.group(1)}): {cause[:300]}"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def run_main(prog: str, description: str, body: Callable[[object, JobConfig], None],
             argv=None, command: str = "run",
             precheck: Callable[[JobConfig], None] | None = None,
             reads: Callable[[JobConfig], tuple] | None = None,
             requires: tuple[str, str] | None = None, classic: str | None = None,
             options: Callable[[argparse.ArgumentParser], None] | None = None,
             parsed: dict | None = None) -> int:
    """Parses ``--config``/``--set``, checks everything it can before the JVM starts, builds
    the session and runs ``body(spark, cfg)``; returns the exit code. ``command``, ``reads``
    and ``requires`` say what the config must hold (see :func:`jobs.config.load_config`; a
    stage declares them); ``precheck(cfg)`` runs the command's own checks before the JVM
    starts. ``classic`` names the command when it needs a classic session (refused on Spark
    Connect, see :func:`jobs.io.session.check_classic`). ``options(parser)`` adds the
    command's own arguments; their values go into ``parsed`` (a dict the command's ``precheck``
    and ``body`` read) before anything else runs."""
    p = parser(prog, description)
    if options is not None:
        options(p)
    args = p.parse_args(argv)
    if parsed is not None:
        parsed.update(vars(args))
    spark = None
    try:
        cfg = load_config(args.config, args.set, command, reads, requires)
        loud = args.verbose or cfg.spark.log_level is not None
        set_verbose(loud)
        sides = tuple(reads(cfg)) if reads is not None else (
            ("pool", "target") if command == "run" else ())
        preflight(cfg, sides)
        if precheck is not None:
            precheck(cfg)
        from pyspark.sql import SparkSession

        existing = SparkSession.getActiveSession()
        session = build_session(cfg.spark.app_name, cfg.spark.master, cfg.spark.conf,
                                quiet=not loud,
                                log_level=cfg.spark.log_level or ("WARN" if loud else None),
                                jvm_cache=jvm_cache_dir(cfg.runtime.jvm_cache))
        spark = session if existing is None else None      # stop only a session made here
        if classic is not None:
            check_classic(session, classic)
        check_file_systems(session, cfg, sides)
        body(session, cfg)
        _stop(spark)
        return EXIT_OK
    except InputError as err:
        _stop(spark)
        print(f"gio-spark: error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except ConcurrentRunError as err:
        _stop(spark)
        print(f"gio-spark: retry: {err}", file=sys.stderr, flush=True)
        return EXIT_RETRY
    except PartialFailure as err:
        _stop(spark)
        print(f"gio-spark: failed: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _stop(spark)
        print("gio-spark: interrupted; committed stages are kept and a re-run resumes.",
              file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: report and exit 1
        full = _disk_full(err, locals().get("cfg"))
        if full is not None:
            _stop(spark)
            print(f"gio-spark: failed: {full}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        trace = traceback.format_exc()
        _stop(spark)
        print(trace, file=sys.stderr, end="")
        print(f"gio-spark: failed: {_summary(err)}\ngio-spark: committed stages are kept and a "
              "re-run resumes. Unless the cause is the environment (memory, disk, network), "
              f"please report this with the traceback above{_spark_log()}.", file=sys.stderr,
              flush=True)
        return EXIT_FAILED
