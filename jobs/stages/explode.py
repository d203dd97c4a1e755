"""The explode stage: from chosen clusters back to rows.

Two ways, by ``select.refine`` (see :func:`row_step_plan`):

* **the row step** (``auto`` with a row budget, or ``rows``): the candidates are the rows of the
  chosen clusters and of the pool clusters nearest the target's centroids
  (:func:`gio_core.candidate_clusters`), ``select.candidates`` times as many rows as the
  selection takes, at most ``select.max_candidates``; their embeddings and a seeded sample of at
  most ``select.max_target_rows`` target rows are collected to the driver (both sorted by row
  id, so the same rows give the same picks whatever the sources' order), and
  ``gio_core.select`` picks among the candidate rows, with the select section's options, the
  ``mmd`` rule and its fill, exactly as many rows as whole clusters would have given;
  ``rank`` is then the row's pick, ``cluster_id`` its cluster.
* **whole clusters** (``clusters``, or ``auto`` without a budget):
  ``broadcast(selection of this run) JOIN pool_assignments (of the run's clustering) JOIN pool
  rows``, every usable pool row of every chosen cluster (with a row budget, the last cluster
  sampled down to what is left of it); ``rank`` is the pick that chose the row's cluster.

Either way the rows carry the pool's own columns plus ``cluster_id``, ``rank`` and ``run_id``,
are written to ``selected_rows``, replacing this run's rows in one transaction, and summarised
on stdout; the row step's figures (candidate rows and clusters, target rows, MMD² to the target,
seconds) go into the stage log's record.

Before it writes, it checks that the run's ``selection`` and ``runs`` rows are the ones this run's
select committed; if a concurrent run with the same ``run_id`` and other parameters replaced them,
it stops with a :class:`ConcurrentRunError` instead of mixing the two.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

import gio_core
from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.frames import EMBEDDING, ROW_ID, seed_hash, seeded_sample
from jobs.common.log import bar, detail, log, took
from jobs.common.runtime import configure_jax
from jobs.config import JobConfig, engine_options, row_budget
from jobs.io import tables
from jobs.io.sources import Side, check_outputs
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import read_only
from jobs.state.stored import collect_centroids, load_weights, stored_embeddings


def explode_frame(selection: DataFrame, assignments: DataFrame, pool_rows: DataFrame,
                  own_columns: list[str], cut: tuple[int, int, int] | None = None) -> DataFrame:
    """The selected rows, as a DataFrame (no I/O). A cluster picked twice (after a reset)
    keeps its first rank. ``cut``: ``(cluster_id, rows, seed)``, that cluster sampled down to
    ``rows`` rows: those first by a seeded hash of their row id (so the sample does not depend
    on the pool's row order)."""
    chosen = selection.groupBy("cluster_id").agg(F.min("rank").alias("rank"),
                                                 F.first("run_id").alias("run_id"))
    rows = (F.broadcast(chosen).join(assignments, "cluster_id")
            .select(ROW_ID, "cluster_id", "rank", "run_id"))
    if cut is not None:
        cluster, keep, seed = cut
        order = Window.partitionBy("cluster_id").orderBy(seed_hash(seed), F.col(ROW_ID))
        sampled = (rows.where(F.col("cluster_id") == cluster)
                   .withColumn("_n", F.row_number().over(order))
                   .where(F.col("_n") <= keep).drop("_n"))
        rows = rows.where(F.col("cluster_id") != cluster).unionByName(sampled)
    return pool_rows.join(rows, ROW_ID).select(*own_columns, "cluster_id", "rank", "run_id")


def _pool_sizes(spark, cfg: JobConfig, plan: reuse.Plan) -> int:
    return int(tables.read_key(spark, cfg.output.path, "centroids", plan.clustering_id)
               .where(F.col("side") == "pool").agg(F.sum("size")).first()[0] or 0)


def _cut(picks: list, budget: int | None, seed: int):
    """``(cluster_id, rows, seed)`` when ``budget`` ends inside a picked cluster (``picks``:
    ``(cluster_id, cluster_size)`` in rank order), else None; and the rows the picks give."""
    seen, total = set(), 0
    for cluster, size in picks:
        if cluster in seen:
            continue
        seen.add(cluster)
        if budget is not None and total + size > budget:
            return (int(cluster), budget - total, seed), budget
        total += size
    return None, total


def _picks(selection: DataFrame) -> list:
    return [(int(r["cluster_id"]), int(r["cluster_size"])) for r in
            selection.select("rank", "cluster_id", "cluster_size").orderBy("rank").collect()]


@dataclass(frozen=True)
class RowStep:
    """What the row step does: pick ``size`` rows among at least ``candidates`` candidate rows
    (``run`` False: whole clusters, and ``why`` says why, or is empty)."""
    run: bool
    size: int
    candidates: int
    why: str = ""


def row_step_plan(s, budget: int | None, size: int, pool_rows: int) -> RowStep:
    """Whether the row step runs for a selection of ``size`` rows (what whole clusters give,
    with the row budget's cut) out of ``pool_rows``.

    ``select.refine``: ``clusters`` never; ``auto`` when there is a row budget; ``rows`` always.
    It runs only where it has a choice (``size`` below the pool's rows) and its candidates,
    ``ceil(select.candidates * size)`` rows (at most the pool), fit ``select.max_candidates``;
    otherwise ``auto`` takes whole clusters, with the reason, and ``rows`` is refused.

    Raises:
      InputError: ``refine: rows`` whose candidates do not fit ``select.max_candidates``.
    """
    want = min(int(math.ceil(round(s.candidates * size, 9))), pool_rows)
    if s.refine == "clusters":
        return RowStep(False, size, want)
    if s.refine == "auto" and budget is None:
        return RowStep(False, size, want)
    if size == 0:
        return RowStep(False, size, want, "select chose no rows")
    if size >= pool_rows:
        return RowStep(False, size, want, f"the selection is the whole pool ({pool_rows} rows)")
    if want > s.max_candidates:
        why = (f"its {want} candidate rows ({s.candidates:g} x {size}) are more than "
               f"select.max_candidates={s.max_candidates}")
        if s.refine == "rows":
            raise InputError(refused(why, budget))
        return RowStep(False, size, want, why)
    return RowStep(True, size, want)


def refused(why: str, budget: int | None) -> str:
    """``select.refine: rows``'s one line when its candidates do not fit."""
    smaller = "the row budget" if budget is not None else "the selection (set a row budget)"
    return (f"select.refine=rows: {why}, the rows it may collect to the driver; raise "
            f"select.max_candidates (and the driver's memory), lower select.candidates or "
            f"{smaller}, or set select.refine: auto to take whole clusters there.")


def check_row_step(cfg: JobConfig, pool_rows: int) -> None:
    """Before anything is written: ``select.refine: rows`` with a row budget whose candidate
    rows cannot fit ``select.max_candidates`` (the selection takes at most the budget, so the
    check uses it) is refused.

    Raises:
      InputError: that case, in the words of :func:`row_step_plan`.
    """
    budget = row_budget(cfg.select, pool_rows)
    if cfg.select.refine == "rows" and budget is not None:
        row_step_plan(cfg.select, budget, min(budget, pool_rows), pool_rows)


def _matrix(frame: DataFrame, what: str, *extra: str):
    """``(pandas frame of row_id and extra, float32 [n, d])`` of rows with an embedding, in row
    id order."""
    pdf = (frame.select(ROW_ID, *extra,
                        F.col(EMBEDDING).cast("array<float>").alias(EMBEDDING))
           .orderBy(ROW_ID).toPandas())
    if len(pdf) == 0:
        raise InputError(f"the row step found no {what}; run quantize again.")
    return pdf.drop(columns=[EMBEDDING]), np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32)


def candidates_of(spark, cfg: JobConfig, plan: reuse.Plan, picks: list,
                  step: RowStep) -> tuple[list, int, int]:
    """``(candidate cluster ids, the rows they hold, the chosen clusters among them)``: the
    chosen clusters and those nearest the target (:func:`gio_core.candidate_clusters`).

    Raises:
      ConcurrentRunError: a chosen cluster is not among the clustering's centroids.
    """
    cents = collect_centroids(spark, cfg, plan.clustering_id)
    pool_ids, pool_c, pool_sizes = cents["pool"]
    index = {int(c): i for i, c in enumerate(pool_ids)}
    missing = sorted({c for c, _ in picks if c not in index})
    if missing:
        raise ConcurrentRunError(
            f"run {plan.run_id} chose cluster(s) {missing[:5]} that clustering "
            f"{plan.clustering_id} does not hold: its tables were replaced while this run ran. "
            "Run again (give each config its own run_id, or none).")
    chosen = [index[c] for c, _ in picks]
    near = gio_core.candidate_clusters(pool_c, cents["target"][1], pool_sizes, chosen,
                                       step.candidates)
    return ([int(pool_ids[i]) for i in near], int(pool_sizes[near].sum()),
            len(dict.fromkeys(chosen)))


def row_picks(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side, target: Side,
              assignments: DataFrame, clusters: list, chosen: int,
              step: RowStep) -> tuple[DataFrame, dict]:
    """The row step on the rows of ``clusters`` (the first ``chosen`` of them select's):
    ``(ROW_ID, cluster_id, rank)`` of the rows it picks, and its figures."""
    s = cfg.select
    t0 = time.perf_counter()
    wanted = spark.createDataFrame([(c,) for c in clusters], "cluster_id int")
    members = F.broadcast(wanted).join(assignments.select(ROW_ID, "cluster_id"), "cluster_id")
    pool_e = stored_embeddings(spark, cfg, pool, *plan.embeddings_of("pool"))
    target_e = stored_embeddings(spark, cfg, target, *plan.embeddings_of("target"))
    if pool_e is None or target_e is None:
        raise InputError(f"the embeddings of clustering {plan.clustering_id} are gone from "
                         f"{cfg.output.path!r}; run quantize (or the whole pipeline) again.")
    cand, x = _matrix(members.join(pool_e, ROW_ID), "candidate rows", "cluster_id")
    cand_ids, cand_clusters = cand[ROW_ID].tolist(), cand["cluster_id"].to_numpy()
    target_ids, y = _matrix(seeded_sample(target_e, s.max_target_rows, s.seed), "target rows")
    if plan.weights_id is not None:             # the clusters' space: scaled by learnt weights
        scale = load_weights(spark, cfg, plan.weights_id, plan.weights).astype(np.float32)
        x, y = x * scale, y * scale
    if cfg.quantize.distance == "cosine":      # ... and at unit length, as quantize put them
        from gio_core.kmeans import normalise
        x, y = normalise(x), normalise(y)
    collect_s = time.perf_counter() - t0
    size = min(step.size, len(cand_ids))
    if size < step.size:
        log(f"explode: warning: the candidate clusters hold {len(cand_ids)} usable rows, fewer "
            f"than the {step.size} to select; the row step selects them all")
    log(f"explode: the row step: {size} of {len(cand_ids)} candidate rows from "
        f"{len(clusters)} clusters ({chosen} chosen, the rest nearest the target), against "
        f"{len(target_ids)} target rows")
    options = engine_options(s)
    # The mmd rule's kernel width: the median squared distance between the target rows it
    # matches (mmd_bandwidth None), in the space the step works in.
    options.update(stop_criterion="mmd", fill="mmd", max_iter=size, max_rows=None,
                   resets_allowed=False, mmd_bandwidth=None)
    configure_jax(cfg.runtime)
    picks_bar = bar("explode: rows", total=size, unit="row")
    every = max(1, size // 20)

    def progress(pick, row, kl):
        picks_bar.update(pick - picks_bar.n)
        if pick % every == 0:
            detail(f"explode: row pick {pick}: KL {kl:.4f}")

    t1 = time.perf_counter()
    try:
        result = gio_core.select(y, x, callback=progress, **options)
    finally:
        picks_bar.close()
    select_s = time.perf_counter() - t1
    chosen_ids = [cand_ids[i] for i in result.indices]
    chosen_clusters = [int(cand_clusters[i]) for i in result.indices]
    id_field = assignments.schema[ROW_ID]
    schema = T.StructType([T.StructField(ROW_ID, id_field.dataType, False),
                           T.StructField("cluster_id", T.IntegerType(), False),
                           T.StructField("rank", T.IntegerType(), False)])
    rows = spark.createDataFrame(
        [(rid, c, rank + 1) for rank, (rid, c) in enumerate(zip(chosen_ids, chosen_clusters,
                                                                  strict=True))], schema)
    figures = {"candidate_rows": len(cand_ids), "candidate_clusters": len(clusters),
               "target_rows": len(target_ids), "rows": len(chosen_ids),
               "mmd": float(result.mmd[-1]) if len(result.mmd) else None,
               "fill_picks": int(result.filled), "collect_s": round(collect_s, 3),
               "select_s": round(select_s, 3)}
    log(f"explode: the row step picked {len(chosen_ids)} rows in {took(select_s)} "
        f"(collect {took(collect_s)})"
        + (f", MMD² to the target {figures['mmd']:.5f}" if figures["mmd"] is not None else ""))
    return rows, figures


def _checked_selection(spark, cfg: JobConfig, plan: reuse.Plan) -> DataFrame:
    run_id = plan.run_id
    if not stagelog.is_done(spark, cfg.output.path, "select", run_id, plan.select):
        raise InputError(f"run {run_id} has no selection for these inputs and select settings "
                         f"under {cfg.output.path!r}; run select (or the whole pipeline) first.")
    record = tables.read_key(spark, cfg.output.path, "runs", run_id).first()
    selection = (tables.read_key(spark, cfg.output.path, "selection", run_id)
                 .where(F.col("select_fingerprint") == plan.select))
    if (record is None or record["select_fingerprint"] != plan.select
            or selection.count() != record["picks"]):
        raise ConcurrentRunError(
            f"the selection of run {run_id} was replaced by another run with the same run_id and "
            "other parameters while this one ran. Give each config its own run_id (or none), "
            "then run again.")
    return selection


def run_explode(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side,
                target: Side | None = None) -> dict:
    """Commits ``selected_rows`` for the run (unless done); returns the summary it prints.
    ``target``: the target side, which the row step matches (read here when it runs and
    ``target`` is None)."""
    run_id, fp = plan.run_id, plan.explode
    t0 = time.perf_counter()
    schema = tables.selected_rows_schema(pool.schema)
    selection = _checked_selection(spark, cfg, plan)
    assignments = tables.read_key(spark, cfg.output.path, "pool_assignments", plan.clustering_id)

    def compute():
        own = [f.name for f in pool.schema.fields]
        pool_rows = _pool_sizes(spark, cfg, plan)
        budget = row_budget(cfg.select, pool_rows)
        picks = _picks(selection)
        cut, size = _cut(picks, budget, int(cfg.select.seed))
        step = row_step_plan(cfg.select, budget, size, pool_rows)
        if step.run:
            clusters, held, chosen = candidates_of(spark, cfg, plan, picks, step)
            if held > cfg.select.max_candidates:       # whole clusters overshoot the need
                why = (f"its {len(clusters)} candidate clusters hold {held} rows, more than "
                       f"select.max_candidates={cfg.select.max_candidates}")
                if cfg.select.refine == "rows":
                    raise InputError(refused(why, budget))
                step = RowStep(False, size, step.candidates, why)
        if step.run:
            side = target if target is not None else read_only(spark, cfg, plan, "target", log)
            rows, figures = row_picks(spark, cfg, plan, pool, side, assignments, clusters,
                                      chosen, step)
            out = (pool.frame.join(F.broadcast(rows), ROW_ID)
                   .withColumn("run_id", F.lit(run_id))
                   .select(*own, "cluster_id", "rank", "run_id"))
            return out, {"row_step": figures}
        if step.why:
            log(f"explode: whole clusters, not the row step: {step.why}")
        if cut is not None:
            log(f"explode: the row budget ends inside cluster {cut[0]}: {cut[1]} of its rows "
                "taken (seeded by select.seed)")
        return explode_frame(selection, assignments, pool.frame, own, cut), {"row_step": None}

    def commit(computed):
        out, figures = computed
        tables.replace_key(spark, out, cfg.output.path, "selected_rows", run_id, schema)
        return None, figures

    run_stage(spark, cfg.output.path, "explode", run_id, fp, compute, commit,
              reused=lambda: log(f"explode: reusing the selected rows of run {run_id}"))
    path = tables.table_path(cfg.output.path, "selected_rows")
    written = tables.read_key(spark, cfg.output.path, "selected_rows", run_id)
    counts = written.agg(F.count("*").alias("rows"),
                         F.countDistinct("cluster_id").alias("clusters")).first()
    summary = {"run_id": run_id, "selected_rows": int(counts["rows"]),
               "pool_rows": pool.report["kept"], "clusters": int(counts["clusters"]),
               "table": path}
    summary["fraction_of_pool"] = summary["selected_rows"] / max(1, summary["pool_rows"])
    if cfg.output.table:
        name = cfg.output.table
        if tables.publish_rows(spark, name, written, run_id):
            log(f"explode: run {run_id}'s rows written into the table {name}")
        summary["output_table"] = name
    log(f"explode: run {run_id}: {summary['selected_rows']} rows "
        f"({100 * summary['fraction_of_pool']:.2f}% of the pool's "
        f"{summary['pool_rows']}) from {summary['clusters']} clusters -> {path} "
        f"({took(time.perf_counter() - t0)})")
    return summary


def explode_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    pool = read_only(spark, cfg, plan, "pool", log)
    check_outputs(spark, cfg, pool.schema)
    check_row_step(cfg, int(pool.report["kept"]))
    run_explode(spark, cfg, plan, pool)


STAGE = Stage(
    "explode", "the explode stage alone: chosen clusters back to rows", None, both_sides,
    needs=("select",), outputs=("selected_rows",), command=explode_command,
    in_run=lambda cfg: True,
    check=lambda run, pending, pool, dim: check_row_step(run.cfg, int(pool.report["kept"])),
    step=lambda run: run_explode(run.spark, run.cfg, run.plan, run.inputs.pool,
                                 run.inputs.target),
    connect=True)
