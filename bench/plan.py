"""``gio-spark plan`` against the run it plans: the demo's embedding time, estimated and taken.

On a new output folder, ``gio-spark plan --json`` with the demo's config (``conf/demo.yaml``)
and then ``gio-spark run`` with the same, each in a child process as a user runs them; the
embed stages' records (their rows and seconds) are read back from the stage log and set against
the plan's estimate for each side, with the plan's own wall time. Then ``plan`` again, which
must find every stage reused.

    python bench/plan.py [--out bench/results/plan_cpu_2cores.jsonl]
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
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"gio-spark {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench/results/plan_cpu_2cores.jsonl"))
    args = p.parse_args()
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
        sides[side] = {"rows": est["rows"], "tasks": est["tasks"],
                       "estimate_s": round(est["seconds"], 1),
                       "took_s": round(took[side]["seconds"], 1),
                       "ratio": round(est["seconds"] / took[side]["seconds"], 2)}
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
        "reused_after": sorted(s["stage"] for s in again["stages"] if s["action"] == "reuse"),
        "run_after": sorted(s["stage"] for s in again["stages"] if s["action"] == "run"),
        "text": text}, args.out)


if __name__ == "__main__":
    main()
