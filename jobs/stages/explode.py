"""The explode stage: from chosen clusters back to rows.

``broadcast(selection of this run) JOIN pool_assignments (of the run's clustering) JOIN pool rows``
gives every usable pool row of every chosen cluster (with a row budget, the last cluster sampled
down to what is left of it), with its own columns plus ``cluster_id``,
``rank`` (the pick that chose its cluster) and ``run_id``. Written to ``selected_rows``, replacing
this run's rows in one transaction, and summarised on stdout.

Before it writes, it checks that the run's ``selection`` and ``runs`` rows are the ones this run's
select committed; if a concurrent run with the same ``run_id`` and other parameters replaced them,
it stops with a :class:`ConcurrentRunError` instead of mixing the two.
"""
from __future__ import annotations

import time

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.frames import ROW_ID, seed_hash
from jobs.common.log import log, took
from jobs.config import JobConfig, row_budget
from jobs.io import tables
from jobs.io.sources import Side, check_outputs
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import read_only


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


def budget_cut(spark, cfg: JobConfig, plan: reuse.Plan, selection: DataFrame):
    """``(cluster_id, rows, seed)`` when the row budget (``select.max_rows``/``max_fraction``)
    falls inside the last picked cluster, else None."""
    sizes = (tables.read_key(spark, cfg.output.path, "centroids", plan.clustering_id)
             .where(F.col("side") == "pool").agg(F.sum("size")).first()[0])
    budget = row_budget(cfg.select, int(sizes or 0))
    if budget is None:
        return None
    picks = selection.select("rank", "cluster_id", "cluster_size").orderBy("rank").collect()
    seen, total = set(), 0
    for r in picks:
        if r["cluster_id"] in seen:
            continue
        seen.add(r["cluster_id"])
        if total + r["cluster_size"] > budget:
            return int(r["cluster_id"]), budget - total, int(cfg.select.seed)
        total += r["cluster_size"]
    return None


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


def run_explode(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side) -> dict:
    """Commits ``selected_rows`` for the run (unless done); returns the summary it prints."""
    run_id, fp = plan.run_id, plan.explode
    t0 = time.perf_counter()
    schema = tables.selected_rows_schema(pool.schema)
    selection = _checked_selection(spark, cfg, plan)
    assignments = tables.read_key(spark, cfg.output.path, "pool_assignments", plan.clustering_id)

    def compute() -> DataFrame:
        own = [f.name for f in pool.schema.fields]
        cut = budget_cut(spark, cfg, plan, selection)
        if cut is not None:
            log(f"explode: the row budget ends inside cluster {cut[0]}: {cut[1]} of its rows "
                "taken (seeded by select.seed)")
        return explode_frame(selection, assignments, pool.frame, own, cut)

    def commit(out: DataFrame):
        tables.replace_key(spark, out, cfg.output.path, "selected_rows", run_id, schema)
        return None, None

    run_stage(spark, cfg.output.path, "explode", run_id, fp, compute, commit,
              reused=lambda: log(f"explode: reusing the selected rows of run {run_id}"))
    path = tables.table_path(cfg.output.path, "selected_rows")
    written = tables.read_key(spark, cfg.output.path, "selected_rows", run_id)
    summary = {"run_id": run_id, "selected_rows": written.count(),
               "pool_rows": pool.report["kept"],
               "clusters": selection.select("cluster_id").distinct().count(),
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
    run_explode(spark, cfg, plan, pool)


STAGE = Stage(
    "explode", "the explode stage alone: chosen clusters back to rows", None, both_sides,
    needs=("select",), outputs=("selected_rows",), command=explode_command,
    in_run=lambda cfg: True,
    step=lambda run: run_explode(run.spark, run.cfg, run.plan, run.inputs.pool),
    connect=True)
