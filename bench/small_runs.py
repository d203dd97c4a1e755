"""How long a small run takes, from the command line and in a notebook's session, against the
same runs on an earlier commit (the baseline), in one run on the same data and cores.

1,000 pool rows and 200 target rows of precomputed 64-D vectors (Parquet), `conf/demo.yaml`
with those sides, `local[2]`. For each tree (the baseline, checked out with `git worktree`,
then this one), each on its own output path:

- ``cli_cold``: ``gio-spark run`` on a new output (a new JVM, every stage computed), with an
  empty JAX compilation cache and no JVM class archive (``$GIO_SPARK_JAX_CACHE`` and
  ``$GIO_SPARK_JVM_CACHE`` set to new folders for each tree);
- ``cli_warm``: the same with ``select.k=4`` (a new JVM; quantize reused, select and explode
  computed), as a user trying an option does; a tree that has the class archive writes it as
  this second command's JVM exits, within the time measured;
- ``cli_again``: ``cli_cold``'s run on another new output, the caches as the runs before left
  them (a user's next try on new data: every stage computed, JAX's programs loaded, the JVM's
  classes mapped from the archive);
- ``cli_rerun``: ``cli_warm``'s change on that output (quantize reused; every cache full);
- ``api_cold`` / ``api_warm`` / ``api_seed``: the first run and re-runs with ``select.k=4``
  (new shapes: JAX compiles again) and then ``select.seed=1`` (a new option, the same shapes)
  through ``jobs.select_rows`` in one Python process whose session is already up (a
  notebook), after ``session_s`` to start it. A process of the user's own: no JAX cache and
  no class archive;
- ``api_later``: eight more re-runs in that session, each with a new ``select.seed`` (a
  notebook's later tries, once the JVM has compiled more of Spark's and Delta's code): the
  median of the last four (``api_later_each`` holds all eight).

Each run's Delta commits are counted (the ``_delta_log`` JSON files it added).

    python bench/small_runs.py [--baseline REF] [--rows 1000]
                               [--out bench/results/small_runs_cpu_2cores.jsonl]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import clustered, emit  # noqa: E402

API = """
import json, statistics, sys, time
t0 = time.perf_counter()
from jobs import api
from jobs.io.session import build_session
spark = build_session("small-runs", "local[2]", {})
found = {"session_s": round(time.perf_counter() - t0, 2)}
work, out = sys.argv[1], sys.argv[2]
for name, settings in (("api_cold", {}), ("api_warm", {"select.k": 4}),
                       ("api_seed", {"select.k": 4, "select.seed": 1})):
    t = time.perf_counter()
    rows = api.select_rows(f"{work}/pool.parquet", f"{work}/target.parquet", output=out,
                           embedding_column="vec", id_column="id",
                           config=sys.argv[3], settings=settings).count()
    found[name] = round(time.perf_counter() - t, 2)
    found[name + "_rows"] = rows
    print("DONE " + name, flush=True)
    input()                       # the parent counts the commits, then says go on
later = []                        # a notebook's eight later tries: a new seed each time
for seed in range(2, 10):
    t = time.perf_counter()
    api.select_rows(f"{work}/pool.parquet", f"{work}/target.parquet", output=out,
                    embedding_column="vec", id_column="id", config=sys.argv[3],
                    settings={"select.k": 4, "select.seed": seed}).count()
    later.append(round(time.perf_counter() - t, 2))
found["api_later_each"] = later
found["api_later"] = round(statistics.median(later[-4:]), 2)
print("RESULT " + json.dumps(found), flush=True)
"""


def commits(out: str) -> int:
    return len(glob.glob(os.path.join(out, "*", "_delta_log", "*.json")))


def clean_env(tree: str, cache: str) -> dict:
    """The environment of a run: the tree's code, a JAX cache and a JVM class archive folder
    of its own, none inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    return dict(env, PYTHONPATH=tree, GIO_SPARK_JAX_CACHE=cache,
                GIO_SPARK_JVM_CACHE=cache + "-jvm")


def cli(tree: str, work: str, out: str, cache: str, *extra: str) -> float:
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config",
            os.path.join(tree, "conf", "demo.yaml"), "--set", f"output.path={out}",
            "--set", "spark.master=local[2]"]
    for side in ("pool", "target"):
        for key, value in (("format", "parquet"), ("path", f"{work}/{side}.parquet"),
                           ("id_column", "id"), ("embedding_column", "vec")):
            argv += ["--set", f"{side}.{key}={value}"]
    for item in extra:
        argv += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True,
                          env=clean_env(tree, cache))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return round(time.perf_counter() - start, 2)


def api_runs(tree: str, work: str, out: str, cache: str) -> dict:
    config = os.path.join(work, "api.yaml")
    with open(config, "w") as f:            # the demo config's settings, sides given as paths
        f.write(open(os.path.join(tree, "conf", "demo.yaml")).read())
    proc = subprocess.Popen([sys.executable, "-c", API, work, out, config], cwd=tree,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=clean_env(tree, cache))
    counted = {}
    for line in proc.stdout:
        if line.startswith("DONE "):
            counted[line.split()[1] + "_commits"] = commits(out) - sum(counted.values())
            proc.stdin.write("\n")
            proc.stdin.flush()
        elif line.startswith("RESULT "):
            found = json.loads(line[len("RESULT "):])
            proc.wait()
            return {**found, **counted}
    raise RuntimeError(f"the API run ended with {proc.wait()}")


def measure(tree: str, work: str) -> dict:
    cache = tempfile.mkdtemp(prefix="small-cache-")
    out = tempfile.mkdtemp(prefix="small-cli-")
    found = {"cli_cold": cli(tree, work, out, cache)}
    found["cli_cold_commits"] = commits(out)
    found["cli_warm"] = cli(tree, work, out, cache, "select.k=4")
    found["cli_warm_commits"] = commits(out) - found["cli_cold_commits"]
    shutil.rmtree(out, ignore_errors=True)
    out = tempfile.mkdtemp(prefix="small-cli-")
    found["cli_again"] = cli(tree, work, out, cache)
    found["cli_again_commits"] = commits(out)
    found["cli_rerun"] = cli(tree, work, out, cache, "select.k=4")
    found["cli_rerun_commits"] = commits(out) - found["cli_again_commits"]
    shutil.rmtree(out, ignore_errors=True)
    out = tempfile.mkdtemp(prefix="small-api-")
    shutil.rmtree(out)
    found.update(api_runs(tree, work, out, cache))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(cache + "-jvm", ignore_errors=True)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="b1d63e5",
                        help="the commit to compare with (default: the tree before the JVM's "
                             "class archive; 1dbfa74 and 02cd3bb are the ones before the "
                             "earlier rounds)")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--out")
    args = parser.parse_args()
    import pandas as pd

    work = tempfile.mkdtemp(prefix="small-runs-")
    weights = np.zeros(50)
    weights[[3, 11, 19]] = [0.5, 0.3, 0.2]
    pool, _ = clustered(args.rows, 64, seed=1)
    target, _ = clustered(200, 64, seed=2, weights=weights)
    pd.DataFrame({"id": np.arange(len(pool)), "vec": list(pool)}).to_parquet(f"{work}/pool.parquet")
    pd.DataFrame({"id": np.arange(len(target)), "vec": list(target)}).to_parquet(
        f"{work}/target.parquet")
    base = os.path.join(work, "baseline")
    subprocess.run(["git", "worktree", "add", "--detach", base, args.baseline], cwd=ROOT,
                   check=True, capture_output=True)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base, text=True,
                         capture_output=True, check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True, check=True).stdout.strip()
    try:
        baseline = measure(base, work)
        now = measure(str(ROOT), work)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base], cwd=ROOT,
                       capture_output=True)
    ratios = {k: round(now[k] / baseline[k], 2) for k in
              ("cli_cold", "cli_warm", "cli_again", "cli_rerun", "api_cold", "api_warm",
               "api_seed", "api_later")}
    emit({"bench": "small_runs", "date": time.strftime("%Y-%m-%d"), "rows": args.rows,
          "cores": 2, "baseline_commit": sha, "commit": head, "baseline": baseline,
          "now": now, "now_over_baseline": ratios}, args.out)


if __name__ == "__main__":
    main()
