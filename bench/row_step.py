"""The row step against whole clusters, in the pipeline, at 100,000 and 1,000,000 pool rows.

One process per pool size. Each writes a pool of unit-norm clustered vectors (50 components,
``--dim`` features, precomputed: no model runs) and a target and held-out rows drawn from 5 of
the components, as Parquet, then runs the pipeline on ``local[C]`` with a row budget twice on
the same output, stage by stage, so both share the inputs' checks and the clustering: first
``select.refine: clusters`` (the baseline: whole clusters, the last one sampled), then
``select.refine: auto`` (the row step, on the driver), then the row step in Spark tasks: with
``select.max_candidates`` at 3 x the budget (the candidate clusters hold a little more, so the
parts run in tasks and their picks fit a second round on the driver), and at ``--task-cap``
(8,000) with ``select.refine: rows`` (one round, the parts' picks interleaved; ``auto`` takes
whole clusters there). Like for like: the same rows, clusters,
budget, cores and session; what differs is explode (and select's run id). The tasks' memory is
in Spark's Python workers, not in the driver's figure. For each: select's and explode's
seconds, the driver process's peak resident memory during them (sampled every 20 ms from
``/proc``; the JVM's is not counted), and the selection's MMD² to the held-out rows
(``gio_core.mmd_rbf``, RBF, median bandwidth) and its share of rows from the target's
components.

    python bench/row_step.py                      # 100,000 and 1,000,000 rows, one child each
    python bench/row_step.py --rows 100000        # one size, in this process
        [--budget 10000] [--dim 64] [--pool-k 2000] [--cores 2] [--task-cap 8000] [--out FILE]

Appends one JSON line per size to ``bench/results/row_step_cpu_2cores.jsonl`` (by default).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import clustered, emit, run_child  # noqa: E402
from jobs.common.runtime import PeakMemory  # noqa: E402

OUT = "bench/results/row_step_cpu_2cores.jsonl"
COMPONENTS = [3, 11, 19, 27, 35]


def one(args) -> dict:
    import pandas as pd

    from gio_core import mmd_rbf
    from jobs.config import load_config
    from jobs.io.session import build_session
    from jobs.stages.embed import side_embeddings
    from jobs.stages.explode import run_explode
    from jobs.stages.quantize import run_quantize
    from jobs.stages.select import run_select
    from jobs.state import reuse, stagelog
    from jobs.state.inputs import prepare_inputs

    work = tempfile.mkdtemp(prefix="gio-row-step-")
    weights = np.zeros(50)
    weights[COMPONENTS] = [0.4, 0.25, 0.15, 0.1, 0.1]
    pool, comp = clustered(args.rows, args.dim, seed=1)
    pd.DataFrame({"id": np.arange(args.rows), "component": comp, "vec": list(pool)}).to_parquet(
        os.path.join(work, "pool.parquet"), row_group_size=50_000)
    del pool
    target, _ = clustered(2_000, args.dim, seed=2, weights=weights)
    held, _ = clustered(2_000, args.dim, seed=3, weights=weights)
    pd.DataFrame({"id": np.arange(len(target)), "vec": list(target)}).to_parquet(
        os.path.join(work, "target.parquet"))
    overrides = [f"spark.master=local[{args.cores}]", f"output.path={work}/out",
                 f"quantize.pool_k={args.pool_k}", "quantize.target_k=200",
                 f"select.max_rows={args.budget}"]
    for side in ("pool", "target"):
        overrides += [f"{side}.format=parquet", f"{side}.path={work}/{side}.parquet",
                      f"{side}.id_column=id", f"{side}.embedding_column=vec"]
    demo = os.path.join(os.path.dirname(__file__), "..", "conf", "demo.yaml")
    spark = build_session("row-step-bench", f"local[{args.cores}]",
                          {"spark.sql.shuffle.partitions": str(4 * args.cores)})
    out = {"rows": args.rows, "dim": args.dim, "cores": args.cores, "budget": args.budget,
           "pool_k": args.pool_k}
    variants = {"clusters": ["select.refine=clusters"], "auto": ["select.refine=auto"],
                # the row step in Spark tasks: a cap of select.candidates x the budget (the
                # parts' picks fit the driver: a second round there), then one far below it
                "tasks_two_rounds": [f"select.max_candidates={3 * args.budget}"],
                "tasks_one_round": [f"select.max_candidates={args.task_cap}",
                                    "select.refine=rows"]}
    for refine, sets in variants.items():
        cfg = load_config(demo, overrides + sets)
        plan = reuse.make_plan(spark, cfg)
        inputs = prepare_inputs(spark, cfg, plan, lambda *a, **k: None)
        seconds = {}
        start = time.perf_counter()
        run_quantize(spark, cfg, plan, inputs,
                     lambda side, c=cfg, p=plan: side_embeddings(spark, c, p, side))
        seconds["quantize"] = round(time.perf_counter() - start, 2)   # 0 the second time
        with PeakMemory() as rss:
            start = time.perf_counter()
            run_select(spark, cfg, plan, inputs.reports())
            seconds["select"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            summary = run_explode(spark, cfg, plan, inputs.pool, inputs.target)
            seconds["explode"] = round(time.perf_counter() - start, 2)
        rows = (spark.read.format("delta").load(summary["table"])
                .where(f"run_id = '{summary['run_id']}'").select("component", "vec").toPandas())
        chosen = np.stack(rows["vec"].to_numpy()).astype(np.float32)
        detail = stagelog.latest(spark, cfg.output.path, "explode", summary["run_id"])["detail"]
        out[refine] = {"stage_s": seconds, "driver_peak_rss_mib": round(rss.peak, 1),
                       "row_step": json.loads(detail)["row_step"],
                       "driver_rss_before_mib": round(rss.base, 1),
                       "selected_rows": int(summary["selected_rows"]),
                       "mmd_heldout": mmd_rbf(held, chosen),
                       "share_target_components": float(rows["component"].isin(COMPONENTS)
                                                        .mean())}
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    out["quantize_s"] = out["clusters"]["stage_s"]["quantize"]     # the ratios: bench/report.py
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int)
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pool-k", default="2000")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--task-cap", type=int, default=8_000,
                   help="select.max_candidates of the one-round Spark-task variant")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    if args.rows is not None:
        emit(one(args), args.out)
        return
    for rows in (100_000, 1_000_000):
        run_child([__file__, "--rows", str(rows), "--budget", str(args.budget), "--dim",
                   str(args.dim), "--pool-k", args.pool_k, "--cores", str(args.cores),
                   "--task-cap", str(args.task_cap), "--out", args.out])


if __name__ == "__main__":
    main()
