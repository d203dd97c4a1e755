"""The datamodels commands: many models trained on random subsets as Spark tasks, their records
in a Delta store, and a sparse linear datamodel per target fitted from them.

    gio-spark datamodels init     --config conf/datamodels.yaml   # the store, from the spec
    gio-spark datamodels work     --config ...  [--set datamodels.args.x=1]   # train the models
    gio-spark datamodels regress  --config ...    # a lasso path per target -> weights
    gio-spark datamodels select   --config ...    # the rows with the most positive weight
    gio-spark datamodels export   --config ...    # the source's .npy layout, for its tools
    gio-spark datamodels example  --config conf/datamodels.yaml   # digits, end to end

**The store** (``datamodels.store``, default ``<output.path>/datamodels_store``) is a Delta table
created from the spec: ``index``, ``completed``, ``attempt``, ``started_at``, ``finished_at``,
``seconds``, ``host``, ``error`` and one column per spec key (an array, flattened in C order, or
a scalar). A row exists once an index has been tried: ``completed`` with its values, or not,
with the error of its last attempt. The spec is the table's property ``gio-spark.datamodels-spec``;
a store of another spec is refused.

**Workers.** ``work`` runs ``main(index=i, logdir=<logdir>/workers/<i>, **datamodels.args)``
from the module ``datamodels.main_import`` (the source's contract) as one Spark task per index
not yet completed (``indices_per_task`` > 1 runs several in turn in one task, which saves
Spark's per-task cost for models that train in a fraction of a second), ``commit_every``
indices a Spark job, ``jobs_in_flight`` jobs at once. Each
job's results are checked against the spec by the task and committed by the driver in one MERGE
that only inserts new indices or updates ones not completed, so a re-run after a failure
finishes the rest, and an index is never written twice into the table, even by two runs at
once. A task whose ``main`` raises is retried by Spark (``spark.task.maxFailures``; ``local[N,F]``
in local mode); on its last attempt the error is recorded for that index instead, the other
indices still commit, and the command ends with exit code 1 naming the failed indices. When
every index of the first job fails, the rest are not started.

**Regression** (``regress``): the completed models' ``x_name`` (masks) and ``y_name`` (outputs)
are read, split by ``seed`` into train, validation and test models, and
:func:`gio_core.datamodels.lasso_path` fits every target of ``[target_start, target_end)``:
on the driver (``mode: local``, JAX on CPU or GPU) or as Spark tasks of ``target_chunk``
targets each (``mode: spark``). Three tables, each written in one transaction under the fit's id
(``datamodels.regress_id`` or ``datamodels-<fingerprint>``): ``datamodels_weights`` (nonzero
weights), ``datamodels_fits`` (per target) and ``datamodels_regressions`` (the fit's record).

**Selection** (``select``): the ``budget`` training examples with the largest total positive
weight over the targets, written to ``selected_rows`` as the pipeline's explode writes a
selection (the pool's columns, ``rank``, ``run_id``), so ``gio-spark train`` trains on it
(``train.selection``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import faults
from jobs.common.errors import ConcurrentRunError, InputError, PartialFailure
from jobs.common.log import log
from jobs.common.runtime import configure_jax, library_versions
from jobs.config import RUNTIME_DATAMODELS_OPTIONS, JobConfig, datamodels_spec
from jobs.config.store_spec import Spec, parse_spec
from jobs.datamodels import example as datamodels_example
from jobs.datamodels.worker import work_task
from jobs.io import tables
from jobs.io.sources import check_outputs
from jobs.stages.base import Stage, no_sides, pool_only, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import read_only

STORE = "datamodels_store"
SPEC_PROPERTY = "gio-spark.datamodels-spec"
_SQL_TYPES = {"boolean": T.BooleanType(), "tinyint": T.ByteType(), "smallint": T.ShortType(),
              "int": T.IntegerType(), "bigint": T.LongType(), "float": T.FloatType(),
              "double": T.DoubleType()}


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------

def store_path(cfg: JobConfig) -> str:
    return cfg.datamodels.store or tables.table_path(cfg.output.path, STORE)


def store_schema(spec: Spec) -> T.StructType:
    fields = [T.StructField("index", T.LongType(), False),
              T.StructField("completed", T.BooleanType(), False),
              T.StructField("attempt", T.IntegerType(), True),
              T.StructField("started_at", T.TimestampType(), True),
              T.StructField("finished_at", T.TimestampType(), True),
              T.StructField("seconds", T.DoubleType(), True),
              T.StructField("host", T.StringType(), True),
              T.StructField("error", T.StringType(), True)]
    for f in spec.fields:
        base = _SQL_TYPES[f.spark_type.removeprefix("array<").removesuffix(">")]
        fields.append(T.StructField(f.name, base if f.scalar else T.ArrayType(base, True), True))
    return T.StructType(fields)


@dataclass(frozen=True)
class Store:
    path: str
    spec: Spec
    version: int


def _location(path: str) -> str:
    return path if "://" in path or path.startswith("file:") else os.path.abspath(path)


def open_store(spark, path: str, spec: Spec | None = None) -> Store | None:
    """The store at ``path`` (checked: gio-spark's, of ``spec`` when given), or None when there
    is nothing there.

    Raises:
      InputError: the path holds other data, or a store of another spec.
    """
    from delta.tables import DeltaTable
    local = path.removeprefix("file:")
    if "://" not in local and not os.path.exists(local):
        return None
    if not tables.exists(spark, path):
        if "://" not in local and os.path.isdir(local) and not os.listdir(local):
            return None
        raise InputError(f"datamodels.store {path!r} holds data that is not a datamodels store "
                         "(not a Delta table); gio-spark never writes into data it did not "
                         "create. Point datamodels.store at a new path.")
    table = DeltaTable.forPath(spark, path)
    props = dict(table.detail().select("properties").first()["properties"] or {})
    if props.get(tables.TABLE_PROPERTY) != STORE or SPEC_PROPERTY not in props:
        raise InputError(f"the Delta table {path!r} is not a datamodels store created by "
                         f"gio-spark (it lacks the property {tables.TABLE_PROPERTY}={STORE}); "
                         "point datamodels.store at a new path.")
    stored = parse_spec(json.loads(props[SPEC_PROPERTY]), f"the store {path!r}")
    if spec is not None and stored.to_json() != spec.to_json():
        raise InputError(f"the store {path!r} was created for another spec ({stored.to_json()}); "
                         f"this config's is {spec.to_json()}. Use the store's spec, or point "
                         "datamodels.store at a new path.")
    version = int(table.history(1).select("version").first()[0])
    return Store(path, stored, version)


def create_store(spark, path: str, spec: Spec) -> Store:
    """Creates the store (race-free: a concurrent creation of the same spec is fine)."""
    from delta.tables import DeltaTable

    def create():
        if not tables.exists(spark, path):
            (DeltaTable.createIfNotExists(spark).location(_location(path))
             .addColumns(store_schema(spec)).property(tables.TABLE_PROPERTY, STORE)
             .property(tables.SCHEMA_PROPERTY, tables.SCHEMA_VERSION)
             .property(SPEC_PROPERTY, spec.to_json()).execute())
    tables.with_retries(create, f"creating {path}")
    store = open_store(spark, path, spec)
    assert store is not None
    return store


def ensure_store(spark, cfg: JobConfig) -> tuple[Store, bool]:
    """The config's store, created from its spec when missing; ``(store, created)``."""
    spec = datamodels_spec(cfg)
    path = store_path(cfg)
    store = open_store(spark, path, spec)
    if store is not None:
        return store, False
    return create_store(spark, path, spec), True


def existing_store(spark, cfg: JobConfig) -> Store:
    """The config's store, which must exist (regress, select, export)."""
    path = store_path(cfg)
    store = open_store(spark, path, datamodels_spec(cfg))
    if store is None:
        raise InputError(f"there is no datamodels store at {path!r}; run gio-spark datamodels "
                         "init and work first (or correct datamodels.store).")
    return store


def completed_indices(spark, store: Store) -> np.ndarray:
    rows = (spark.read.format("delta").option("versionAsOf", store.version).load(store.path)
            .where(F.col("completed")).select("index").toArrow())
    return np.sort(rows.column("index").to_numpy().astype(np.int64))


# ---------------------------------------------------------------------------
# The user's main: found and checked on the driver, shipped to the executors
# ---------------------------------------------------------------------------

def import_main(main_import: str):
    """``main`` from the module ``main_import``, imported as ``python -m`` would (the working
    directory first). Raises InputError when it cannot be imported or does not take
    ``index`` and ``logdir`` as keywords."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(main_import)
    except Exception as err:  # noqa: BLE001 - any import failure is the config's problem here
        raise InputError(f"datamodels.main_import {main_import!r} cannot be imported: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         f" (working directory {os.getcwd()!r}).") from None
    main = getattr(module, "main", None)
    if not callable(main):
        raise InputError(f"datamodels.main_import {main_import!r} has no function main; define "
                         "main(*, index, logdir, **kwargs) returning a dict of the spec's keys.")
    return main


def check_main(cfg: JobConfig) -> None:
    """Before Spark starts: ``main`` imports and accepts ``index``, ``logdir`` and the args."""
    d = cfg.datamodels
    main = import_main(d.main_import)
    try:
        inspect.signature(main).bind(index=0, logdir="", **d.args)
    except TypeError as err:
        raise InputError(f"datamodels.main_import {d.main_import!r}: main cannot be called as "
                         f"main(index=..., logdir=...{', ' if d.args else ''}"
                         f"{', '.join(f'{k}=...' for k in d.args)}): {err}. Give it keyword "
                         "parameters index and logdir (and those of datamodels.args, or "
                         "**kwargs).") from None
    except ValueError:
        pass                       # no signature to inspect (a builtin): let it run


def _shipped_names(sc) -> set:
    """The file names the application already sends to its executors (``--py-files``,
    ``addFile``/``addPyFile``): Spark refuses a second file of the same name."""
    paths = [p for p in sc.getConf().get("spark.submit.pyFiles", "").split(",") if p]
    try:
        paths += list(sc.listFiles)
    except Exception:  # noqa: BLE001 - listing is a convenience; addPyFile still checks
        pass
    return {os.path.basename(p.rstrip("/")) for p in paths}


def ship_main(spark, main_import: str) -> str | None:
    """Makes ``main_import`` importable on the executors: a module or package outside the
    installed packages is added to the application's Python files (``addPyFile``; a package is
    zipped), unless a file of that name is sent already (``--py-files``). Returns what was
    shipped, or None."""
    top = main_import.split(".")[0]
    if top in ("jobs", "gio_core"):
        return None
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        origin = list(spec.submodule_search_locations)[0]
    else:
        origin = spec.origin or ""
    if not origin or not os.path.exists(origin) or re.search(r"[/\\](site|dist)-packages[/\\]",
                                                              origin):
        return None
    sc = spark.sparkContext
    name = f"{top}.zip" if os.path.isdir(origin) else os.path.basename(origin)
    if name in _shipped_names(sc):
        return None
    if os.path.isdir(origin):
        folder = tempfile.mkdtemp(prefix="gio-spark-main-")
        archive = os.path.join(folder, f"{top}.zip")
        with zipfile.ZipFile(archive, "w") as zf:
            for root, dirs, names in os.walk(origin):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(names):
                    if name.endswith(".pyc"):
                        continue
                    full = os.path.join(root, name)
                    zf.write(full, os.path.join(top, os.path.relpath(full, origin)))
        sc.addPyFile(archive)
        return archive
    sc.addPyFile(origin)
    return origin


def task_max_failures(spark) -> int:
    """How many attempts Spark gives a task: ``local[N,F]`` -> F, plain local -> 1, else
    ``spark.task.maxFailures`` (default 4)."""
    master = spark.sparkContext.master
    m = re.match(r"^local\[\s*(?:\*|\d+)\s*,\s*(\d+)\s*\]$", master)
    if m:
        return int(m.group(1))
    if master.startswith("local"):
        return 1
    return int(spark.sparkContext.getConf().get("spark.task.maxFailures", "4"))


# ---------------------------------------------------------------------------
# Workers: one Spark task per index
# ---------------------------------------------------------------------------

def _results_frame(spark, spec: Spec, results: list) -> DataFrame:
    """The results of one job as a DataFrame of the store's schema (built through Arrow)."""
    import pyarrow as pa
    results = sorted(results, key=lambda r: r[0])
    utc = pa.timestamp("us", tz="UTC")
    cols = {
        "index": pa.array([r[0] for r in results], pa.int64()),
        "completed": pa.array([r[1] for r in results], pa.bool_()),
        "attempt": pa.array([r[2] for r in results], pa.int32()),
        "started_at": pa.array([int(r[3] * 1e6) for r in results], pa.int64()).cast(utc),
        "finished_at": pa.array([int(r[4] * 1e6) for r in results], pa.int64()).cast(utc),
        "seconds": pa.array([float(r[5]) for r in results], pa.float64()),
        "host": pa.array([r[6] for r in results], pa.string()),
        "error": pa.array([r[7] for r in results], pa.string()),
    }
    for f in spec.fields:
        arrow_type = pa.from_numpy_dtype(np.dtype(f.stored))
        if f.scalar:
            cols[f.name] = pa.array([None if r[8] is None else r[8][f.name][0] for r in results],
                                    arrow_type)
            continue
        present = [r[8][f.name] for r in results if r[8] is not None]
        flat = (np.concatenate(present) if present else np.zeros(0, f.stored)).astype(f.stored)
        offsets, mask, at = [0], [], 0
        for r in results:
            if r[8] is not None:
                at += f.size
            offsets.append(at)
            mask.append(r[8] is None)
        cols[f.name] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                                pa.array(flat, arrow_type),
                                                mask=pa.array(mask, pa.bool_()))
    table = pa.table(cols)
    return tables.conform(spark.createDataFrame(table), store_schema(spec))


def commit_results(spark, store: Store, results: list, again: bool = False) -> None:
    """One MERGE: inserts indices the store lacks, updates those not completed; completed
    indices are never written again, unless ``again`` (``datamodels.do_if_complete``): then a
    completed result replaces a completed row too (a failure never does)."""
    from delta.tables import DeltaTable
    if not results:
        return
    frame = _results_frame(spark, store.spec, results)
    lo, hi = min(r[0] for r in results), max(r[0] for r in results)
    cond = f"t.index >= {lo} AND t.index <= {hi} AND t.index = s.index"

    def merge():
        (DeltaTable.forPath(spark, store.path).alias("t").merge(frame.alias("s"), cond)
         .whenMatchedUpdateAll(condition="t.completed = false"
                               + (" OR s.completed = true" if again else ""))
         .whenNotMatchedInsertAll().execute())
    faults.point(f"before:{STORE}")
    tables.with_retries(merge, f"committing to {store.path}")
    faults.point(f"after:{STORE}")


@dataclass
class WorkReport:
    pending: int
    completed: int = 0
    failed: dict = dataclasses.field(default_factory=dict)    # index -> error
    lost: dict = dataclasses.field(default_factory=dict)      # index -> why its job failed
    seconds: float = 0.0


def run_work(spark, cfg: JobConfig) -> WorkReport:
    """Trains every index of the spec (or ``datamodels.indices``) that the store has not
    completed; returns what happened. Raises :class:`PartialFailure` when indices failed."""
    d = cfg.datamodels
    store, created = ensure_store(spark, cfg)
    if created:
        log(f"datamodels: created the store {store.path} ({store.spec.num_models} models; keys "
            f"{', '.join(store.spec.names)})")
    lo, hi = d.indices if d.indices is not None else (0, store.spec.num_models)
    if hi > store.spec.num_models:
        raise InputError(f"datamodels.indices [{lo}, {hi}) reaches past num_models "
                         f"({store.spec.num_models}); indices run from 0 to num_models - 1.")
    done = set(completed_indices(spark, store).tolist())
    pending = [i for i in range(lo, hi) if d.do_if_complete or i not in done]
    report = WorkReport(len(pending))
    if not pending:
        log(f"datamodels work: all {hi - lo} indices in [{lo}, {hi}) are completed in "
            f"{store.path}; nothing to run.")
        return report
    logdir = d.logdir or os.path.join(cfg.output.path, "datamodels_logs")
    if "://" not in logdir:
        logdir = os.path.abspath(logdir.removeprefix("file:"))
        os.makedirs(logdir, exist_ok=True)
    check_main(cfg)
    shipped = ship_main(spark, d.main_import)
    max_failures = task_max_failures(spark)
    waves = [pending[i:i + d.commit_every] for i in range(0, len(pending), d.commit_every)]
    log(f"datamodels work: {len(pending)} of {hi - lo} indices to run ({len(done)} completed "
        f"before) in {len(waves)} job(s) of up to {d.commit_every} indices, "
        f"{d.indices_per_task} per task; main "
        f"{d.main_import}{' (shipped ' + os.path.basename(shipped) + ')' if shipped else ''}, "
        f"{max_failures} attempt(s) per task, logdir {logdir}")
    sc = spark.sparkContext
    group = f"gio-spark-datamodels-{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
    task = partial(work_task, store.spec.to_json(), d.main_import, logdir, dict(d.args),
                   max_failures, d.timeout_s, argv=list(d.argv))

    def run_wave(wave):
        sc.setJobGroup(group, f"datamodels work: indices {wave[0]}..{wave[-1]}", True)
        return sc.parallelize(wave, -(-len(wave) // d.indices_per_task)).mapPartitions(
            task).collect()

    t0 = time.perf_counter()
    last_log = t0
    aborted = False
    with ThreadPoolExecutor(max_workers=d.jobs_in_flight) as pool:
        queue = list(waves)
        running: dict = {}
        while queue or running:
            while queue and len(running) < d.jobs_in_flight and not aborted:
                wave = queue.pop(0)
                running[pool.submit(run_wave, wave)] = wave
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f][0]):
                wave = running.pop(future)
                try:
                    results = future.result()
                except Exception as err:  # noqa: BLE001 - a whole job failed (or was cancelled)
                    why = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}" \
                        if str(err).strip() else type(err).__name__
                    for i in wave:
                        report.lost[i] = why
                    continue
                commit_results(spark, store, results, d.do_if_complete)
                for r in results:
                    if r[1]:
                        report.completed += 1
                    else:
                        report.failed[r[0]] = r[7]
                if report.completed == 0 and len(report.failed) == len(results) and \
                        report.failed and not aborted:
                    aborted = True
                    queue.clear()
                    if running:
                        sc.cancelJobGroup(group)
            now = time.perf_counter()
            if now - last_log >= 30 or not (queue or running):
                last_log = now
                rate = report.completed / max(now - t0, 1e-9)
                log(f"datamodels work: {report.completed + len(report.failed)}/{len(pending)} "
                    f"indices committed ({len(report.failed)} failed), {rate:.2f} models/s")
    report.seconds = time.perf_counter() - t0
    _finish_work(report, aborted, store, d.main_import)
    return report


def _finish_work(report: WorkReport, aborted: bool, store: Store, main_import: str) -> None:
    for index, error in sorted(report.failed.items())[:10]:
        log(f"datamodels work: index {index} failed: {error}")
    if len(report.failed) > 10:
        log(f"datamodels work: ... and {len(report.failed) - 10} more failed indices (their "
            f"errors are in the store's error column)")
    if aborted:
        first = min(report.failed)
        raise PartialFailure(f"datamodels work: every index of the first job failed (index "
                             f"{first}: {report.failed[first]}), so the remaining indices were "
                             f"not started; fix {main_import}.main and run again.")
    if report.lost and not report.failed:
        first = min(report.lost)
        raise PartialFailure(f"datamodels work: {len(report.lost)} indices were not run to the "
                             f"end: their Spark job failed ({report.lost[first]}); "
                             f"{report.completed} completed. Run again to finish them.")
    if report.failed or report.lost:
        first = min(report.failed)
        lost = f"; {len(report.lost)} not run (their job failed)" if report.lost else ""
        raise PartialFailure(f"datamodels work: {len(report.failed)} of {report.pending} indices "
                             f"failed after their last attempt (first: index {first}: "
                             f"{report.failed[first]}){lost}; {report.completed} completed and "
                             f"are committed to {store.path}. Run again to retry the failed "
                             "ones.")
    log(f"datamodels work: {report.completed} models trained in {report.seconds:.1f}s "
        f"({report.completed / max(report.seconds, 1e-9):.2f}/s) -> {store.path}")


# ---------------------------------------------------------------------------
# Regression: a lasso path per target
# ---------------------------------------------------------------------------

REGRESS_OPTIONS = ("x_name", "y_name", "num_train", "num_val", "num_test", "bad_models", "seed",
                   "target_start", "target_end", "k", "eps", "lr", "tol", "check_every",
                   "max_iter", "min_lambdas", "patience", "refit")


# Options added later: in the fit's fingerprint only when they differ from their default, so
# that the fits of configs without them keep their ids.
LATER_REGRESS_OPTIONS = {"use_bias": True, "lam_max_from": "standardized"}


def regress_params(cfg: JobConfig) -> dict:
    """What changes the fit: the regression options (not the runtime knobs
    ``RUNTIME_DATAMODELS_OPTIONS``, which change only the float rounding)."""
    d = cfg.datamodels
    assert not set(REGRESS_OPTIONS) & set(RUNTIME_DATAMODELS_OPTIONS)
    out = {k: getattr(d, k) for k in REGRESS_OPTIONS}
    out.update({k: getattr(d, k) for k, default in LATER_REGRESS_OPTIONS.items()
                if getattr(d, k) != default})
    return out


@dataclass(frozen=True)
class RegressPlan:
    fingerprint: str
    regress_id: str
    store: Store


def make_regress_plan(spark, cfg: JobConfig) -> RegressPlan:
    store = existing_store(spark, cfg)
    fp = reuse.fingerprint("datamodels-regress", {
        "store": {"path": _location(store.path), "version": store.version,
                  "spec": store.spec.to_json()},
        "params": regress_params(cfg)})
    return RegressPlan(fp, cfg.datamodels.regress_id or "datamodels-" + fp[:12], store)


@dataclass
class RegressionData:
    indices: np.ndarray      # [n] store indices of the usable completed models, ascending
    masks: np.ndarray        # [n, p] bool
    outputs: np.ndarray      # [n, T] float64, the targets [start, end)
    targets: np.ndarray      # [T] the targets' positions in the outputs array
    dropped: list            # store indices left out (non-finite outputs, bad_models: drop)


def _flat(column, n: int, width: int, dtype) -> np.ndarray:
    import pyarrow as pa
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype).reshape(n, width)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype).reshape(n, 1)


def read_regression_data(spark, cfg: JobConfig, store: Store) -> RegressionData:
    """The completed models' masks and outputs, checked.

    Raises:
      InputError: keys missing from the spec or of the wrong shape or type, too few models,
        a target range outside the outputs, non-finite outputs (``bad_models: reject``).
    """
    d = cfg.datamodels
    spec = store.spec
    for key, name in (("x_name", d.x_name), ("y_name", d.y_name)):
        if name not in spec.names:
            raise InputError(f"datamodels.{key} {name!r} is not a key of the store's spec; its "
                             f"keys are {', '.join(spec.names)}.")
    fx, fy = spec.field(d.x_name), spec.field(d.y_name)
    if len(fx.shape) != 1:
        raise InputError(f"datamodels.x_name {d.x_name!r} has shape {list(fx.shape)}; the masks "
                         "must be one flat array per model, [training examples].")
    if np.dtype(fx.stored).kind not in "biu":
        raise InputError(f"datamodels.x_name {d.x_name!r} holds {fx.dtype}; the masks must be "
                         "bool_ (or 0/1 integers).")
    if len(fy.shape) > 1:
        raise InputError(f"datamodels.y_name {d.y_name!r} has shape {list(fy.shape)}; the "
                         "outputs must be a scalar or one flat array per model, [targets].")
    total = fy.size
    end = d.target_end if d.target_end is not None else total
    if d.target_start >= total or end > total:
        raise InputError(f"datamodels.target_start/target_end [{d.target_start}, {end}) reach "
                         f"past the {total} outputs of {d.y_name!r}; targets run from 0 to "
                         f"{total - 1}.")
    frame = (spark.read.format("delta").option("versionAsOf", store.version).load(store.path)
             .where(F.col("completed")).select("index", d.x_name, d.y_name).orderBy("index"))
    table = frame.toArrow()
    n = table.num_rows
    if n == 0:
        raise InputError(f"the store {store.path!r} has no completed models; run gio-spark "
                         "datamodels work first.")
    indices = table.column("index").to_numpy().astype(np.int64)
    masks = _flat(table.column(d.x_name), n, fx.size, np.dtype(fx.stored))
    if masks.dtype != bool:
        odd = np.argwhere((masks != 0) & (masks != 1))
        if len(odd):
            raise InputError(f"datamodels.x_name {d.x_name!r} of model {indices[odd[0][0]]} holds "
                             f"{masks[tuple(odd[0])]}; masks hold 0 or 1.")
        masks = masks.astype(bool)
    outputs = _flat(table.column(d.y_name), n, total, np.float64)[:, d.target_start:end]
    bad = ~np.isfinite(outputs).all(axis=1)
    dropped: list = []
    if bad.any():
        which = indices[bad]
        listed = ", ".join(str(i) for i in which[:5]) + (", ..." if len(which) > 5 else "")
        if d.bad_models == "reject":
            raise InputError(f"{len(which)} completed model(s) have NaN or inf {d.y_name!r} "
                             f"(indices {listed}); set datamodels.bad_models: drop to leave them "
                             "out of the fit.")
        log(f"warning: datamodels regress: leaving out {len(which)} model(s) with NaN or inf "
            f"{d.y_name!r} (indices {listed}); datamodels.bad_models is drop.")
        dropped = which.tolist()
        keep = ~bad
        indices, masks, outputs = indices[keep], masks[keep], outputs[keep]
    return RegressionData(indices, masks, outputs, np.arange(d.target_start, end), dropped)


def split_models(count: int, cfg: JobConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (ascending) of the train, validation and test models among ``count`` usable
    ones, drawn by ``datamodels.seed``: the same whatever the store's row order."""
    d = cfg.datamodels
    num_val = d.num_val if d.num_val is not None else max(1, count // 10)
    num_train = d.num_train if d.num_train is not None else count - num_val - d.num_test
    if num_train < 2 or num_train + num_val + d.num_test > count:
        train = (f"{num_train} training" if d.num_train is not None
                 else "at least 2 training")
        raise InputError(f"the store has {count} usable completed models, but the regression "
                         f"needs {train}, {num_val} validation and {d.num_test} test models; "
                         "train more models (gio-spark datamodels work) or lower "
                         "datamodels.num_train, num_val or num_test.")
    perm = np.random.default_rng(d.seed).permutation(count)
    return (np.sort(perm[:num_train]), np.sort(perm[num_train:num_train + num_val]),
            np.sort(perm[num_train + num_val:num_train + num_val + d.num_test]))


def path_options(cfg: JobConfig) -> dict:
    d = cfg.datamodels
    return dict(k=d.k, eps=float(d.eps), tol=float(d.tol), max_iter=d.max_iter,
                check_every=d.check_every, min_lambdas=d.min_lambdas, patience=d.patience,
                refit=d.refit, lr=float(d.lr), batch_size=d.batch_size,
                target_chunk=d.target_chunk, use_bias=d.use_bias, lam_max_from=d.lam_max_from)


def _chunk_task(shared, options: dict, platform: str, frames):
    """mapInPandas over chunk numbers: each chunk's lasso paths, pickled."""
    import pickle

    import pandas as pd
    if platform != "auto":
        os.environ.setdefault("JAX_PLATFORMS", "cpu" if platform == "cpu" else "cuda")
    from gio_core.datamodels import lasso_path
    data = shared.value
    for pdf in frames:
        for chunk in pdf["chunk"].tolist():
            cols = data["chunks"][int(chunk)]
            path = lasso_path(data["x_train"], data["y_train"][:, cols],
                              val_masks=data["x_val"], val_outputs=data["y_val"][:, cols],
                              **options)
            yield pd.DataFrame({"chunk": [int(chunk)], "path": [pickle.dumps(path)]})


def _concat_paths(paths: list):
    from gio_core.datamodels import LassoPath
    return LassoPath(*[np.concatenate([getattr(p, f) for p in paths])
                       for f in LassoPath._fields])


def fit_paths(spark, cfg: JobConfig, data: RegressionData, train, val):
    """The lasso paths of every target, on the driver or as Spark tasks (``datamodels.mode``)."""
    from gio_core.datamodels import lasso_path
    d = cfg.datamodels
    opts = path_options(cfg)
    targets = data.outputs.shape[1]
    if d.mode == "local":
        last = [time.perf_counter()]

        def progress(done, total):
            if time.perf_counter() - last[0] >= 30:
                last[0] = time.perf_counter()
                log(f"datamodels regress: {done}/{total} targets fitted")
        return lasso_path(data.masks[train], data.outputs[train], val_masks=data.masks[val],
                          val_outputs=data.outputs[val], progress=progress, **opts)
    import pickle
    parallelism = spark.sparkContext.defaultParallelism
    width = d.target_chunk or max(1, -(-targets // parallelism))
    chunks = [np.arange(s, min(s + width, targets)) for s in range(0, targets, width)]
    shared = spark.sparkContext.broadcast({
        "x_train": data.masks[train], "y_train": data.outputs[train],
        "x_val": data.masks[val], "y_val": data.outputs[val], "chunks": chunks})
    schema = T.StructType([T.StructField("chunk", T.LongType()),
                           T.StructField("path", T.BinaryType())])
    try:
        rows = (spark.range(len(chunks)).withColumnRenamed("id", "chunk")
                .repartition(len(chunks), "chunk")
                .mapInPandas(partial(_chunk_task, shared, opts, cfg.runtime.jax_platform),
                             schema).collect())
    finally:
        shared.unpersist()
    paths = [pickle.loads(r["path"]) for r in sorted(rows, key=lambda r: r["chunk"])]
    return _concat_paths(paths)


def _nan_to_none(v) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else v


def run_regress(spark, cfg: JobConfig, plan: RegressPlan | None = None) -> dict:
    """Fits (or reuses) the datamodels of the store's completed models; commits the three
    tables; returns a summary (``regress_id``, ``targets``, ``test_r_mean``, ``reused``)."""
    from gio_core.datamodels import evaluate

    d = cfg.datamodels
    out = cfg.output.path
    plan = plan or make_regress_plan(spark, cfg)

    def compute():
        started = dt.datetime.now()
        t0 = time.perf_counter()
        data = read_regression_data(spark, cfg, plan.store)
        train, val, test = split_models(len(data.indices), cfg)
        read_s = time.perf_counter() - t0
        n_targets, p = data.outputs.shape[1], data.masks.shape[1]
        log(f"datamodels regress: {len(data.indices)} completed models ({len(train)} train, "
            f"{len(val)} validation, {len(test)} test) x {p} training examples, {n_targets} "
            f"target(s) [{data.targets[0]}, {data.targets[-1] + 1}); {d.mode} mode")
        configure_jax(cfg.runtime)
        t1 = time.perf_counter()
        path = fit_paths(spark, cfg, data, train, val)
        fit_s = time.perf_counter() - t1
        test_mse = test_r = np.full(n_targets, np.nan)
        if len(test):
            test_mse, test_r = evaluate(data.masks[test], data.outputs[test], path.weight,
                                        path.bias)
        rows_t = np.arange(n_targets)
        train_mse = path.train_mse[rows_t, path.best]
        val_mse = path.val_mse[rows_t, path.best]
        nonzeros = (path.weight != 0).sum(axis=1)
        summary = {"targets": int(n_targets), "training_examples": int(p),
                   "nonzeros_mean": float(nonzeros.mean()),
                   "val_r_mean": _nan_to_none(np.nanmean(path.val_r)) if np.isfinite(
                       path.val_r).any() else None,
                   "test_r_mean": _nan_to_none(np.nanmean(test_r)) if np.isfinite(test_r).any()
                   else None,
                   "converged": int(path.converged.sum()), "dropped_models": data.dropped}
        log(f"datamodels regress: fitted in {fit_s:.1f}s; {summary['nonzeros_mean']:.1f} nonzero "
            f"weights per target"
            + (f"; validation r {summary['val_r_mean']:.3f}" if summary["val_r_mean"] is not None
               else "")
            + (f"; held-out r {summary['test_r_mean']:.3f} (mean over targets, {len(test)} test "
               "models)" if summary["test_r_mean"] is not None else ""))
        if not path.converged.all():
            log(f"warning: datamodels regress: {int((~path.converged).sum())} target(s) reached "
                f"datamodels.max_iter={d.max_iter} on some lambda before the duality gap fell below "
                "datamodels.tol; raise max_iter (or tol) for tighter fits.")
        import pyarrow as pa
        ti, ji = np.nonzero(path.weight)
        weights = pa.table({"regress_id": pa.array([plan.regress_id] * len(ti), pa.string()),
                            "target": pa.array(data.targets[ti].astype(np.int32)),
                            "train_index": pa.array(ji.astype(np.int32)),
                            "weight": pa.array(path.weight[ti, ji].astype(np.float64))})
        fits = []
        for t in range(n_targets):
            steps = int(path.steps[t])
            fits.append((plan.regress_id, plan.fingerprint, int(data.targets[t]),
                         float(path.bias[t]), float(path.lam[t]), float(path.lam_max[t]), steps,
                         int(nonzeros[t]), _nan_to_none(train_mse[t]), _nan_to_none(val_mse[t]),
                         _nan_to_none(path.val_r[t]), _nan_to_none(test_mse[t]),
                         _nan_to_none(test_r[t]), int(path.iterations[t]),
                         bool(path.converged[t]),
                         [_nan_to_none(v) for v in path.val_mse[t, :steps]]))
        store_info = {"path": plan.store.path, "version": plan.store.version,
                      "spec": json.loads(plan.store.spec.to_json()), "x_name": d.x_name,
                      "y_name": d.y_name}
        record = (plan.regress_id, plan.fingerprint, started, dt.datetime.now(),
                  json.dumps(cfg.recorded(), default=str), json.dumps(store_info),
                  data.indices[train].tolist(), data.indices[val].tolist(),
                  data.indices[test].tolist(), int(n_targets), int(p), json.dumps(summary),
                  json.dumps({"read_s": round(read_s, 3), "fit_s": round(fit_s, 3),
                              "mode": d.mode}),
                  json.dumps(library_versions()))
        return weights, fits, record, summary, int(n_targets)

    def commit(computed):
        weights, fits, record, summary, n_targets = computed
        tables.replace_key(spark, spark.createDataFrame(weights), out, "datamodels_weights",
                           plan.regress_id)
        tables.replace_key(spark, spark.createDataFrame(fits, tables.DATAMODELS_FITS), out,
                           "datamodels_fits", plan.regress_id)
        tables.replace_key(spark, spark.createDataFrame([record], tables.DATAMODELS_REGRESSIONS),
                           out, "datamodels_regressions", plan.regress_id)
        log(f"datamodels regress: fit {plan.regress_id} -> "
            f"{tables.table_path(out, 'datamodels_weights')}")
        return ({"regress_id": plan.regress_id, "reused": False, **summary},
                {"targets": n_targets, "test_r_mean": summary["test_r_mean"]})

    def reused():
        row = tables.read_key(spark, out, "datamodels_regressions", plan.regress_id).first()
        if row is None or row["regress_fingerprint"] != plan.fingerprint:
            raise ConcurrentRunError(f"the datamodels fit {plan.regress_id} under {out!r} was "
                                     "replaced by another run with the same id; run again.")
        summary = json.loads(row["summary"])
        log(f"datamodels regress: reusing fit {plan.regress_id} ({row['targets']} targets)")
        return {"regress_id": plan.regress_id, "reused": True, **summary}

    return run_stage(spark, out, "datamodels_regress", plan.regress_id, plan.fingerprint, compute,
                     commit, reused)


def load_datamodels(spark, output: str, regress_id: str):
    """A committed fit as ``(weight [T, p], bias [T], targets [T])`` arrays.

    Raises:
      InputError: no finished fit of that id under ``output``.
    """
    last = stagelog.latest(spark, output, "datamodels_regress", regress_id)
    if last is None or last["status"] != "done":
        raise InputError(f"there is no finished datamodels fit {regress_id!r} under {output!r}; "
                         "run gio-spark datamodels regress first.")
    record = tables.read_key(spark, output, "datamodels_regressions", regress_id).first()
    if record is None or record["regress_fingerprint"] != last["fingerprint"]:
        raise ConcurrentRunError(f"the datamodels fit {regress_id} under {output!r} was replaced "
                                 "by another run with the same id; load it again.")
    fits = (tables.read_key(spark, output, "datamodels_fits", regress_id)
            .select("target", "bias").orderBy("target").toArrow())
    targets = fits.column("target").to_numpy().astype(np.int64)
    weight = np.zeros((len(targets), int(record["training_examples"])))
    w = (tables.read_key(spark, output, "datamodels_weights", regress_id)
         .select("target", "train_index", "weight").toArrow())
    rows = np.searchsorted(targets, w.column("target").to_numpy())
    weight[rows, w.column("train_index").to_numpy()] = w.column("weight").to_numpy()
    return weight, fits.column("bias").to_numpy().astype(np.float64), targets


# ---------------------------------------------------------------------------
# Selection: the training examples with the most positive weight on the targets
# ---------------------------------------------------------------------------

def budget_rows(cfg: JobConfig, examples: int) -> int:
    d = cfg.datamodels
    budget = d.budget if d.budget is not None else max(1, int(round(d.budget_fraction
                                                                   * examples)))
    if budget > examples:
        raise InputError(f"datamodels.budget={budget} is more than the {examples} training "
                         "examples the datamodels cover; lower it.")
    return budget


def ranked_examples(weight: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """The ``budget`` training examples with the largest total positive weight, best first;
    ties (for example examples with no positive weight) in a seeded random order."""
    from gio_core.datamodels import positive_influence
    score = positive_influence(weight)
    tiebreak = np.random.default_rng(seed).permutation(len(score))
    return np.lexsort((tiebreak, -score))[:budget]


def run_dm_select(spark, cfg: JobConfig) -> dict:
    """Writes the datamodels-based selection to ``selected_rows`` (unless done); returns a
    summary (``run_id``, ``selected_rows``, ``regress_id``)."""
    d = cfg.datamodels
    out = cfg.output.path
    plan = make_regress_plan(spark, cfg)
    if not stagelog.is_done(spark, out, "datamodels_regress", plan.regress_id, plan.fingerprint):
        raise InputError(f"there is no datamodels fit {plan.regress_id} for this store and these "
                         f"regression settings under {out!r}; run gio-spark datamodels regress "
                         "first.")
    pool = read_only(spark, cfg, None, "pool", log)
    check_outputs(spark, cfg, pool.schema)
    column = d.index_column or cfg.pool.id_column
    if column not in [f.name for f in pool.schema.fields]:
        raise InputError(f"datamodels.index_column {column!r} is not a column of the pool; its "
                         f"columns are: {', '.join(f.name for f in pool.schema.fields)}.")
    if not isinstance(pool.schema[column].dataType, (T.IntegerType, T.LongType, T.ShortType,
                                                     T.ByteType)):
        raise InputError(f"the pool's column {column!r} has type "
                         f"{pool.schema[column].dataType.simpleString()}; datamodels select needs "
                         "the integer position of each row in the masks.")
    weight, _, _ = load_datamodels(spark, out, plan.regress_id)
    budget = budget_rows(cfg, weight.shape[1])
    chosen = ranked_examples(weight, budget, d.seed)
    fp = reuse.fingerprint("datamodels-select", plan.fingerprint, pool.report.get("rows"),
                           reuse.source_identity(spark, cfg.pool, "pool"), column, budget,
                           d.seed)
    run_id = d.select_run_id or "dmsel-" + fp[:12]
    summary = {"run_id": run_id, "regress_id": plan.regress_id, "budget": budget,
               "table": tables.table_path(out, "selected_rows")}

    def compute():
        # the picks' columns are named apart from any pool column (a pool's "position" was
        # ambiguous in the join)
        picks = spark.createDataFrame([(int(j), r + 1) for r, j in enumerate(chosen)],
                                      "__gio_position long, __gio_rank int")
        own = [f.name for f in pool.schema.fields]
        rows = (pool.frame.join(F.broadcast(picks),
                                F.col(column).cast("long") == F.col("__gio_position"))
                .select(*own, F.lit(None).cast("int").alias("cluster_id"),
                        F.col("__gio_rank").alias("rank"), F.lit(run_id).alias("run_id"))
                .persist())
        try:                                     # the rows checked before anything is written
            found = rows.select("rank").distinct().count()
            count = rows.count()
            if found != budget:
                have = {r[0] for r in rows.select("rank").distinct().collect()}
                missing = [int(chosen[r - 1]) for r in range(1, budget + 1) if r not in have]
                raise InputError(f"the pool has no usable row whose {column!r} is {missing[0]} "
                                 f"(nor for {len(missing) - 1} more of the {budget} selected "
                                 "training examples); the pool must hold every training example "
                                 f"of the masks, {column!r} being its position.")
            if count != budget:
                raise InputError(f"the pool's column {column!r} holds some selected positions "
                                 "more than once; each training example needs one row.")
        except BaseException:
            rows.unpersist()
            raise
        return rows

    def commit(rows):
        tables.replace_key(spark, rows, out, "selected_rows", run_id,
                           tables.selected_rows_schema(pool.schema))
        log(f"datamodels select: run {run_id}: the {budget} of {weight.shape[1]} training "
            f"examples with the most positive weight on {weight.shape[0]} targets -> "
            f"{summary['table']}")
        return budget, {"regress_id": plan.regress_id, "budget": budget}

    def reused():
        log(f"datamodels select: reusing the selected rows of run {run_id}")
        return tables.read_key(spark, out, "selected_rows", run_id).count()

    summary["selected_rows"] = run_stage(spark, out, "datamodels_select", run_id, fp, compute,
                                         commit, reused, release=lambda rows: rows.unpersist())
    return summary


# ---------------------------------------------------------------------------
# Export: the source's .npy layout
# ---------------------------------------------------------------------------

def run_export(spark, cfg: JobConfig) -> dict:
    """Writes ``<key>.npy`` (``[num_models, *shape]``, the spec's dtype, zeros where not
    completed) and ``_completed.npy`` to ``datamodels.export_path``, as the source's store
    directory holds them. Each file is written under a temporary name and renamed into place."""
    store = existing_store(spark, cfg)
    folder = cfg.datamodels.export_path.removeprefix("file:")
    if "://" in folder:
        raise InputError("datamodels.export_path must be a local folder (the .npy files are "
                         "written by the driver).")
    os.makedirs(folder, exist_ok=True)
    spec = store.spec
    table = (spark.read.format("delta").option("versionAsOf", store.version).load(store.path)
             .where(F.col("completed")).select("index", *spec.names).orderBy("index")
             .toArrow())
    index = table.column("index").to_numpy().astype(np.int64)
    n = len(index)
    arrays = {"_completed": np.zeros(spec.num_models, np.bool_)}
    arrays["_completed"][index] = True
    for f in spec.fields:
        full = np.zeros((spec.num_models,) + f.shape, np.dtype(f.dtype))
        if n:
            full[index] = _flat(table.column(f.name), n, f.size, np.dtype(f.stored)).astype(
                np.dtype(f.dtype)).reshape((n,) + f.shape)
        arrays[f.name] = full
    for name, array in arrays.items():
        _saved(os.path.join(folder, f"{name}.npy"), partial(_save_npy, array))
    log(f"datamodels export: {n} completed of {spec.num_models} models, keys "
        f"{', '.join(spec.names)} -> {folder}")
    files = sorted(f"{k}.npy" for k in arrays)
    if cfg.datamodels.export_fast_l1:
        files.append(export_fast_l1(spark, cfg, folder))
    return {"completed": n, "files": files}


def _save_npy(array: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:        # a file object: np.save adds no suffix to it
        np.save(f, array)


def _saved(final: str, write) -> None:
    """``write(tmp)`` to a temporary name beside ``final``, then renamed into place; the
    temporary file is removed when the write fails (a full disk, say)."""
    tmp = f"{final}.{os.getpid()}.part"
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fast_l1_layout(weight: np.ndarray, bias: np.ndarray, masks: np.ndarray) -> dict:
    """A fit on the masks' own scale (``y = bias + masks @ weight.T``, ``weight`` ``[T, p]``)
    as fast_l1 keeps it, for masks standardised by ``masks``' mean and standard deviation
    (fast_l1's ``(x - mean) / (std + 1e-32)``): ``{"weight": [p, T], "bias": [T]}``, the same
    predictions (a constant column's weight moves into the bias)."""
    from gio_core.datamodels import standardization
    stats = standardization(masks)
    return {"weight": (weight * stats.scale[None, :]).T, "bias": bias + weight @ stats.mean,
            "mean": stats.mean, "std": stats.scale}


def export_fast_l1(spark, cfg: JobConfig, folder: str) -> str:
    """The config's fit (``datamodels regress``'s, by its id) written as fast_l1's
    ``datamodels.pt``: ``weight`` ``[p, T]`` for masks standardised over the models of the
    final fit (train and validation with ``refit``, as fast_l1's last pass; train alone
    without), ``bias`` ``[T]`` and ``lam`` ``[T]`` (the chosen lambdas: both minimise the mean
    squared error over two plus lambda times the weights' L1 norm, on standardised masks), as
    float32 tensors. Returns the file's name.

    Raises:
      InputError: the config's fit is not there (run regress first).
    """
    import torch

    plan = make_regress_plan(spark, cfg)
    weight, bias, targets = load_datamodels(spark, cfg.output.path, plan.regress_id)
    record = tables.read_key(spark, cfg.output.path, "datamodels_regressions",
                             plan.regress_id).first()
    recorded = json.loads(record["params"]).get("datamodels", {})
    refit = recorded.get("refit", True)
    models = list(record["train_models"]) + (list(record["val_models"]) if refit else [])
    stored = json.loads(record["store"])
    x_name = recorded.get("x_name", cfg.datamodels.x_name)     # the fit's masks
    field = plan.store.spec.field(x_name)
    table = (spark.read.format("delta").option("versionAsOf", stored["version"])
             .load(stored["path"]).where(F.col("index").isin(models))
             .select("index", x_name).orderBy("index").toArrow())
    masks = _flat(table.column(x_name), table.num_rows, field.size, np.dtype(field.stored))
    layout = fast_l1_layout(weight, bias, masks)
    lams = (tables.read_key(spark, cfg.output.path, "datamodels_fits", plan.regress_id)
            .select("target", "lam").orderBy("target").toArrow().column("lam").to_numpy())
    final = os.path.join(folder, "datamodels.pt")
    _saved(final, lambda tmp: torch.save(
        {"weight": torch.tensor(layout["weight"], dtype=torch.float32),
         "bias": torch.tensor(layout["bias"], dtype=torch.float32),
         "lam": torch.tensor(lams, dtype=torch.float32)}, tmp))
    log(f"datamodels export: fit {plan.regress_id} ({len(targets)} targets, "
        f"{weight.shape[1]} training examples, masks standardised over {table.num_rows} models) "
        f"-> {final} in fast_l1's layout")
    return "datamodels.pt"


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------

def init_command(spark, cfg: JobConfig, registry=None) -> None:
    store, created = ensure_store(spark, cfg)
    done = len(completed_indices(spark, store))
    log(f"datamodels init: {'created' if created else 'found'} the store {store.path} "
        f"({store.spec.num_models} models, {done} completed; keys "
        f"{', '.join(store.spec.names)})")


def work_command(spark, cfg: JobConfig, registry=None) -> None:
    run_work(spark, cfg)


def regress_command(spark, cfg: JobConfig, registry=None) -> None:
    check_outputs(spark, cfg, None)
    run_regress(spark, cfg)


def select_command(spark, cfg: JobConfig, registry=None) -> None:
    run_dm_select(spark, cfg)


def export_command(spark, cfg: JobConfig, registry=None) -> None:
    run_export(spark, cfg)


def example_command(spark, cfg: JobConfig, registry=None) -> None:
    """The digits example end to end: its tables, the workers, the regression, the selection."""
    check_outputs(spark, cfg, None)
    wrote = datamodels_example.write_tables(spark, cfg)
    for side, path in wrote.items():
        log(f"datamodels example: the digits {side} rows -> {path}")
    run_work(spark, cfg)
    fit = run_regress(spark, cfg)
    print(datamodels_example.format_report(cfg, fit), flush=True)
    if cfg.datamodels.budget is not None or cfg.datamodels.budget_fraction is not None:
        run_dm_select(spark, cfg)


# `gio-spark datamodels <action>` (and `jobs/submit.py datamodels <action>`). The store is the
# user's table (init and work write it, a commit per batch of models); regress and select are
# stages of the stage log.
ACTIONS = (
    Stage("init", "create the store (a Delta table, one row per model) from the spec",
          "datamodels", no_sides, needs=(), outputs=(), command=init_command),
    Stage("work", "train every model not yet completed: main(index, logdir, **args) as one "
          "Spark task per index", "datamodels", no_sides, needs=("init",), outputs=(),
          command=work_command, precheck=check_main),
    Stage("regress", "fit a lasso path per target from the masks to the outputs", "datamodels",
          no_sides, needs=("work",),
          outputs=("datamodels_weights", "datamodels_fits", "datamodels_regressions"),
          command=regress_command, log_names=("datamodels_regress",)),
    Stage("select", "select the training rows with the most positive weight on the targets",
          "datamodels", pool_only, needs=("regress",), outputs=("selected_rows",),
          command=select_command, log_names=("datamodels_select",)),
    Stage("export", "write the store as the source's .npy files", "datamodels", no_sides,
          needs=("work",), outputs=(), command=export_command),
    Stage("example", "the digits example end to end: tables, workers, regression, selection",
          "datamodels", no_sides, needs=(),
          outputs=("datamodels_weights", "datamodels_fits", "datamodels_regressions",
                   "selected_rows"),
          command=example_command, precheck=check_main,
          log_names=("datamodels_regress", "datamodels_select")),
)
