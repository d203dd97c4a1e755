"""The quantize stage: MLlib K-means on the pool and on the target, separately.

Writes ``centroids`` (both sides, one transaction) and ``pool_assignments`` (each pool row's
cluster) under the run's ``clustering_id``. ``k`` is capped at a side's row count with a warning;
clusters that end up empty are dropped. The stage log's record of the clustering also holds
``target_bandwidth``, the median squared distance between target rows (select's ``mmd`` rule). The
pool is clustered with ``quantize.seed``, the target with ``quantize.seed + 1``, each on its rows
hash-partitioned by ``row_id`` into ``quantize.partitions`` partitions and sorted, so the same
inputs and seed give the same clusters on one machine or many, whatever the row order of the
sources. With learnt weights (see :mod:`jobs.weigh`) both sides are clustered in the weighted
space: feature a of every embedding is multiplied by the weights' ``scaled`` factor, and the
centroids select works on are in that space.
"""
from __future__ import annotations

import time

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import functions as F

from jobs import faults, reuse, tables
from jobs.config import JobConfig, auto_pool_k, row_budget
from jobs.embed import side_embeddings
from jobs.inputs import Inputs
from jobs.log import log, spark_bar, took
from jobs.weigh import apply_weights, load_weights


def kmeans_side(embeddings, k: int, qcfg, seed: int, side: str, warn=print, spark=None):
    """Fits K-means on one side's (row_id, embedding) rows (with a progress bar when ``spark``
    is given).

    Returns:
      ``(centroid rows [(side, cluster_id, centroid, size)], assignments DataFrame, cached input,
      K-means iterations run)``.
    """
    # K-means|| samples per partition, so the input's layout is part of the seed: a fixed number
    # of partitions by row_id, sorted within each, gives the same clusters on any cluster size.
    vectors = (embeddings.select("row_id", array_to_vector("embedding").alias("features"))
               .repartition(qcfg.partitions, "row_id").sortWithinPartitions("row_id"))
    vectors = vectors.persist(StorageLevel.MEMORY_AND_DISK)
    rows = vectors.count()
    faults.point(f"cached:{side}")
    if k > rows:
        warn(f"quantize {side}: k={k} is more than its {rows} rows; using k={rows}.")
        k = rows
    kmeans = KMeans(k=k, seed=seed, maxIter=qcfg.max_iter, tol=qcfg.tol,
                    distanceMeasure=qcfg.distance, initSteps=qcfg.init_steps,
                    featuresCol="features", predictionCol="cluster_id")
    if spark is None:
        model = kmeans.fit(vectors)
    else:
        with spark_bar(spark, f"quantize {side}: K-means, k={k} on {rows} rows"):
            model = kmeans.fit(vectors)
    sizes = model.summary.clusterSizes
    centres = model.clusterCenters()
    centroid_rows = [(side, i, np.asarray(centres[i], np.float32).tolist(), int(sizes[i]))
                     for i in range(len(centres)) if sizes[i] > 0]
    assignments = model.transform(vectors).select(
        "row_id", F.col("cluster_id").cast("int").alias("cluster_id"))
    return centroid_rows, assignments, vectors, int(model.summary.numIter)


def run_quantize(spark, cfg: JobConfig, plan: reuse.Plan, inputs: Inputs) -> str:
    """Clusters both sides and commits the tables, unless done already; returns the
    clustering id."""
    key, fp = plan.clustering_id, plan.quantize
    if reuse.is_done(spark, cfg.output.path, "quantize", key, fp):
        log(f"quantize: reusing clustering {key}")
        return key
    q = cfg.quantize
    pool = side_embeddings(spark, cfg, plan, inputs.pool)
    target = side_embeddings(spark, cfg, plan, inputs.target)
    if plan.weights_id is not None:
        scale = load_weights(spark, cfg, plan)
        log(f"quantize: in the space weighted by {plan.weights_id} ({int(np.sum(scale > 1e-3))} "
            f"of {len(scale)} features above 0.001 of the largest)")
        pool, target = apply_weights(pool, scale), apply_weights(target, scale)
    reuse.begin(spark, cfg.output.path, "quantize", key, fp)
    warn = lambda msg: log(f"warning: {msg}")       # noqa: E731
    pool_k = q.pool_k
    if pool_k == "auto":
        pool_k = auto_pool_k(int(inputs.pool.report["kept"]), cfg.select)
        log(f"quantize: pool_k auto: {pool_k} clusters for {inputs.pool.report['kept']} pool rows"
            + (f" and a budget of {row_budget(cfg.select, int(inputs.pool.report['kept']))}"
               if row_budget(cfg.select, int(inputs.pool.report["kept"])) else ""))
    t0 = time.perf_counter()
    pool_rows, assignments, cached, pool_iter = kmeans_side(pool, pool_k, q, q.seed, "pool", warn,
                                                            spark)
    target_rows, _, cached_t, target_iter = kmeans_side(target, q.target_k, q, q.seed + 1,
                                                        "target", warn, spark)
    log(f"quantize: {len(pool_rows)} pool clusters ({pool_iter} iterations), "
        f"{len(target_rows)} target clusters ({target_iter} iterations) in "
        f"{took(time.perf_counter() - t0)}")
    bandwidth = target_bandwidth(cached_t)
    centroids = spark.createDataFrame([(key, *r) for r in pool_rows + target_rows],
                                      tables.CENTROIDS)
    tables.replace_key(spark, centroids, cfg.output.path, "centroids", key)
    tables.replace_key(spark, assignments.withColumn("clustering_id", F.lit(key)),
                       cfg.output.path, "pool_assignments", key)
    cached.unpersist()
    cached_t.unpersist()
    reuse.record(spark, cfg.output.path, "quantize", key, fp, "done",
                 {"pool_k": pool_k, "pool_clusters": len(pool_rows),
                  "target_clusters": len(target_rows),
                  "target_bandwidth": bandwidth})
    return key


def target_bandwidth(vectors) -> float:
    """The median squared distance between target rows (at most 2,048, taken in the order of a
    hash of their row ids, so not by the source's row order): the RBF kernel's width for
    select's ``mmd`` rule. Centroids sit closer together than the rows they stand for, so the
    rule takes its width from the rows."""
    from gio_core import median_bandwidth
    from gio_core._mmd import MEDIAN_POINTS
    rows = (vectors.orderBy(F.xxhash64("row_id"), "row_id").limit(MEDIAN_POINTS)
            .select(vector_to_array("features").alias("v")).collect())
    return median_bandwidth(np.array([r["v"] for r in rows], np.float32))
