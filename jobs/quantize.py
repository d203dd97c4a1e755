"""The quantize stage: MLlib K-means on the pool and on the target, separately.

Writes ``centroids`` (both sides, one transaction) and ``pool_assignments`` (each pool row's
cluster). ``k`` is capped at a side's row count with a warning; clusters that end up empty are
dropped. The pool is clustered with ``quantize.seed``, the target with ``quantize.seed + 1``, each
on its rows hash-partitioned by ``row_id`` into ``quantize.partitions`` partitions and sorted, so
the same inputs and seed give the same clusters on one machine or many.
"""
from __future__ import annotations

import os

import numpy as np


def kmeans_side(embeddings, k: int, qcfg, seed: int, side: str, warn=print):
    """Fits K-means on one side's (row_id, embedding) rows.

    Returns:
      ``(centroid rows [(side, cluster_id, centroid, size)], assignments DataFrame, model)``.
    """
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark import StorageLevel

    # K-means|| samples per partition, so the input's layout is part of the seed: a fixed number
    # of partitions by row_id, sorted within each, gives the same clusters on any cluster size.
    vectors = (embeddings.select("row_id", array_to_vector("embedding").alias("features"))
               .repartition(qcfg.partitions, "row_id").sortWithinPartitions("row_id"))
    vectors = vectors.persist(StorageLevel.MEMORY_AND_DISK)
    rows = vectors.count()
    if k > rows:
        warn(f"quantize {side}: k={k} is more than its {rows} rows; using k={rows}.")
        k = rows
    model = KMeans(k=k, seed=seed, maxIter=qcfg.max_iter, tol=qcfg.tol,
                   distanceMeasure=qcfg.distance, initSteps=qcfg.init_steps,
                   featuresCol="features", predictionCol="cluster_id").fit(vectors)
    sizes = model.summary.clusterSizes
    centres = model.clusterCenters()
    centroid_rows = [(side, i, np.asarray(centres[i], np.float32).tolist(), int(sizes[i]))
                     for i in range(len(centres)) if sizes[i] > 0]
    assignments = model.transform(vectors).select(
        "row_id", F.col("cluster_id").cast("int").alias("cluster_id"))
    return centroid_rows, assignments, vectors


def quantize_fingerprint(spark, cfg) -> str:
    from jobs import runner
    from jobs.embed import embed_fingerprint
    return runner.fingerprint("quantize", embed_fingerprint(spark, cfg, "pool"),
                              embed_fingerprint(spark, cfg, "target"), vars(cfg.quantize))


def run_quantize(spark, cfg, pool_embeddings=None, target_embeddings=None) -> None:
    """Clusters both sides and writes the tables, unless done already for the same inputs."""
    from jobs import runner, tables
    from jobs.embed import side_embeddings

    fp = quantize_fingerprint(spark, cfg)
    if runner.stage_done(spark, cfg, "quantize", fp, "centroids", "pool_assignments"):
        runner.log("quantize: reusing centroids and assignments")
        return
    q = cfg.quantize
    pool = pool_embeddings if pool_embeddings is not None else side_embeddings(spark, cfg, "pool")
    target = (target_embeddings if target_embeddings is not None
              else side_embeddings(spark, cfg, "target"))
    warn = lambda msg: runner.log(f"warning: {msg}")       # noqa: E731
    pool_rows, assignments, cached = kmeans_side(pool, q.pool_k, q, q.seed, "pool", warn)
    target_rows, _, cached_t = kmeans_side(target, q.target_k, q, q.seed + 1, "target", warn)
    runner.log(f"quantize: {len(pool_rows)} pool clusters, {len(target_rows)} target clusters")
    centroids = spark.createDataFrame(pool_rows + target_rows, tables.CENTROIDS)
    tables.overwrite(spark, centroids, tables.table_path(cfg.output.path, "centroids"))
    tables.overwrite(spark, tables.conform(assignments, tables.ASSIGNMENTS),
                     tables.table_path(cfg.output.path, "pool_assignments"))
    cached.unpersist()
    cached_t.unpersist()
    runner.record_stage(spark, cfg, "quantize", fp)


def main(argv=None) -> int:
    from jobs import runner

    def body(spark, cfg):
        from jobs.pipeline import validate_inputs
        validate_inputs(spark, cfg)
        run_quantize(spark, cfg)

    return runner.run_main("gio-spark quantize: K-means on pool and target", body, argv)


if __name__ == "__main__":
    if __package__ in (None, ""):       # spark-submit jobs/quantize.py: import from the checkout
        import sys
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.quantize import main as _main
    raise SystemExit(_main())
