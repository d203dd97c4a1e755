"""The quantize stage's lloyd engine on a real local Spark: the in-memory oracle's clusters,
whatever the row order, and MLlib's engine still selectable."""
import numpy as np
import pytest

from gio_core import kmeans as km
from jobs.config import QuantizeSection
from jobs.stages.quantize import _packed, init_sample, kmeans_side


def blobs(n=1500, d=16, centres=9, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 4
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


def frame(spark, x, order, parts):
    rows = [(int(i) * 7 + 3, x[i].tolist()) for i in order]
    return spark.createDataFrame(rows, "row_id long, embedding array<float>").repartition(parts)


def fit(spark, df, **kw):
    q = QuantizeSection(**{"max_iter": 30, "partitions": 4, "init_rows": 400, **kw})
    warned = []
    centroids, assignments, cached, iters = kmeans_side(df, 9, q, 11, "pool", warned.append, spark)
    got = dict(assignments.collect())
    assignments.unpersist()
    cached.unpersist()
    return centroids, got, iters, warned


@pytest.mark.parametrize("driver_rows", [1, 20000], ids=["spark tasks", "on the driver"])
def test_lloyd_in_spark_is_the_in_memory_lloyd_and_ignores_row_order(spark, driver_rows):
    x = blobs()
    centroids, labels, iters, warned = fit(spark, frame(spark, x, range(len(x)), 3),
                                           driver_rows=driver_rows)
    # The oracle from the same start: the stage's sample, k-means++ and Lloyd in memory.
    q = QuantizeSection(partitions=4)
    sample = init_sample(_packed(frame(spark, x, range(len(x)), 3), 4, "euclidean"), 400, 11)
    assert sample.shape == (400, 16)
    oracle = km.lloyd(x, km.seed_centres(sample, 9, 11), max_iter=30, tol=q.tol)
    assert iters == oracle.iterations and not warned
    got = np.array([c[2] for c in sorted(centroids, key=lambda c: c[1])], np.float32)
    np.testing.assert_allclose(got, oracle.centres[oracle.sizes > 0], atol=1e-5)
    assert [c[3] for c in sorted(centroids, key=lambda c: c[1])] == \
        oracle.sizes[oracle.sizes > 0].tolist()
    assert all(labels[i * 7 + 3] == oracle.labels[i] for i in range(len(x)))
    # Another row order and layout: the same clusters to the last bit.
    shuffled = np.random.default_rng(5).permutation(len(x))
    again, labels2, _, _ = fit(spark, frame(spark, x, shuffled, 5), driver_rows=driver_rows)
    assert sorted(again, key=lambda c: c[1]) == sorted(centroids, key=lambda c: c[1])
    assert labels2 == labels


def test_k_above_the_rows_is_capped_with_a_warning_and_mllib_still_runs(spark):
    x = blobs(30, centres=3)
    for algorithm, driver_rows in (("lloyd", 1), ("lloyd", 100), ("mllib", 1)):
        q = QuantizeSection(max_iter=5, partitions=2, algorithm=algorithm,
                            driver_rows=driver_rows)
        warned = []
        centroids, assignments, cached, _ = kmeans_side(frame(spark, x, range(30), 2), 50, q, 1,
                                                        "target", warned.append, spark)
        assert warned == ["quantize target: k=50 is more than its 30 rows; using k=30."]
        assert sum(c[3] for c in centroids) == 30 and assignments.count() == 30
        assignments.unpersist()
        cached.unpersist()


def test_the_driver_path_makes_its_assignments_from_arrow_whatever_the_session_says(spark):
    """The driver may hold millions of assignments: they go to Spark as an Arrow table even
    where the session has Arrow's pandas conversion off (a notebook's default)."""
    x = blobs(300)
    key = "spark.sql.execution.arrow.pyspark.enabled"
    before = spark.conf.get(key, None)
    spark.conf.set(key, "false")
    try:
        centroids, labels, _, _ = fit(spark, frame(spark, x, range(300), 2), driver_rows=10**6)
    finally:
        spark.conf.unset(key) if before is None else spark.conf.set(key, before)
    again, labels2, _, _ = fit(spark, frame(spark, x, range(300), 2), driver_rows=1)
    assert labels == labels2 and len(labels) == 300
    assert sorted(centroids, key=lambda c: c[1]) == sorted(again, key=lambda c: c[1])


def test_cosine_clusters_on_the_sphere(spark):
    x = blobs(600)
    centroids, labels, _, _ = fit(spark, frame(spark, x, range(600), 2), distance="cosine",
                                  driver_rows=1)
    c = np.array([r[2] for r in centroids])
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    ids = np.array([r[1] for r in centroids])
    xn = km.normalise(x)
    assert all(labels[i * 7 + 3] == ids[(xn[i] @ c.T).argmax()] for i in range(600))


def test_fitted_on_the_rows_first_by_hash_then_every_row_assigned(spark):
    """quantize.rows_per_cluster: 50 x 9 clusters = 450 of 1,500 rows fit the centres, the same
    ones and the same centres whatever the row order and wherever they are fitted (every row on
    the driver; the 450 collected to the driver; Spark tasks); every row then goes to its
    nearest final centre."""
    from pyspark.sql import functions as F

    from jobs.common.frames import seeded_order
    x = blobs()
    df = frame(spark, x, range(len(x)), 3)
    on_driver = fit(spark, df, rows_per_cluster=50)
    in_tasks = fit(spark, df, rows_per_cluster=50, driver_rows=1)
    collected = fit(spark, df, rows_per_cluster=50, driver_rows=1000)
    shuffled = fit(spark, frame(spark, x, np.random.default_rng(5).permutation(len(x)), 5),
                   rows_per_cluster=50, driver_rows=1)
    centroids, labels, iters, warned = on_driver
    assert not warned and in_tasks == on_driver == collected == shuffled
    # The oracle: the 450 rows first in the seeded order, in the packed layout, Lloyd in memory.
    packed = _packed(df, 4, "euclidean")
    first = {r["row_id"] for r in seeded_order(packed, 11).limit(450).select("row_id").collect()}
    laid = packed.select("row_id", F.spark_partition_id().alias("part")).collect()
    kept = [r for r in laid if r["row_id"] in first]
    assert len(kept) == 450
    rows = np.array([x[(r["row_id"] - 3) // 7] for r in kept])
    oracle = km.lloyd(rows, km.seed_centres(init_sample(packed, 400, 11), 9, 11), max_iter=30,
                      tol=QuantizeSection().tol,
                      blocks=np.unique([r["part"] for r in kept], return_counts=True)[1].tolist())
    assert iters == oracle.iterations
    ordered = sorted(centroids, key=lambda c: c[1])
    got = np.array([c[2] for c in ordered], np.float32)
    assert np.array_equal(got, oracle.centres[[c[1] for c in ordered]])
    # Every row, fitted or not, goes to its nearest centre; the sizes count all 1,500.
    nearest, _ = km.nearest(x, oracle.centres)
    assert all(labels[i * 7 + 3] == nearest[i] for i in range(len(x)))
    assert [c[3] for c in ordered] == np.bincount(nearest)[[c[1] for c in ordered]].tolist()
    # cosine: the same on the driver and in tasks too (the rows are scaled once, not twice)
    cosine = fit(spark, df, rows_per_cluster=50, distance="cosine")
    assert fit(spark, df, rows_per_cluster=50, distance="cosine", driver_rows=1) == cosine
    # Fitted on every row (null), the centres differ; the driver's and the tasks' the same.
    every = fit(spark, df, rows_per_cluster=None)
    assert fit(spark, df, rows_per_cluster=None, driver_rows=1) == every
    assert sorted(every[0], key=lambda c: c[1]) != ordered


def test_the_driver_lays_text_ids_out_as_spark_does(spark):
    """On the driver the rows are put in their partitions and sorted by id there, without
    Spark's shuffle: the same layout as Spark's (its hash of the id, then UTF-8 byte order,
    where UTF-16 order would put the astral ids first), so the same clusters as in tasks."""
    import pyarrow as pa

    from jobs.stages.quantize import _laid_out, _partition_of_id
    x = blobs(1200)
    marks = ["a", "Z", "é", "\uff21", "\U0001f600", "0"]
    ids = [f"{marks[i % len(marks)]}{i * 7919 % 1200}" for i in range(len(x))]
    rows = [(ids[i], x[i].tolist()) for i in np.random.default_rng(3).permutation(len(x))]
    df = spark.createDataFrame(rows, "row_id string, embedding array<float>").repartition(3)
    spark_order = [r["row_id"] for r in _laid_out(df, 4).select("row_id").collect()]
    got = df.select("row_id", _partition_of_id(4).alias("part")).toArrow()
    here = got.take(pa.compute.sort_indices(got, sort_keys=[("part", "ascending"),
                                                           ("row_id", "ascending")]))
    assert here.column("row_id").to_pylist() == spark_order
    q = {"max_iter": 30, "partitions": 4, "init_rows": 400}
    on_driver = kmeans_side(df, 9, QuantizeSection(**q), 11, "pool", print, spark)
    in_tasks = kmeans_side(df, 9, QuantizeSection(**q, driver_rows=1), 11, "pool", print, spark)
    assert on_driver[0] == in_tasks[0]
    assert dict(on_driver[1].collect()) == dict(in_tasks[1].collect())
    in_tasks[1].unpersist()
    in_tasks[2].unpersist()


def test_the_driver_fits_on_the_cores_its_master_names(spark):
    from gio_core.kmeans import cores
    from jobs.stages.quantize import driver_threads
    assert spark.conf.get("spark.master") == "local[2]"
    assert driver_threads(spark) == min(2, cores())
