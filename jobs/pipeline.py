"""The whole pipeline in one Spark application: embed -> quantize -> select -> explode.

    gio-spark run --config conf/demo.yaml [--set select.k=7 ...]
    spark-submit jobs/pipeline.py --config conf/demo.yaml

Inputs are read and checked before anything heavy runs (and before anything is written); each
stage reuses its committed output when its inputs and parameters are unchanged, so a re-run after
a failure resumes.
"""
from __future__ import annotations

import os


def validate_inputs(spark, cfg) -> dict:
    """Reads both sides and checks everything that can be checked cheaply.

    Returns:
      ``{"pool": DataFrame, "target": DataFrame, "dim": int}``.
    Raises:
      ConfigError: unreadable or empty sides, missing columns, bad precomputed embeddings,
        a dimension mismatch, a target smaller than ``select.k + 1`` rows.
    """
    from jobs.config import ConfigError
    from jobs.embed import model_dimension
    from jobs.sources import check_embeddings, read_side

    frames = {side: read_side(spark, side, getattr(cfg, side)) for side in ("pool", "target")}
    dims = {}
    for side, df in frames.items():
        if getattr(cfg, side).embedding_column:
            dims[side] = check_embeddings(df, side)
    if len(dims) < 2:
        try:
            model_dim = model_dimension(cfg.embed.model)
        except Exception as err:  # noqa: BLE001 - any load failure is a config problem here
            raise ConfigError(f"embed.model {cfg.embed.model!r} cannot be loaded: {err}. Give a "
                              "sentence-transformers model directory, or 'bundled'.") from None
        for side in ("pool", "target"):
            dims.setdefault(side, model_dim)
    if dims["pool"] != dims["target"]:
        raise ConfigError(f"embedding dimension mismatch: pool {dims['pool']}, target "
                          f"{dims['target']}; use the same model for both sides.")
    target_rows = frames["target"].select("row_id").distinct().count()
    if target_rows <= cfg.select.k:
        raise ConfigError(f"the target has {target_rows} distinct rows; select.k="
                          f"{cfg.select.k} needs at least {cfg.select.k + 1}. Lower select.k or "
                          "give a larger target sample.")
    return {**frames, "dim": dims["pool"]}


def run_pipeline(spark, cfg) -> dict:
    """Runs every stage; returns the explode summary."""
    from jobs.embed import side_embeddings
    from jobs.explode import run_explode
    from jobs.gio_select import run_select
    from jobs.quantize import run_quantize

    frames = validate_inputs(spark, cfg)
    pool_emb = side_embeddings(spark, cfg, "pool", frames["pool"])
    target_emb = side_embeddings(spark, cfg, "target", frames["target"])
    run_quantize(spark, cfg, pool_emb, target_emb)
    run_id = run_select(spark, cfg)
    return run_explode(spark, cfg, run_id, frames["pool"])


def demo_report(spark, summary: dict, examples: int = 8) -> str:
    """For the demo data: how much of the selection came from the target's packages."""
    from pyspark.sql import functions as F

    from jobs.demo_data import TARGET_PACKAGES, demo_rows
    selected = spark.read.format("delta").load(summary["table"]).where(
        F.col("run_id") == summary["run_id"])
    in_target = F.col("package").isin(*TARGET_PACKAGES)
    sel_share = selected.select(F.avg(in_target.cast("double"))).first()[0] or 0.0
    pool_rows = demo_rows("pool")
    base = sum(r["package"] in TARGET_PACKAGES for r in pool_rows) / len(pool_rows)
    top = (selected.groupBy("package").count().orderBy(F.desc("count"), "package").limit(8)
           .collect())
    lines = [f"demo: {summary['selected_rows']} of {summary['pool_rows']} docstrings selected from "
             f"{summary['clusters']} clusters; {100 * sel_share:.1f}% come from the target's "
             f"packages ({', '.join(TARGET_PACKAGES)}), against {100 * base:.1f}% of the pool",
             "  most selected packages: " + ", ".join(f"{r['package']} {r['count']}" for r in top),
             "  examples (first picks first):"]
    for r in selected.orderBy("rank", "doc_id").limit(examples).collect():
        first = r["text"].strip().splitlines()[0][:90]
        lines.append(f"    [{r['rank']:>3}] {r['module']}: {first}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from jobs import runner

    def body(spark, cfg):
        summary = run_pipeline(spark, cfg)
        if cfg.pool.format == "demo":
            print(demo_report(spark, summary), flush=True)

    return runner.run_main("gio-spark: the whole pipeline", body, argv)


if __name__ == "__main__":
    if __package__ in (None, ""):       # spark-submit jobs/pipeline.py: import from the checkout
        import sys
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.pipeline import main as _main
    raise SystemExit(_main())
