"""K-means as the quantize stage runs it (lloyd and MLlib, on the JVM's BLAS options) against
scikit-learn.

One data set (``--rows`` unit-norm clustered vectors of 384 dimensions, as sentence embeddings
are), one ``k``, the same iteration cap and tolerance for every variant; each variant runs in its
own process (a fresh JVM for MLlib, so its Java options apply):

* ``mllib``: Spark 4's defaults with no native BLAS (netlib's VectorBLAS: Spark starts its JVMs
  with the JDK's vector API), the baseline;
* ``mllib-native``: the same with a native BLAS (OpenBLAS from Debian's packages, found as
  ``libblas.so.3``; skipped, with a note, where none is installed);
* ``lloyd``: the quantize stage's default engine (``jobs.stages.quantize.kmeans_side`` with
  ``quantize.algorithm: lloyd``: k-means++ on 20,000 rows chosen by hash, then Lloyd's
  iterations as matrix products in Arrow tasks), timed from the cached arrays, so its packing
  into float32 bytes and its own cache are inside the time;
* ``sklearn-1`` and ``sklearn-2``: scikit-learn's ``KMeans`` (k-means++, Lloyd) on one and two
  BLAS/OpenMP threads.

Every variant's objective (the sum of squared distances to the nearest centre) is computed the
same way, in NumPy, from its centres; times are the fit alone (data already in memory/cached).

    python bench/kmeans.py [--rows 100000] [--k 500] [--max-iter 10] [--out FILE]
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

VARIANTS = ("mllib", "mllib-native", "lloyd", "sklearn-1", "sklearn-2")


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


def one_mllib(variant: str, work: str, k: int, max_iter: int, tol: float) -> dict:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    from jobs.io.session import build_session, native_blas
    # The baseline keeps netlib from loading a native BLAS (a library name that does not exist).
    options = "-Ddev.ludovic.netlib.blas.nativeLib=gio-spark-no-native-blas.so"
    if variant != "mllib":
        options = ""
    if variant == "mllib-native" and native_blas() is None:
        return {"variant": variant, "skipped": "no native BLAS (libblas.so.3) here"}
    init_steps = 2
    spark = build_session("kmeans-bench", "local[2]", {
        "spark.driver.extraJavaOptions": options, "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": "6g"}, quiet=True)
    jvm = spark._jvm
    spark_options = spark.conf.get("spark.driver.extraJavaOptions")
    blas = jvm.dev.ludovic.netlib.blas.JavaBLAS.getInstance().getClass().getName()
    native = jvm.dev.ludovic.netlib.blas.NativeBLAS
    try:
        native_name = native.getInstance().getClass().getName()
    except Exception:                                           # noqa: BLE001 - not loadable
        native_name = None
    df = (spark.read.parquet(os.path.join(work, "rows.parquet"))
          .select("id", array_to_vector("vec").alias("features"))
          .repartition(8, "id").sortWithinPartitions("id").cache())
    df.count()
    kmeans = KMeans(k=k, seed=7, maxIter=max_iter, tol=tol, initSteps=init_steps)
    start = time.perf_counter()
    model = kmeans.fit(df)
    seconds = time.perf_counter() - start
    centres = np.asarray(model.clusterCenters())
    iterations = int(model.summary.numIter)
    spark.stop()
    x = np.load(os.path.join(work, "rows.npy"))
    return {"variant": variant, "seconds": round(seconds, 2), "iterations":
            iterations, "init_steps": init_steps, "objective": objective(x, centres),
            "java_blas": blas, "native_blas": native_name, "java_options": spark_options}


def one_lloyd(variant: str, work: str, k: int, max_iter: int, tol: float) -> dict:
    from jobs.config import QuantizeSection
    from jobs.stages.quantize import kmeans_side
    from jobs.io.session import build_session
    spark = build_session("kmeans-bench", "local[2]", {
        "spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"}, quiet=True)
    df = (spark.read.parquet(os.path.join(work, "rows.parquet"))
          .selectExpr("id AS row_id", "vec AS embedding").cache())
    df.count()
    q = QuantizeSection(max_iter=max_iter, tol=tol, partitions=8, algorithm="lloyd")
    start = time.perf_counter()
    centroids, _, cached, iterations = kmeans_side(df, k, q, 7, "pool", print, spark)
    seconds = time.perf_counter() - start
    cached.unpersist()
    spark.stop()
    centres = np.array([c[2] for c in centroids], np.float32)
    x = np.load(os.path.join(work, "rows.npy"))
    return {"variant": variant, "seconds": round(seconds, 2), "iterations": iterations,
            "init_rows": q.init_rows, "objective": objective(x, centres)}


def one_sklearn(variant: str, work: str, k: int, max_iter: int, tol: float) -> dict:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    threads = int(variant.split("-")[1])
    x = np.load(os.path.join(work, "rows.npy"))
    with threadpool_limits(limits=threads):
        start = time.perf_counter()
        model = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, tol=tol, random_state=7,
                       algorithm="lloyd").fit(x)
        seconds = time.perf_counter() - start
    return {"variant": variant, "seconds": round(seconds, 2), "iterations": int(model.n_iter_),
            "objective": objective(x, model.cluster_centers_), "threads": threads}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "WORK"))
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.one:
        variant, work = args.one
        fn = (one_sklearn if variant.startswith("sklearn") else one_lloyd if variant == "lloyd"
              else one_mllib)
        print(json.dumps(fn(variant, work, args.k, args.max_iter, args.tol)))
        return

    import pandas as pd
    work = tempfile.mkdtemp(prefix="gio-kmeans-")
    try:
        x, _ = clustered(args.rows, 384, seed=1)
        np.save(os.path.join(work, "rows.npy"), x)
        pd.DataFrame({"id": np.arange(len(x)), "vec": list(x)}).to_parquet(
            os.path.join(work, "rows.parquet"), row_group_size=10_000)
        rows = []
        for variant in args.variants.split(","):
            row = run_child(["bench/kmeans.py", "--one", variant, work, "--k", str(args.k),
                             "--max-iter", str(args.max_iter), "--tol", str(args.tol)])
            row.update(rows=args.rows, dim=384, k=args.k, max_iter=args.max_iter,
                       cores=os.cpu_count())
            rows.append(row)
            emit(row, args.out)
        base = next((r for r in rows if r["variant"] == "mllib" and "seconds" in r), None)
        sk2 = next((r for r in rows if r["variant"] == "sklearn-2"), None)
        summary = {"summary": "seconds / mllib baseline; seconds and objective / sklearn-2"}
        for r in rows:
            if "seconds" not in r:
                continue
            summary[r["variant"]] = {
                "vs_mllib": round(r["seconds"] / base["seconds"], 2) if base else None,
                "time_vs_sklearn2": round(r["seconds"] / sk2["seconds"], 2) if sk2 else None,
                "objective_vs_sklearn2": round(r["objective"] / sk2["objective"], 4) if sk2
                else None}
        emit(summary, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
