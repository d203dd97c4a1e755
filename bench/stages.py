"""Per-stage wall time of the pipeline on 100,000 pool rows with precomputed embeddings (d=384).

Writes a synthetic pool (100,000 unit-norm clustered vectors) and target (2,000) as Parquet, then
runs validate, quantize, select and explode on local[C], timing each. The baseline in the same run
is a plain Spark job over the same pool: read it and count the rows (the floor any stage pays).

    python bench/stages.py [--rows 100000] [--pool-k 500] [--target-k 100] [--cores 2]
                           [--algorithm lloyd|mllib] [--out bench/results/stages_cpu_2cores.jsonl]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import clustered  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--target-rows", type=int, default=2_000)
    parser.add_argument("--pool-k", type=int, default=500)
    parser.add_argument("--target-k", type=int, default=100)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--algorithm", default="lloyd", choices=("lloyd", "mllib"))
    parser.add_argument("--out")
    args = parser.parse_args()

    import pandas as pd
    from bench._common import emit
    from jobs.state import reuse
    from jobs.config import load_config
    from jobs.stages.explode import run_explode
    from jobs.stages.select import run_select
    from jobs.state.inputs import prepare_inputs
    from jobs.stages.embed import side_embeddings
    from jobs.stages.quantize import run_quantize
    from jobs.io.session import build_session

    work = tempfile.mkdtemp(prefix="gio-stages-")
    weights = np.zeros(50)
    weights[[3, 11, 19, 27, 35]] = [0.4, 0.25, 0.15, 0.1, 0.1]
    pool, comp = clustered(args.rows, 384, seed=1)
    target, _ = clustered(args.target_rows, 384, seed=2, weights=weights)
    pd.DataFrame({"id": np.arange(args.rows), "component": comp, "vec": list(pool)}).to_parquet(
        os.path.join(work, "pool.parquet"), row_group_size=10_000)
    pd.DataFrame({"id": np.arange(len(target)), "vec": list(target)}).to_parquet(
        os.path.join(work, "target.parquet"))
    overrides = [f"spark.master=local[{args.cores}]", f"output.path={work}/out",
                 f"quantize.pool_k={args.pool_k}", f"quantize.target_k={args.target_k}",
                 "quantize.max_iter=10", f"quantize.algorithm={args.algorithm}"]
    for side in ("pool", "target"):
        overrides += [f"{side}.format=parquet", f"{side}.path={work}/{side}.parquet",
                      f"{side}.id_column=id", f"{side}.embedding_column=vec"]
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "conf", "demo.yaml"), overrides)
    spark = build_session("stages-bench", cfg.spark.master,
                          {"spark.sql.shuffle.partitions": str(4 * args.cores)})
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        return out

    timed("baseline_read_count", lambda: spark.read.parquet(f"{work}/pool.parquet").count())
    def validate():                 # the run's keys, then both sides read and checked
        plan = reuse.make_plan(spark, cfg)
        return plan, prepare_inputs(spark, cfg, plan, lambda *a, **k: None)

    plan, inputs = timed("validate", validate)
    timed("quantize", lambda: run_quantize(
        spark, cfg, plan, inputs, lambda side: side_embeddings(spark, cfg, plan, side)))
    timed("select", lambda: run_select(spark, cfg, plan, inputs.reports()))
    summary = timed("explode", lambda: run_explode(spark, cfg, plan, inputs.pool))
    selected = spark.read.format("delta").load(summary["table"]).select("component").toPandas()
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    emit({"rows": args.rows, "dim": 384, "cores": args.cores, "pool_k": args.pool_k,
          "target_k": args.target_k, "algorithm": args.algorithm, "seconds": timings,
          "stage_over_baseline": {k: round(v / timings["baseline_read_count"], 1)
                                  for k, v in timings.items()},
          "selected_rows": summary["selected_rows"],
          "selected_from_target_components": float(
              selected["component"].isin([3, 11, 19, 27, 35]).mean())}, args.out)

if __name__ == "__main__":
    main()
