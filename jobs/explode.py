"""The explode stage: from chosen clusters back to rows.

``broadcast(selection of this run) JOIN pool_assignments JOIN pool rows`` gives every pool row of
every chosen cluster, with its own columns plus ``cluster_id``, ``rank`` (the pick that chose its
cluster) and ``run_id``. Written to ``selected_rows``, replacing this run's rows in one
transaction, and summarised on stdout.
"""
from __future__ import annotations

import os


def explode_frame(selection, assignments, pool_rows):
    """The selected rows, as a DataFrame (no I/O). A cluster picked twice (after a reset)
    keeps its first rank."""
    from pyspark.sql import functions as F

    chosen = selection.groupBy("cluster_id").agg(F.min("rank").alias("rank"),
                                                 F.first("run_id").alias("run_id"))
    rows = (F.broadcast(chosen).join(assignments.dropDuplicates(["row_id"]), "cluster_id")
            .select("row_id", "cluster_id", "rank", "run_id"))
    original = [c for c in pool_rows.columns if c != "row_id" and c != "embedding"]
    return pool_rows.join(rows, "row_id").select(*original, "cluster_id", "rank", "run_id")


def run_explode(spark, cfg, run_id: str, pool_frame=None) -> dict:
    """Writes ``selected_rows`` for ``run_id``; returns the summary it prints."""
    from pyspark.sql import functions as F

    from jobs import runner, tables
    from jobs.gio_select import select_fingerprint
    from jobs.sources import read_side

    selection = (tables.read_table(spark, cfg.output.path, "selection")
                 .where(F.col("run_id") == run_id))
    assignments = tables.read_table(spark, cfg.output.path, "pool_assignments")
    pool = pool_frame if pool_frame is not None else read_side(spark, "pool", cfg.pool)
    fp = runner.fingerprint("explode", select_fingerprint(spark, cfg), run_id)
    stage = f"explode:{run_id}"
    path = tables.table_path(cfg.output.path, "selected_rows")
    if not runner.stage_done(spark, cfg, stage, fp, "selected_rows"):
        out = explode_frame(selection, assignments, pool)
        tables.replace_where(spark, out, path, "run_id", run_id, partition_by="run_id")
        runner.record_stage(spark, cfg, stage, fp)
    else:
        runner.log(f"explode: reusing the selected rows of run {run_id}")
    written = spark.read.format("delta").load(path).where(F.col("run_id") == run_id)
    summary = {"run_id": run_id, "selected_rows": written.count(),
               "pool_rows": assignments.count(),
               "clusters": selection.select("cluster_id").distinct().count(),
               "table": path}
    summary["fraction_of_pool"] = summary["selected_rows"] / max(1, summary["pool_rows"])
    runner.log(f"explode: run {run_id}: {summary['selected_rows']} rows "
               f"({100 * summary['fraction_of_pool']:.2f}% of the pool's "
               f"{summary['pool_rows']}) from {summary['clusters']} clusters -> {path}")
    return summary


def main(argv=None) -> int:
    from jobs import runner

    def body(spark, cfg):
        from jobs.gio_select import resolve_run_id
        run_explode(spark, cfg, resolve_run_id(spark, cfg))

    return runner.run_main("gio-spark explode: chosen clusters back to rows", body, argv)


if __name__ == "__main__":
    if __package__ in (None, ""):       # spark-submit jobs/explode.py: import from the checkout
        import sys
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.explode import main as _main
    raise SystemExit(_main())
