"""``gio-spark plan``: what a run would do, before it does anything heavy.

For a config (the file and ``--set``, or the Python API's arguments), :func:`forecast` says:

- **stages**: each stage of ``gio-spark run`` and whether it would reuse its committed output
  or run, and why (nothing recorded for its key under ``output.path``, a stage before it that
  runs, a run of this key that did not finish), with the settings that differ from the latest
  run recorded there;
- **inputs**: each side's files and bytes (a listing), and its rows: from the side's check on an
  earlier run when the source is unchanged, from Delta's statistics or Parquet's footers (a
  metadata count), or, for text formats, estimated from the bytes and the mean line length of
  the first rows;
- **clusters**: the pool clusters ``quantize.pool_k`` gives (``auto``: from the rows above),
  and the target's; with ``target.domain_column``, each domain's rows, target clusters and
  (``select.shares``) rows of the budget (:func:`target_domains`);
- **embedding time**: measured, not guessed: a sample of the pool's texts is embedded with the
  config's model and backend in one Spark task, twice (the first pass loads the model), which
  gives the model's load time and one task's texts per second; the estimate for each side is
  ``load + texts / (rate * tasks at once)``, for the side's distinct texts that
  ``text_embeddings`` does not hold yet (one pass over the side's texts, hashed), the tasks at
  once being the side's embedding tasks (``embed.rows_per_task``) up to the session's cores
  (``defaultParallelism / spark.task.cpus``);
- **driver memory**: what collecting the centroids and the selection hold on the driver (the
  terms are in :func:`driver_memory`), plus JAX's own runtime and compiled code, measured in a
  child process (:func:`jax_runtime`), against the memory the driver machine has free, the
  JVM's ``spark.driver.maxResultSize`` and ``spark.driver.memory``;
- **warnings**: each with the setting to change, where a run would not fit.

Nothing is written: no table, no stage record (the input checks are not run; their earlier
records are read).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import functions as F

import jobs
from gio_core import proportional_size, share_budgets
from jobs.common.errors import InputError
from jobs.common.frames import ROW_ID
from jobs.common.runtime import free_memory
from jobs.config import (FRAME_FORMAT, JobConfig, auto_pool_k, effective_embedding_column,
                         engine_options, jvm_bytes, row_budget, sizes_itself)
from jobs.io import tables
from jobs.io.demo_data import demo_rows
from jobs.io.encoders import embed_frame, embed_partitions, model_dimension
from jobs.io.session import is_connect
from jobs.io.sources import MAX_DOMAINS, read_side
from jobs.stages.embed import TEXT_HASH, stored_hashes
from jobs.stages.quantize import domain_ks
from jobs.state import reuse, stagelog
from jobs.state.inputs import check_domains

# Texts the embedding measure encodes after the model is loaded (``--sample-rows``).
SAMPLE_ROWS = 256
# Texts of the first pass (the model's load; its texts count too).
WARM_ROWS = 16
MIN_SAMPLE_ROWS = 16
# The bytes one value of a collected row costs in Python (a float object and its pointer in
# the row's list): collect() turns each centroid into a list of Python floats before numpy.
PY_VALUE_BYTES = 32
# The row step's arrays at their peak: Arrow's buffer, the pandas column's arrays, the stacked
# matrix.
ARROW_COPIES = 3
# gio_core.proportional_size's blocks of rows (its default, read from it so the two agree).
OWN_SIZE_BLOCK = inspect.signature(proportional_size).parameters["block"].default
GIB = 2 ** 30
# The longest the JAX probe (jobs.common.jax_probe) may take before it is given up.
PROBE_TIMEOUT_S = 180
TEXT_FORMATS = ("jsonl", "csv", "tsv", "text")


@dataclass
class StageForecast:
    stage: str                 # its name in the stage log (embed_pool, quantize, ...)
    key: str | None
    action: str                # run, reuse, skip (not needed: what comes after it is reused)
    why: str


@dataclass
class SideSize:
    side: str
    format: str
    path: str | None
    files: int | None = None
    bytes: int | None = None
    rows: int | None = None
    rows_from: str = "unknown"


@dataclass
class Forecast:
    """What :func:`forecast` found; ``text()`` is what ``gio-spark plan`` prints."""
    run_id: str
    output: str
    stages: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    clusters: dict = field(default_factory=dict)
    embedding: dict = field(default_factory=dict)
    driver: dict = field(default_factory=dict)
    domains: dict = field(default_factory=dict)
    changed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        lines = [f"plan for run {self.run_id} (output {self.output})", "", "inputs"]
        for s in self.inputs.values():
            where = "" if s.path is None else f" {s.path}"
            size = [] if s.files is None else [f"{s.files} file{'s' if s.files != 1 else ''}"]
            size += [] if s.bytes is None else [_size(s.bytes)]
            rows = "rows unknown" if s.rows is None else f"{s.rows:,} rows ({s.rows_from})"
            lines.append(f"  {s.side:<7} {s.format}{where}: {', '.join(size + [rows])}")
        lines += ["", "stages"]
        for st in self.stages:
            key = f" {st.key}" if st.key else ""
            lines.append(f"  {st.action:<6} {st.stage}{key}: {st.why}")
        if self.changed:
            lines.append("  settings that differ from the latest run here: "
                         + "; ".join(self.changed))
        c = self.clusters
        if c:
            lines += ["", f"clusters: {c['pool_k']:,} pool ({c['pool_k_from']}), "
                          f"{c['target_k']:,} target, {c['dim']}-D ({c['dim_from']})"]
        if self.domains:
            lines += ["", f"target domains ({self.domains['column']!r}, "
                          f"{self.domains['rows_from']})"]
            for name, d in self.domains["each"].items():
                share = ("" if d.get("share") is None else
                         f", share {d['share']:g}" + ("" if d.get("budget") is None else
                                                       f": {d['budget']:,} rows of the budget"))
                lines.append(f"  {name!s:<7} {d['rows']:,} rows, {d['target_k']:,} target "
                             f"clusters{share}")
        e = self.embedding
        if e.get("sides"):
            lines += ["", f"embedding (measured on {e['sample_rows']} of the pool's texts in one "
                          f"task: {e['rate']:.0f} texts/s a task, model load "
                          f"{e['load_seconds']:.1f} s; {e['slots']} task(s) at once)"]
            for side, est in e["sides"].items():
                stored = est["texts"] - est["missing"]
                where = "stored already" if side == "pool" else "stored or the pool's"
                lines.append(f"  {side:<7} {est['texts']:,} distinct texts, {stored:,} {where}: "
                             f"{est['missing']:,} to embed in {est['tasks']} task(s), about "
                             f"{_duration(est['seconds'])}")
            lines.append(f"  total   about {_duration(e['seconds'])}")
        elif e.get("why"):
            lines += ["", f"embedding: {e['why']}"]
        d = self.driver
        if d:
            stays = "; JAX's runtime stays" if "counted" in (d.get("runtime") or {}) else ""
            lines += ["", f"driver memory: about {_size(d['need_bytes'])} at the most, beside "
                          f"the driver's own (its phases run one after the other{stays})"]
            for phase, terms in d["phases"].items():
                parts = ", ".join(f"{name} {_size(b)}" for name, b in terms.items())
                lines.append(f"  {phase:<8} {_size(sum(terms.values()))} ({parts})")
            r = d.get("runtime") or {}
            if "counted" in r:
                lines.append(f"  runtime: JAX's, measured in a child process ({r['seconds']:.1f} s):"
                             f" {_size(r['start'])} to start"
                             + (" (started in this process already: not counted)"
                                if r["started_here"] else "")
                             + f", {_size(r['compiled'])} for the selection's compiled code; "
                             f"it stays after {r['phase']}")
            elif r.get("why"):
                lines.append(f"  runtime: JAX's runtime and compiled code {r['why']}")
            has = [f"{_size(d['free_bytes'])} free on this machine"] if d.get("free_bytes") else []
            has += [f"spark.driver.maxResultSize {d['max_result']}",
                    f"spark.driver.memory {d['driver_memory']}"]
            lines.append("  the driver has " + ", ".join(has))
        lines += [""] + ([f"warning: {w}" for w in self.warnings] or
                         ["no warnings: the run fits as planned"])
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sample_rows_of(value, name: str) -> int:
    """``value`` as the sample's rows (an integer >= MIN_SAMPLE_ROWS); ``name`` is the option's
    name in the message.

    Raises:
      InputError: anything else.
    """
    try:
        n = int(str(value))
    except ValueError:
        n = None
    if n is None or isinstance(value, bool) or n < MIN_SAMPLE_ROWS:
        raise InputError(f"{name} must be an integer >= {MIN_SAMPLE_ROWS}; got {str(value)!r}.")
    return n


# ------------------------------------------------------------------------------------ inputs

def _listing(spark, path: str) -> tuple[int, int] | None:
    """``(files, bytes)`` under a path (Delta's log left out), or None where nothing is."""
    if tables.on_file_system(path):
        found = tables.remote_files(spark, path)
        data = [f for f in found if not f[0].startswith("_")]
        return (len(data), sum(f[1] for f in data)) if found else None
    local = path.removeprefix("file:")
    if os.path.isfile(local):
        return 1, os.path.getsize(local)
    if not os.path.isdir(local):
        return None
    files = size = 0
    for root, dirs, names in os.walk(local):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for name in names:
            if not name.startswith(("_", ".")):
                files += 1
                size += os.path.getsize(os.path.join(root, name))
    return files, size


def side_size(spark, cfg: JobConfig, plan, side: str) -> SideSize:
    """A side's files, bytes and rows, without scanning its rows (see the module's doc)."""
    src = getattr(cfg, side)
    out = SideSize(side, src.format, None if src.format == FRAME_FORMAT else src.path)
    key = plan.validate[side][:reuse.ID_CHARS]
    last = stagelog.latest(spark, cfg.output.path, f"validate_{side}", key)
    if src.format == "delta":
        detail = tables.delta_detail(spark, tables.delta_ref(src.path))
        if detail is not None:
            out.files, out.bytes = int(detail["numFiles"]), int(detail["sizeInBytes"])
    elif src.format not in ("demo", "table", FRAME_FORMAT):
        listed = _listing(spark, src.path)
        if listed is not None:
            out.files, out.bytes = listed
    if last is not None and last["status"] == "done" and last["fingerprint"] == plan.validate[side]:
        report = json.loads(last["detail"])
        out.rows, out.rows_from = int(report["kept"]), "checked on an earlier run, used rows"
        return out
    if src.format == "demo":
        out.rows, out.rows_from = len(demo_rows(side)), "the embedded demo"
    elif src.format in ("delta", "parquet") or (src.format == "table" and tables.delta_detail(
            spark, src.path) is not None):
        out.rows = read_side(spark, side, src).count()
        out.rows_from = ("Delta statistics" if src.format != "parquet" else "Parquet footers")
    elif src.format == FRAME_FORMAT:
        out.rows = reuse.source_identity(spark, src, side).get("rows")
        out.rows_from = "the DataFrame's identity pass"
    elif src.format in TEXT_FORMATS and out.bytes:
        lines = spark.read.text(src.path).limit(2000).select(
            F.avg(F.length(F.encode("value", "utf-8")) + 1).alias("mean"),
            F.count("*").alias("n")).first()
        if lines["n"]:
            header = 1 if src.format in ("csv", "tsv") else 0
            rows = int(round(out.bytes / float(lines["mean"]))) - header * (out.files or 1)
            out.rows, out.rows_from = max(rows, 0), (
                f"estimated: bytes / mean line length of the first {lines['n']} lines")
    return out


# ------------------------------------------------------------------------------------ stages

def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def changed_settings(spark, cfg: JobConfig) -> list[str]:
    """``key: before -> now`` for each setting that differs from the latest run recorded under
    ``output.path`` (its ``runs`` record holds its whole config); [] without one."""
    if not tables.exists(spark, tables.table_path(cfg.output.path, "runs")):
        return []
    last = (tables.read_table(spark, cfg.output.path, "runs")
            .orderBy(F.desc("finished_at")).select("run_id", "params").first())
    if last is None:
        return []
    before, now = _flat(json.loads(last["params"])), _flat(cfg.recorded())
    skip = ("spark.", "run_id")
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k) and not k.startswith(skip)]


def _state(spark, cfg: JobConfig, stage: str, key: str, fp: str) -> str:
    """``done``, ``other`` (its key's latest record has other settings), ``unfinished`` (a run
    began writing it and did not record it done) or ``none``."""
    last = stagelog.latest(spark, cfg.output.path, stage, key)
    if last is None:
        return "none"
    if last["status"] == "done":
        return "done" if last["fingerprint"] == fp else "other"
    return "unfinished"


_WHY = {"none": "nothing recorded for this key under output.path",
        "other": "its key was recorded with other settings (a run id set by hand?)",
        "unfinished": "a run began it and did not finish (killed or failed); it is computed "
                      "again"}


def stage_forecasts(spark, cfg: JobConfig, plan: reuse.Plan, stages) -> list[StageForecast]:
    """Reuse or run, for each stage ``gio-spark run`` runs (``stages``: the registry's, in
    order), each with its reason."""
    out: list[StageForecast] = []
    runs: set = set()

    def add(name, key, fp, upstream=()):
        state = _state(spark, cfg, name, key, fp)
        before = [u for u in upstream if u in runs]
        if state == "done":
            out.append(StageForecast(name, key, "reuse", "done with these inputs and settings"))
            return
        why = _WHY[state]
        if before and state == "none":
            why = (f"its input changes: {', '.join(before)} "
                   f"{'runs' if len(before) == 1 else 'run'}")
        runs.add(name)
        out.append(StageForecast(name, key, "run", why))

    names = [s.name for s in stages if s.in_run is not None and s.in_run(cfg)]
    if "weigh" in names and plan.weigh is not None:
        add("weigh", plan.weigh.weights_id, plan.weigh.fingerprint)
    quantize_state = _state(spark, cfg, "quantize", plan.clustering_id, plan.quantize)
    embeds = []
    for side in ("pool", "target"):
        name = f"embed_{side}"
        if effective_embedding_column(getattr(cfg, side)):
            continue
        key, fp = plan.embeddings_of(side)
        if quantize_state == "done":
            out.append(StageForecast(name, key, "skip", "not needed: the clustering is reused"))
            continue
        embeds.append(name)
        add(name, key, fp)
        validate = plan.validate[side]
        checked = _state(spark, cfg, f"validate_{side}", validate[:reuse.ID_CHARS], validate)
        if name in runs and checked != "done":
            out[-1].why += (f"; the {side} is new or changed here (its identity matches no "
                            "earlier check)")
    add("quantize", plan.clustering_id, plan.quantize,
        embeds + (["weigh"] if plan.weights_id and plan.weigh else []))
    if out[-1].action == "run" and cfg.quantize.update == "assign":
        out[-1].why += (f"; it updates clustering {plan.base} (quantize.update: assign; "
                        "clustered again past quantize.max_drift)" if plan.base else
                        "; no earlier clustering of this pool to update: it is clustered")
    add("select", plan.run_id, plan.select, ["quantize"])
    add("explode", plan.run_id, plan.explode, ["select"])
    for name in ("train", "evaluate"):
        if name not in names:
            continue
        try:
            if name == "train":
                p = reuse.make_train_plan(spark, cfg, plan, in_run=True)
                add(name, p.train_id, p.fingerprint, ["explode"])
            else:
                p = reuse.make_evaluate_plan(spark, cfg, plan, in_run=True)
                add(name, p.eval_id, p.fingerprint, ["explode", "quantize"])
        except InputError as err:
            out.append(StageForecast(name, None, "run", f"not planned: {err}"))
    for name in names:
        if name not in {"weigh", "quantize", "select", "explode", "train", "evaluate"}:
            out.append(StageForecast(name, None, "run", "runs with the run (not planned here)"))
    return out


# ------------------------------------------------------------------------------------ measures

def measure_embedding(spark, cfg: JobConfig, sample_rows: int = SAMPLE_ROWS) -> dict:
    """One embedding task's speed on the pool's first texts, with the config's model, backend,
    batch size and threads: ``{"sample_rows", "rate" (texts/s, model loaded), "load_seconds",
    "dim"}``. One-task jobs: WARM_ROWS texts (the model's load), then ``sample_rows`` texts
    twice (the same Python worker, the model kept); the faster of the two gives the rate, so
    that a moment's load elsewhere on the machine does not double the estimate."""
    src = cfg.pool
    side = read_side(spark, "pool", src).select(ROW_ID, src.text_column)
    texts = side.where(F.col(src.text_column).isNotNull()).limit(WARM_ROWS + sample_rows).toPandas()
    if len(texts) < WARM_ROWS + 8:
        raise InputError(f"pool.path {src.path!r} has {len(texts)} texts in "
                         f"{src.text_column!r}: too few to measure the embedding on; check the "
                         "pool.")
    e = cfg.embed
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    timings = []
    dim = None
    sample = texts.iloc[WARM_ROWS:]
    for part in (texts.iloc[:WARM_ROWS], sample, sample):
        frame = spark.createDataFrame(part)
        vectors = embed_frame(frame, src.text_column, e.model, e.batch_size, e.normalize,
                              e.device, threads, None, 1, e.backend)
        t0 = time.perf_counter()
        first = vectors.agg(F.max(F.size("embedding")).alias("d")).first()
        timings.append(time.perf_counter() - t0)
        dim = int(first["d"])
    n = len(texts) - WARM_ROWS
    rate = n / max(min(timings[1:]), 1e-6)
    load = max(0.0, timings[0] - WARM_ROWS / rate)
    return {"sample_rows": n, "rate": rate, "load_seconds": load, "dim": dim}


def texts_to_embed(spark, cfg: JobConfig, sides) -> dict:
    """``{side: (distinct texts, texts not in text_embeddings yet)}`` for the text sides in
    ``sides``, as the run would find them: the pool first, then the target, whose texts the
    pool's embedding stores too (one pass over each side's texts, hashed and kept; texts the
    run would drop as blank are counted)."""
    covered = stored_hashes(spark, cfg.output.path, reuse.text_model_id(cfg))
    found, kept = {}, []
    try:
        for side in ("pool", "target"):
            src = getattr(cfg, side)
            if side not in sides or effective_embedding_column(src):
                continue
            text = F.col(src.text_column)
            hashes = (read_side(spark, side, src).where(text.isNotNull())
                      .select(F.sha2(text.cast("string"), 256).alias(TEXT_HASH)).distinct()
                      .persist(StorageLevel.MEMORY_AND_DISK))
            kept.append(hashes)
            missing = hashes if covered is None else hashes.join(covered, TEXT_HASH, "left_anti")
            row = missing.agg(F.count(F.lit(1)).alias("n")).first()
            found[side] = (hashes.count(), int(row["n"]))
            covered = hashes if covered is None else covered.unionByName(hashes)
    finally:
        for frame in kept:
            frame.unpersist()
    return found


def task_slots(spark) -> int | None:
    """How many tasks the session runs at once: its cores over ``spark.task.cpus`` (None on
    Spark Connect, where the cores are not visible)."""
    if is_connect(spark):
        return None
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    return max(1, spark.sparkContext.defaultParallelism // cpus)


def _scoring(s, targets: int, rows: int) -> int:
    """The ``knn`` estimator's first picks (its warm-up): each chunk of targets (up to 512)
    scores a block of rows by inserting every row into the chunk's ``select.k`` neighbour lists:
    two ``[chunk, block, k]`` float32 lists and two ``[chunk, block]`` arrays; 0 for the other
    estimators."""
    if s.estimator != "knn":
        return 0
    chunk = next((c for c in (8, 32, 128, 512) if targets <= c), 512)
    block = min(s.block_size, -(-rows // 128) * 128)
    return 2 * chunk * block * (s.k + 1) * 4


def _distances(s, targets: int, rows: int) -> int:
    """The exact method's target-to-row distances (float32, rows padded to the scoring block)
    where they fit in ``select.cache_bytes``, else that cap; one block for the gradient method."""
    block = min(s.block_size, -(-rows // 128) * 128)
    if s.method != "exact":
        return targets * block * 4
    full = targets * (-(-rows // block) * block) * 4
    return full if full <= s.cache_bytes else s.cache_bytes


def driver_memory(cfg: JobConfig, pool_k: int, target_k: int, dim: int,
                  pool_rows: int | None = None, target_rows: int | None = None) -> dict:
    """The driver's memory for the selection's arrays, in bytes, per phase and term; the phases
    run one after the other (the need is :func:`memory_need`'s, once :func:`forecast` has added
    JAX's own memory to the first phase that runs).

    ``select`` (the select stage):

    - ``collect``: the centroids as collected rows (a Python float and its pointer a value)
      before they become arrays;
    - ``centroids``: the arrays, in numpy and again in JAX (float32);
    - ``distances``: see :func:`_distances`;
    - ``scoring``: see :func:`_scoring`.

    ``row step`` (explode, where it runs: a row budget smaller than the pool, ``select.refine:
    rows``, or no budget where the selection sizes itself, ``select.own_size`` ``auto`` or
    ``density``): the candidate rows (``select.candidates`` times the budget, at most
    ``select.max_candidates`` on the driver; without a budget that cap or the pool's rows,
    whichever is less) and the target rows it matches (``select.max_target_rows``), collected
    through Arrow into float32 arrays (3 copies at the peak), their distances and their
    scoring; where it sizes the selection, its size's float64 blocks (``own size``).
    """
    s = cfg.select
    values = (pool_k + target_k) * dim
    phases = {"select": {"collect": values * PY_VALUE_BYTES, "centroids": values * 4 * 2,
                         "distances": _distances(s, target_k, pool_k),
                         "scoring": _scoring(s, target_k, pool_k)}}
    budget = row_budget(s, pool_rows) if pool_rows else None
    whole_pool = budget is not None and pool_rows is not None and budget >= pool_rows
    if reuse.row_step_can_run(s) and s.refine != "clusters" and not whole_pool:
        # as explode plans it: candidates for the budget, at most max_candidates on the driver
        # and the pool's rows (without a budget select decides the size: the cap, or the pool)
        held = min(s.max_candidates, pool_rows or s.max_candidates) if budget is None else min(
            math.ceil(s.candidates * budget), pool_rows, s.max_candidates)
        targets = min(s.max_target_rows, target_rows or s.max_target_rows)
        phases["row step"] = {"collect": (held + targets) * dim * 4 * ARROW_COPIES,
                              "distances": _distances(s, targets, held),
                              "scoring": _scoring(s, targets, held)}
        if sizes_itself(s):      # gio_core.proportional_size: float64 target rows and blocks
            phases["row step"]["own size"] = (targets * dim + 2 * OWN_SIZE_BLOCK * dim
                                              + 2 * OWN_SIZE_BLOCK * targets) * 8
    return phases


def memory_need(phases: dict) -> int:
    """The driver's peak over the phases, which run one after the other in their order: each
    phase's terms are freed when it ends, except its ``runtime`` term (JAX's runtime and
    compiled code, see :func:`jax_runtime`), which stays resident through the phases after."""
    need = resident = 0
    for terms in phases.values():
        need = max(need, resident + sum(terms.values()))
        resident += terms.get("runtime", 0)
    return need


def _jax_started() -> bool:
    """Whether this process has started a JAX backend (a run in this process would then not
    pay for its start again). JAX has no public call for it; where its private one is missing,
    False (the start is counted: the larger estimate)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src.xla_bridge import backends_are_initialized
        return bool(backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def _probe_environment() -> tuple:
    """The environment the probe's child inherits that changes what it measures (JAX's and
    XLA's settings, the import path): part of the probe's cache key."""
    return tuple(sorted((k, v) for k, v in os.environ.items()
                        if k.startswith(("JAX_", "XLA_")) or k in ("PYTHONPATH",
                                                                   "CUDA_VISIBLE_DEVICES")))


@functools.lru_cache(maxsize=16)
def _probe(spec: str, environment: tuple) -> dict:
    """Runs :mod:`jobs.common.jax_probe` in a child process on ``spec`` (JSON) and returns what
    it printed (``environment``: :func:`_probe_environment`, the cache's key with ``spec``).
    Raises ``RuntimeError`` with the child's last line where it fails."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(jobs.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    try:
        done = subprocess.run([sys.executable, "-m", "jobs.common.jax_probe", spec], env=env,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    if done.returncode != 0:       # the exception's line: the last that is not JAX's note
        lines = [ln for ln in done.stderr.strip().splitlines()
                 if ln.strip() and not ln.startswith(("For simplicity", "-----"))]
        raise RuntimeError((lines or [f"exit {done.returncode}"])[-1])
    printed = done.stdout.strip().splitlines()
    try:
        found = json.loads(printed[-1])
        return {key: float(found[key]) for key in ("start_mib", "select_mib", "seconds")}
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"it printed {printed[-1][:200]!r} where its figures were expected"
                           if printed else "it printed nothing") from e


def jax_runtime(cfg: JobConfig, dim: int) -> dict:
    """JAX's own memory on the driver, measured, not guessed: the resident memory its backend's
    start adds and the further growth while a small selection with the config's options
    (estimator, method, stop rule, fill, ``select.k``, the JAX platform settings) compiles and
    runs on ``dim``-D random rows, in a child process (:mod:`jobs.common.jax_probe`; a few
    seconds), so this process never starts JAX for it. Both hardly depend on the data's size.

    Returns ``{"start": bytes, "compiled": bytes, "counted": bytes, "started_here": bool,
    "seconds": float}``; ``counted`` leaves the start out where this process has started JAX
    already (a run here does not pay for it again). Where the probe fails: ``{"why": ...}``."""
    r = cfg.runtime
    spec = json.dumps({"dim": dim, "options": engine_options(cfg.select),
                       "jax": {"platform": r.jax_platform, "preallocate": r.jax_preallocate,
                               "memory_fraction": r.jax_memory_fraction}}, sort_keys=True)
    try:
        m = _probe(spec, _probe_environment())
    except (RuntimeError, ValueError) as e:
        return {"why": f"not measured: the probe failed ({e})"}
    start, compiled = int(m["start_mib"] * 2 ** 20), int(m["select_mib"] * 2 ** 20)
    here = _jax_started()
    return {"start": start, "compiled": compiled, "counted": compiled + (0 if here else start),
            "started_here": here, "seconds": m["seconds"]}


# ------------------------------------------------------------------------------------ forecast

def forecast(spark, cfg: JobConfig, stages, sample_rows: int = SAMPLE_ROWS,
             measure: bool = True, why_not: str = "measure=False") -> Forecast:
    """What ``gio-spark run`` would do with ``cfg`` on ``spark`` (see the module's doc).
    ``stages``: the registry's stages, in order. ``measure``: embed a sample to time the
    embedding and probe JAX's memory (:func:`jax_runtime`) (False: neither; both are left out,
    ``why_not`` saying why).

    Raises:
      InputError: a source that cannot be read, or a train or evaluate section whose selection
        is missing (as the run would, before its work).
    """
    plan = reuse.make_plan(spark, cfg)
    out = Forecast(plan.run_id, cfg.output.path)
    out.stages = stage_forecasts(spark, cfg, plan, stages)
    out.changed = changed_settings(spark, cfg) if any(s.action == "run" for s in out.stages) \
        else []
    for side in ("pool", "target"):
        out.inputs[side] = side_size(spark, cfg, plan, side)
    if cfg.target.domain_column:
        out.domains = target_domains(spark, cfg, plan)

    pool_rows, target_rows = out.inputs["pool"].rows, out.inputs["target"].rows
    q = cfg.quantize
    if q.pool_k == "auto":
        pool_k = auto_pool_k(pool_rows or 1, cfg.select) if pool_rows else None
        pool_k_from = f"auto, for {pool_rows:,} rows" if pool_rows else "auto; rows unknown"
    else:
        pool_k, pool_k_from = int(q.pool_k), "quantize.pool_k"
    target_k = min(q.target_k, target_rows) if target_rows else q.target_k

    texts = [s for s in ("pool", "target") if not effective_embedding_column(getattr(cfg, s))]
    to_embed = {st.stage.removeprefix("embed_") for st in out.stages
                if st.stage.startswith("embed_") and st.action == "run"}
    dim, dim_from = None, None
    if to_embed and measure and "pool" in texts:
        m = measure_embedding(spark, cfg, sample_rows)
        slots = task_slots(spark)
        dim, dim_from = m["dim"], f"{cfg.embed.model}'s output"
        sides, total, loaded = {}, 0.0, False
        for side, (distinct, missing) in texts_to_embed(spark, cfg, to_embed).items():
            if missing == 0:
                sides[side] = {"rows": out.inputs[side].rows, "texts": distinct, "missing": 0,
                               "tasks": 0, "seconds": 0.0}
                continue
            chunks = max(1, math.ceil(missing / cfg.embed.commit_rows))
            tasks = embed_partitions(math.ceil(missing / chunks), cfg.embed.rows_per_task)
            at_once = min(tasks, slots or tasks)
            seconds = missing / (m["rate"] * at_once) + (0.0 if loaded else m["load_seconds"])
            loaded = True
            sides[side] = {"rows": out.inputs[side].rows, "texts": distinct, "missing": missing,
                           "tasks": tasks * chunks, "seconds": seconds}
            total += seconds
        out.embedding = {**m, "slots": slots or 1, "sides": sides, "seconds": total}
    elif to_embed and "pool" not in texts:
        out.embedding = {"why": "the pool is precomputed; the target's texts are not timed"}
    elif to_embed:
        out.embedding = {"why": f"not measured ({why_not})"}
    else:
        out.embedding = {"why": "nothing to embed: the embeddings or the clustering are reused"
                         if texts else "nothing to embed: both sides are precomputed vectors"}
    if dim is None:
        dim, dim_from = _dim(spark, cfg)
    if pool_k is not None and dim:
        out.clusters = {"pool_k": pool_k, "pool_k_from": pool_k_from, "target_k": target_k,
                        "dim": dim, "dim_from": dim_from}
        phases = driver_memory(cfg, pool_k, target_k, dim, pool_rows, target_rows)
        runs = {st.stage for st in out.stages if st.action == "run"}
        first = next((phase for phase, stage in (("select", "select"), ("row step", "explode"))
                      if phase in phases and stage in runs), None)
        runtime = ({"why": f"not measured ({why_not})"} if not measure else
                   {"why": "no selection runs"} if first is None else jax_runtime(cfg, dim))
        if "counted" in runtime:
            phases[first]["runtime"] = runtime["counted"]
            runtime["phase"] = first
        conf = spark.conf
        out.driver = {"phases": phases, "need_bytes": memory_need(phases), "runtime": runtime,
                      "free_bytes": free_memory(),
                      "max_result": conf.get("spark.driver.maxResultSize", "1g"),
                      "driver_memory": conf.get("spark.driver.memory", "1g")}
        out.warnings += _warnings(cfg, out, pool_k, target_k, dim, pool_rows)
    if out.domains:
        _share_out(cfg, out, target_k, pool_rows)
    for side, s in out.inputs.items():
        if s.rows is None:
            out.warnings.append(f"the {side}'s rows are not known without a scan; the clusters "
                                "and the estimates above assume what the config sets")
    return out


def target_domains(spark, cfg: JobConfig, plan) -> dict:
    """The target's domains and their rows (``target.domain_column``): from the target's check
    on an earlier run where the source is unchanged (its usable rows and distinct values), else
    one grouped count of the target's rows with a domain (before the checks: bad rows count)."""
    column = cfg.target.domain_column
    key = plan.validate["target"][:reuse.ID_CHARS]
    last = stagelog.latest(spark, cfg.output.path, "validate_target", key)
    if last is not None and last["status"] == "done" and \
            last["fingerprint"] == plan.validate["target"]:
        report = json.loads(last["detail"])
        if "domains" in report:
            return {"column": column, "rows_from": "checked on an earlier run, used rows",
                    "counts": report["domains"]}
    found = (read_side(spark, "target", cfg.target).where(F.col(column).isNotNull())
             .groupBy(F.col(column).cast("string").alias("d")).count().orderBy("d")
             .limit(MAX_DOMAINS + 1).collect())
    return {"column": column, "rows_from": "counted, before the input checks",
            "counts": {r["d"]: {"rows": int(r["count"])} for r in found}}


def _share_out(cfg: JobConfig, out: Forecast, target_k: int, pool_rows: int | None) -> None:
    """Each domain's target clusters (as quantize shares ``quantize.target_k`` out) and, with
    ``select.shares`` and a known budget, its rows of the budget, into ``out.domains["each"]``;
    what the run's input checks would refuse about the domains becomes a warning."""
    counts = out.domains["counts"]
    if len(counts) > MAX_DOMAINS:
        out.warnings.append(f"the run would stop at its input checks: target.domain_column "
                            f"{cfg.target.domain_column!r} holds more than {MAX_DOMAINS} "
                            "domains (a column of ids, not of domains?); name a column with "
                            "fewer, or set target.domain_column to null.")
        out.domains["each"] = {}
        return
    ks = domain_ks(target_k, counts, cfg.select.k + 1)
    shares = cfg.select.shares
    budget = row_budget(cfg.select, pool_rows) if pool_rows else None
    budgets = (share_budgets({str(d): v for d, v in shares.items()}, budget)
               if shares is not None and budget is not None else {})
    out.domains["each"] = {
        name: {"rows": c["rows"], "target_k": ks[name],
               "share": None if shares is None else {str(d): v for d, v in
                                                     shares.items()}.get(name),
               "budget": budgets.get(name)}
        for name, c in counts.items()}
    try:
        check_domains(cfg, counts)
    except InputError as e:
        out.warnings.append(f"the run would stop at its input checks: {e}")


def _dim(spark, cfg: JobConfig) -> tuple[int | None, str | None]:
    """The vectors' dimension without the model: a precomputed pool's first vector."""
    src = cfg.pool
    column = effective_embedding_column(src)
    if column:
        first = read_side(spark, "pool", src).select(F.size("embedding").alias("d")).first()
        return (int(first["d"]), "the pool's first vector") if first else (None, None)
    return model_dimension(cfg.embed.model), f"{cfg.embed.model}'s dimension"


def _warnings(cfg: JobConfig, out: Forecast, pool_k: int, target_k: int, dim: int,
              pool_rows: int | None) -> list[str]:
    found = []
    d = out.driver
    collected = (pool_k + target_k) * dim * 4
    limit = jvm_bytes(d["max_result"], "1g")
    if limit is not None and collected > 0.8 * limit:
        found.append(f"the centroids ({_size(collected)} as float32) come near or above "
                     f"spark.driver.maxResultSize={d['max_result']}: raise it (--set "
                     f"spark.conf.spark.driver.maxResultSize=...) or lower quantize.pool_k")
    heap = jvm_bytes(d["driver_memory"], "1g", 2 ** 20)    # a bare number is MiB here
    if heap is not None and 2 * collected > 0.6 * heap:
        found.append(f"collecting the centroids takes about {_size(2 * collected)} of the "
                     f"driver JVM's heap (spark.driver.memory={d['driver_memory']}): raise "
                     "spark.driver.memory or lower quantize.pool_k")
    if d.get("free_bytes") and d["need_bytes"] > 0.7 * d["free_bytes"]:
        phases = d.get("phases") or {}
        step = "row step" in phases and sum(phases["row step"].values()) > sum(
            v for k, v in phases.get("select", {}).items() if k != "runtime")
        fix = ("lower select.max_candidates or select.max_target_rows, or set a smaller row "
               "budget" if step else "lower quantize.pool_k (or select.cache_bytes)")
        found.append(f"the selection needs about {_size(d['need_bytes'])} on the driver and "
                     f"this machine has {_size(d['free_bytes'])} free: {fix}, or run the "
                     "driver on a larger machine")
    if pool_k > cfg.select.max_centroids:
        found.append(f"pool_k {pool_k:,} is over select.max_centroids="
                     f"{cfg.select.max_centroids:,}: the select stage would refuse it")
    budget = row_budget(cfg.select, pool_rows) if pool_rows else None
    if budget is not None and pool_rows is not None and budget >= pool_rows:
        found.append(f"the row budget ({budget:,}) is the whole pool ({pool_rows:,} rows): "
                     "lower select.max_rows or select.max_fraction")
    return found
