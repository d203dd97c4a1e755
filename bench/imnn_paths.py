"""IMNN fit speed on the tutorial's example, four ways, in one run:

* in memory: ``gio_core.imnn.GradientIMNN`` (the whole fit one compiled loop);
* streamed: ``gio-spark imnn --local``'s IMNN, the driver reading the Delta table's files batch
  by batch (no Spark jobs);
* Spark (``spark``): ``gio-spark imnn``'s IMNN, the whole fit one barrier Spark job whose tasks
  exchange their sums every iteration (``imnn.barrier``, the default; local[N]);
* Spark, two jobs an iteration (``spark_two_jobs``, ``imnn.barrier: false``): executors compute
  the batches, the driver adds up between jobs (the way before barrier jobs; the baseline).

For each: iterations per second (after a warm-up iteration that compiles), and the time to
det F >= 40 on the validation set. The in-memory fit is run to that point. The other two
compute the same iterations (the same arithmetic from the same initial weights, checked here
on the first iterations' det F): by default they run ``--iterations`` and their time to
det F >= 40 is the in-memory run's iteration count times their seconds per iteration; with
``--to-target`` they run all those iterations and the time is measured (and det F >= 40
checked); the barrier job runs to det F >= 40 in any case (seconds, not minutes). The Spark
overhead per iteration is its seconds per iteration minus the streamed path's.

    python bench/imnn_paths.py [--iterations 20] [--to-target] [--master local[2]] [--out F]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iterations", type=int, default=20, help="timed iterations per table path")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--to-target", action="store_true",
                   help="run the table paths to det F >= 40 too (minutes on Spark)")
    p.add_argument("--out", default=None, help="append the result as one JSON line")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from gio_core import imnn as I
    from jobs.stages import imnn as J
    from jobs.config import load_config
    from jobs.io.session import build_session

    λ, ϵ = 10.0, 0.1
    sims = I.example_simulations(jax.random.PRNGKey(0), n_s=1000, n_d=1000)
    kw = dict(n_s=1000, n_d=1000, n_params=2, n_summaries=2, input_shape=(10,),
              θ_fid=jnp.array([0.0, 1.0]), model=I.mlp(), optimiser=optax.adam(1e-3),
              key_or_state=jax.random.PRNGKey(0))
    mem = I.GradientIMNN(**kw, **sims)
    mem.fit(λ, ϵ, patience=100, min_iterations=0, max_iterations=1)        # compile
    mem = I.GradientIMNN(**kw, **sims)
    t = time.perf_counter()
    mem.fit(λ, ϵ, patience=100, min_iterations=100, max_iterations=3000)
    mem_s = time.perf_counter() - t
    val = mem.history["val_detF"]
    reached = int(np.argmax(val >= 40)) + 1 if np.any(val >= 40) else None
    mem_rate = len(val) / mem_s
    result = {"bench": "imnn_paths", "machine": f"{os.cpu_count()} cores", "master": args.master,
              "n_s": 1000, "n_d": 1000, "network": [128, 128, 128],
              "in_memory": {"iterations": len(val), "seconds": round(mem_s, 2),
                            "iterations_per_s": round(mem_rate, 2),
                            "iterations_to_detF_40": reached,
                            "seconds_to_detF_40": None if reached is None
                            else round(reached / mem_rate, 2),
                            "max_detF": round(float(mem.history["max_detF"]), 2)}}

    spark = build_session("imnn-bench", args.master, {"spark.ui.showConsoleProgress": "false",
                                                      "spark.sql.shuffle.partitions": "2"})
    tmp = tempfile.mkdtemp(prefix="imnn-bench-")
    try:
        path = os.path.join(tmp, "sims")
        J.write_example(spark, path)
        first = [float(v) for v in val[:3]]
        for name, mode, barrier in (("local", "local", True), ("spark", "spark", True),
                                    ("spark_two_jobs", "spark", False)):
            cfg = load_config(None, [f"imnn.simulations={path}", "imnn.theta_fid=[0.0, 1.0]",
                                     f"imnn.batch_size={args.batch_size}",
                                     f"imnn.barrier={str(barrier).lower()}",
                                     f"output.path={os.path.join(tmp, 'out')}"], "imnn")
            frame, layout = J.read_simulations(spark, cfg)
            model = J.build_imnn(spark, cfg, layout, frame, mode)
            try:
                model.fit(λ, ϵ, patience=100, min_iterations=0, max_iterations=1)   # compile
                model = J.build_imnn(spark, cfg, layout, frame, mode)
                model._start_checked = True
                to_target = (args.to_target or name == "spark") and reached
                n = reached if to_target else args.iterations
                t = time.perf_counter()
                model.fit(λ, ϵ, patience=10 ** 6, min_iterations=0, max_iterations=n)
                s = time.perf_counter() - t
            finally:
                if hasattr(model, "release"):
                    model.release()
            per = s / n
            same = np.allclose(model.history["val_detF"][:3], first, rtol=1e-3)
            result[name] = {"iterations": n, "seconds": round(s, 2),
                            "iterations_per_s": round(1 / per, 3),
                            "seconds_per_iteration": round(per, 4),
                            "same_first_detF_as_in_memory": bool(same),
                            "seconds_to_detF_40": None if reached is None
                            else round(reached * per, 1),
                            "seconds_to_detF_40_measured": n == reached,
                            "max_detF": round(float(model.history["max_detF"]), 2)}
            if mode == "spark":
                result[name]["spark_jobs"] = model.jobs
                result[name]["barrier_jobs"] = model.barrier_jobs
        result["barrier_speedup"] = round(result["spark"]["iterations_per_s"]
                                          / result["spark_two_jobs"]["iterations_per_s"], 1)
        result["spark_overhead_s_per_iteration"] = round(
            result["spark"]["seconds_per_iteration"] - result["local"]["seconds_per_iteration"],
            4)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
