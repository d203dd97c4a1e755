"""``gio-spark plan`` against the run it plans: the demo's embedding time and driver memory, and a larger
precomputed pool's driver memory, estimated and then taken or used.

``demo``: on a new output folder, ``gio-spark plan --json`` with the demo's config
(``conf/demo.yaml``) and then ``gio-spark run`` with the same, each in a child process as a
user runs them (so JAX starts in the run's select stage, as it does for a user); the embed
stages' records (their rows and seconds) are read back from the stage log and set against the
plan's estimate for each side, with the plan's own wall time, and the select stage's driver
memory against the plan's. Then ``plan`` again, which
must find every stage reused.

``precomputed``: 50,000 pool rows and 5,000 target rows of unit-length 384-D vectors (Parquet,
an ``embedding_column``), ``pool_k: auto`` with a budget of 1,000 rows (5,000 clusters), the
same two commands; the driver memory the plan gives for each phase (the select stage, the row
step; the first to run also holds JAX's runtime and compiled code, which the plan measures in a
child process) against the growth of the driver process's resident memory that each phase measured
(``runs.timings`` and explode's record: the peak during the phase over its start, sampled
every 20 ms).

    python bench/plan.py [--case demo|precomputed|both] [--out bench/results/plan_cpu_2cores.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import emit  # noqa: E402


def gio(*args: str) -> tuple[str, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GIO_SPARK_JVM_CACHE="off")  # no archive written
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"gio-spark {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, seconds


def precomputed(out_file: str) -> None:
    import numpy as np
    import pandas as pd

    from bench._common import clustered
    folder = tempfile.mkdtemp(prefix="gio-bench-plan-")
    for side, rows, seed in (("pool", 50_000, 1), ("target", 5_000, 2)):
        x, _ = clustered(rows, 384, seed, components=60)
        pd.DataFrame({"id": [f"{side[0]}{i}" for i in range(rows)],
                      "vec": list(x.astype(np.float32))}).to_parquet(f"{folder}/{side}.parquet")
    out = os.path.join(folder, "out")
    sets = []
    for side in ("pool", "target"):
        sets += [f"{side}.path={folder}/{side}.parquet", f"{side}.format=parquet",
                 f"{side}.embedding_column=vec", f"{side}.id_column=id"]
    sets += ["quantize.pool_k=auto", "select.max_rows=1000", "quantize.max_iter=10",
             f"output.path={out}"]
    common = [a for item in sets for a in ("--set", item)]
    text, _ = gio("plan", *common)
    print(text)
    plan = json.loads(gio("plan", "--json", *common)[0])
    _, run_s = gio("run", *common)

    from jobs.io import tables
    from jobs.io.session import build_session
    from jobs.state import stagelog
    spark = build_session("bench-plan", "local[1]", quiet=True)
    timings = json.loads(tables.read_key(spark, out, "runs", plan["run_id"]).first()["timings"])
    step = json.loads(stagelog.latest(spark, out, "explode", plan["run_id"])["detail"])["row_step"]
    spark.stop()
    used = {"select": timings["driver_peak_mib"], "row step": step["driver_peak_mib"]}
    phases = _phases(plan, used)
    emit({"case": "precomputed", "pool_rows": 50_000, "target_rows": 5_000, "dim": 384,
          "budget": 1000, "pool_k": plan["clusters"]["pool_k"],
          "target_k": plan["clusters"]["target_k"], "run_s": round(run_s, 1),
          "phases": phases, "candidate_rows": step.get("candidate_rows"),
          "target_rows_matched": step.get("target_rows"), "text": text}, out_file)


def _phases(plan: dict, used: dict) -> dict:
    """Each phase's planned MiB (of which JAX's runtime, measured by the plan's probe) against
    the MiB the run's phase measured."""
    phases = {}
    for phase, terms in plan["driver"]["phases"].items():
        planned = sum(terms.values()) / 2 ** 20
        phases[phase] = {"planned_mib": round(planned, 1),
                         "runtime_mib": round(terms.get("runtime", 0) / 2 ** 20, 1),
                         "used_mib": used.get(phase),
                         "ratio": round(planned / used[phase], 2) if used.get(phase) else None}
    return phases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("demo", "precomputed", "both"), default="both")
    p.add_argument("--out", default=str(ROOT / "bench/results/plan_cpu_2cores.jsonl"))
    args = p.parse_args()
    if args.case in ("precomputed", "both"):
        precomputed(args.out)
    if args.case in ("demo", "both"):
        demo(args.out)


def demo(out_file: str) -> None:
    out = os.path.join(tempfile.mkdtemp(prefix="gio-bench-plan-"), "out")
    common = ["--config", "conf/demo.yaml", "--set", f"output.path={out}"]
    text, _ = gio("plan", *common)                    # what a user reads (docs/pipeline.md)
    print(text)
    printed, plan_s = gio("plan", "--json", *common)
    plan = json.loads(printed)
    _, run_s = gio("run", *common)
    again = json.loads(gio("plan", "--json", *common)[0])

    from jobs.io.session import build_session
    from jobs.state import stagelog
    spark = build_session("bench-plan", "local[1]", quiet=True)
    took = {}
    for st in plan["stages"]:
        if st["stage"].startswith("embed_"):
            record = stagelog.latest(spark, out, st["stage"], st["key"])
            took[st["stage"].removeprefix("embed_")] = json.loads(record["detail"])
    spark.stop()
    sides = {}
    for side, est in plan["embedding"]["sides"].items():
        if not est["missing"]:                  # its texts are the pool's: nothing embedded
            continue
        sides[side] = {"rows": est["rows"], "texts": est["missing"], "tasks": est["tasks"],
                       "estimate_s": round(est["seconds"], 1),
                       "took_s": round(took[side]["seconds"], 1),
                       "ratio": round(est["seconds"] / took[side]["seconds"], 2)}
    used = _used(out, plan["run_id"])
    estimate = plan["embedding"]["seconds"]
    actual = sum(t["seconds"] for t in took.values())
    emit({
        "case": "demo", "config": "conf/demo.yaml", "cores": os.cpu_count(),
        "sample_rows": plan["embedding"]["sample_rows"],
        "rate_per_task": round(plan["embedding"]["rate"], 1),
        "load_s": round(plan["embedding"]["load_seconds"], 1),
        "slots": plan["embedding"]["slots"], "plan_s": round(plan_s, 1),
        "run_s": round(run_s, 1), "sides": sides, "estimate_s": round(estimate, 1),
        "took_s": round(actual, 1), "ratio": round(estimate / actual, 2),
        "pool_k": plan["clusters"]["pool_k"],
        "driver_need_mib": round(plan["driver"]["need_bytes"] / 2 ** 20, 1),
        "driver_used_mib": max((v for v in used.values() if v is not None), default=None),
        "phases": _phases(plan, used),
        "reused_after": sorted(s["stage"] for s in again["stages"] if s["action"] == "reuse"),
        "run_after": sorted(s["stage"] for s in again["stages"] if s["action"] == "run"),
        "text": text}, out_file)


def _used(out: str, run_id: str) -> dict:
    """The driver's growth the run measured in select (``runs.timings``) and, where explode
    ran the row step (the demo has no row budget: ``select.own_size: auto`` sizes it there),
    in the row step (explode's record)."""
    from jobs.io import tables
    from jobs.io.session import build_session
    from jobs.state import stagelog
    spark = build_session("bench-plan", "local[1]", quiet=True)
    try:
        row = tables.read_key(spark, out, "runs", run_id).first()
        used = {"select": json.loads(row["timings"]).get("driver_peak_mib")}
        step = json.loads(stagelog.latest(spark, out, "explode", run_id)["detail"])["row_step"]
        if step:
            used["row step"] = step["driver_peak_mib"]
        return used
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
