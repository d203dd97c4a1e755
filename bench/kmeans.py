"""K-means: the quantize stage and its in-memory numerics against scikit-learn and faiss, and
against the same code at a baseline commit, like for like.

One data set (``--rows`` unit-norm clustered vectors of ``--dim`` dimensions, default 384 as
sentence embeddings are), one ``k``, exactly ``--max-iter`` iterations for every variant
(tolerance 0; scikit-learn may still stop early when no label changes, and says how many it
ran), two threads or Spark's ``local[2]``, each variant in a process of its own:

* ``sklearn-2``: scikit-learn's ``KMeans`` (Lloyd), 2 BLAS/OpenMP threads, from the common start;
* ``faiss-2``: faiss's ``Kmeans`` on 2 OpenMP threads from the common start (its default of at
  most 256 training rows per centroid, which at 100,000 rows and k = 500 is every row);
* ``core``: ``gio_core.kmeans.lloyd`` in memory from the common start (the numerics the
  quantize stage runs, without Spark), 2 threads of blocks (a baseline without them: 2 BLAS
  threads);
* ``stage``: the quantize stage's K-means (``jobs.stages.quantize.kmeans_side``, the ``lloyd``
  engine, its defaults: fitted on at most ``quantize.rows_per_cluster`` rows a cluster, on the
  driver up to ``quantize.driver_rows``, then every row assigned), from the rows cached in Spark:
  collecting and laying out the rows, its own start (k-means++ on ``quantize.init_rows`` rows
  chosen by hash, 10,000 at k = 500; timed apart as ``start_seconds``) and the assignment pass
  are inside its time;
* ``stage-tasks``: the same with ``quantize.driver_rows: 1``, one Spark job per iteration;
* ``core@BASE``, ``stage@BASE``: ``core`` and ``stage`` on the code of ``--baseline`` (a commit,
  checked out with ``git worktree`` for the run);
* ``mllib`` (not run unless named): MLlib's ``KMeans``, k-means|| start.

The common start is scikit-learn's k-means++ on the first 20,000 rows (the rows are in random
order), seeded, timed on its own (the ``start`` line). Every variant's objective, the sum of
squared distances to the nearest centre, is computed the same way, in NumPy, from its centres.

    python bench/kmeans.py [--rows 100000] [--dim 384] [--k 500] [--max-iter 10] [--baseline REF] [--out F]
"""
from __future__ import annotations

import argparse
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
# A baseline variant's child imports gio_core and jobs from the baseline's tree.
sys.path.insert(0, os.environ.get("GIO_BENCH_TREE", str(ROOT)))
from bench._common import clustered, emit  # noqa: E402

VARIANTS = ("sklearn-2", "faiss-2", "core", "stage", "stage-tasks", "core@BASE", "stage@BASE")
INIT_ROWS = 20_000


def objective(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> float:
    """Sum over the rows of the squared distance to the nearest centre (float64)."""
    c = centres.astype(np.float64)
    c2 = (c * c).sum(axis=1)
    total = 0.0
    for lo in range(0, len(x), chunk):
        part = x[lo:lo + chunk].astype(np.float64)
        d2 = (part * part).sum(axis=1)[:, None] - 2.0 * part @ c.T + c2[None, :]
        total += float(np.maximum(d2.min(axis=1), 0.0).sum())
    return total


def _arrays(work: str):
    return np.load(os.path.join(work, "rows.npy")), np.load(os.path.join(work, "start.npy"))


def one_sklearn(work: str, k: int, max_iter: int) -> dict:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    x, start = _arrays(work)
    with threadpool_limits(limits=2):
        began = time.perf_counter()
        model = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, tol=0.0,
                       algorithm="lloyd").fit(x)
        seconds = time.perf_counter() - began
    return {"seconds": round(seconds, 3), "iterations": int(model.n_iter_), "threads": 2,
            "objective": objective(x, model.cluster_centers_)}


def one_faiss(work: str, k: int, max_iter: int) -> dict:
    import faiss
    faiss.omp_set_num_threads(2)
    x, start = _arrays(work)
    model = faiss.Kmeans(x.shape[1], k, niter=max_iter, seed=7)
    began = time.perf_counter()
    model.train(x, init_centroids=start)
    seconds = time.perf_counter() - began
    return {"seconds": round(seconds, 3), "iterations": max_iter, "threads": 2,
            "max_points_per_centroid": model.cp.max_points_per_centroid,
            "faiss": faiss.__version__, "objective": objective(x, model.centroids)}


def one_core(work: str, k: int, max_iter: int) -> dict:
    import inspect

    from gio_core.kmeans import lloyd
    x, start = _arrays(work)
    # 2 threads of blocks; a baseline without them runs its matrix products on 2 BLAS threads
    threads = {"threads": 2} if "threads" in inspect.signature(lloyd).parameters else {}
    began = time.perf_counter()
    fit = lloyd(x, start, max_iter=max_iter, tol=0.0, **threads)
    seconds = time.perf_counter() - began
    return {"seconds": round(seconds, 3), "iterations": fit.iterations,
            "objective": objective(x, fit.centres)}


def one_stage(work: str, k: int, max_iter: int, driver_rows: int | None) -> dict:
    import gio_core.kmeans as numerics
    from jobs.config import QuantizeSection
    from jobs.io.session import build_session
    from jobs.stages.quantize import kmeans_side
    spark = build_session("kmeans-bench", "local[2]", {
        "spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"}, quiet=True)
    df = (spark.read.parquet(os.path.join(work, "rows.parquet"))
          .selectExpr("id AS row_id", "vec AS embedding").cache())
    df.count()
    options = {"max_iter": max_iter, "tol": 0.0, "partitions": 8, "algorithm": "lloyd"}
    if driver_rows is not None:
        options["driver_rows"] = driver_rows
    q = QuantizeSection(**options)
    seeded = numerics.seed_centres
    start_seconds = []

    def timed_start(*args, **kwargs):
        began = time.perf_counter()
        out = seeded(*args, **kwargs)
        start_seconds.append(time.perf_counter() - began)
        return out

    numerics.seed_centres = timed_start
    began = time.perf_counter()
    centroids, assignments, cached, iterations = kmeans_side(df, k, q, 7, "pool", print, spark)
    assignments.count()             # the stage writes them: every row's assignment is inside
    seconds = time.perf_counter() - began
    assignments.unpersist()
    cached.unpersist()
    spark.stop()
    centres = np.array([c[2] for c in centroids], np.float32)
    x = np.load(os.path.join(work, "rows.npy"))
    return {"seconds": round(seconds, 3), "iterations": iterations,
            "start_seconds": round(sum(start_seconds), 2),
            "fitted_rows": _fitted(len(x), k, getattr(q, "rows_per_cluster", None)),
            "driver_rows": q.driver_rows, "objective": objective(x, centres)}


def _fitted(rows: int, k: int, per_cluster: int | None) -> int:
    """The rows the stage fits its centres on (the baseline has no rows_per_cluster: all)."""
    return rows if per_cluster is None else min(rows, per_cluster * k)


def one_mllib(work: str, k: int, max_iter: int) -> dict:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    from jobs.io.session import build_session
    spark = build_session("kmeans-bench", "local[2]", {
        "spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"}, quiet=True)
    df = (spark.read.parquet(os.path.join(work, "rows.parquet"))
          .select("id", array_to_vector("vec").alias("features"))
          .repartition(8, "id").sortWithinPartitions("id").cache())
    df.count()
    began = time.perf_counter()
    model = KMeans(k=k, seed=7, maxIter=max_iter, tol=0.0, initSteps=2).fit(df)
    seconds = time.perf_counter() - began
    centres = np.asarray(model.clusterCenters())
    iterations = int(model.summary.numIter)
    spark.stop()
    x = np.load(os.path.join(work, "rows.npy"))
    return {"seconds": round(seconds, 3), "iterations": iterations,
            "objective": objective(x, centres)}


def one(variant: str, work: str, k: int, max_iter: int) -> dict:
    name = variant.split("@")[0]
    if name == "sklearn-2":
        return one_sklearn(work, k, max_iter)
    if name == "faiss-2":
        return one_faiss(work, k, max_iter)
    if name == "core":
        return one_core(work, k, max_iter)
    if name in ("stage", "stage-tasks"):
        return one_stage(work, k, max_iter, 1 if name == "stage-tasks" else None)
    if name == "mllib":
        return one_mllib(work, k, max_iter)
    raise SystemExit(f"unknown variant {variant!r}")


def child(variant: str, work: str, k: int, max_iter: int, tree: str) -> dict:
    env = dict(os.environ, GIO_BENCH_TREE=tree, PYTHONPATH=tree)
    # cwd: Spark's Python workers (python -m pyspark.daemon) put it first on their path, so a
    # baseline's tasks import the baseline's code, not this tree's
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kmeans.py"), "--one", variant,
                           work, "--k", str(k), "--max-iter", str(max_iter)],
                          capture_output=True, text=True, env=env, timeout=3600, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _git(*args: str, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, text=True, capture_output=True,
                          check=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--baseline", default="1dbfa74",
                        help="the commit the @BASE variants run (the code before this change)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "WORK"))
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.k, args.max_iter)))
        return

    import pandas as pd
    from sklearn.cluster import kmeans_plusplus
    work = tempfile.mkdtemp(prefix="gio-kmeans-")
    variants = args.variants.split(",")
    base_tree = os.path.join(work, "baseline")
    try:
        x, _ = clustered(args.rows, args.dim, seed=1)
        np.save(os.path.join(work, "rows.npy"), x)
        pd.DataFrame({"id": np.arange(len(x)), "vec": list(x)}).to_parquet(
            os.path.join(work, "rows.parquet"), row_group_size=10_000)
        began = time.perf_counter()
        start, _ = kmeans_plusplus(x[:INIT_ROWS].astype(np.float64), args.k,
                                   random_state=np.random.RandomState(7))
        np.save(os.path.join(work, "start.npy"), start.astype(np.float32))
        common = {"rows": args.rows, "dim": args.dim, "k": args.k, "max_iter": args.max_iter,
                  "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                  "commit": _git("rev-parse", "--short", "HEAD")}
        emit({"variant": "start", "seconds": round(time.perf_counter() - began, 2),
              "init_rows": INIT_ROWS, **common}, args.out)
        if any(v.endswith("@BASE") for v in variants):
            subprocess.run(["git", "worktree", "add", "--detach", base_tree, args.baseline],
                           cwd=ROOT, check=True, capture_output=True)
        rows = []
        for variant in variants:
            tree = base_tree if variant.endswith("@BASE") else str(ROOT)
            row = {"variant": variant.replace("@BASE", "@" + args.baseline),
                   **child(variant, work, args.k, args.max_iter, tree), **common}
            rows.append(row)
            emit(row, args.out)
        by = {r["variant"]: r for r in rows}
        sk, fs = by.get("sklearn-2"), by.get("faiss-2")
        summary = {"summary": "seconds / faiss-2 and / sklearn-2; objective / sklearn-2",
                   **common}
        for r in rows:
            summary[r["variant"]] = {
                "time_vs_faiss2": round(r["seconds"] / max(fs["seconds"], 1e-3), 2) if fs
                else None,
                "time_vs_sklearn2": round(r["seconds"] / max(sk["seconds"], 1e-3), 2) if sk
                else None,
                "objective_vs_sklearn2": round(r["objective"] / sk["objective"], 4) if sk
                else None}
        emit(summary, args.out)
    finally:
        if os.path.isdir(base_tree):
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
