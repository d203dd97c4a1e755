"""The quantize stage: K-means on the pool and on the target, separately.

``quantize.algorithm``: ``lloyd`` (the default) runs Lloyd's iterations as matrix products
(:mod:`gio_core.kmeans`) inside Arrow tasks: each task adds its partition's nearest-centre
statistics, the driver adds the partitions' in order and updates the centres, one Spark job per
iteration; it starts from k-means++ (scikit-learn's, seeded) on ``quantize.init_rows`` rows
chosen by a hash of their ids (:func:`jobs.config.kmeans_init_rows`). ``mllib`` runs MLlib's
``KMeans`` (k-means|| with ``quantize.init_steps``), whose distances are one dot product per row
and centre, 6x slower on the same cores (``bench/kmeans.py``).

Writes ``centroids`` (both sides, one transaction) and ``pool_assignments`` (each pool row's
cluster) under the run's ``clustering_id``. With a ``decontaminate`` section (a threshold set),
the target is clustered first, and the pool rows that copy a target row (:func:`find_copies`,
through the target's clusters) are left out of the pool's clustering and written to
``set_aside`` before ``pool_assignments``. ``k`` is capped at a side's row count with a warning;
clusters that end up empty are dropped. The stage log's record of the clustering also holds
``target_bandwidth``, the median squared distance between target rows (select's ``mmd`` rule). The
pool is clustered with ``quantize.seed``, the target with ``quantize.seed + 1``, each on its rows
hash-partitioned by ``row_id`` into ``quantize.partitions`` partitions and sorted, so the same
inputs and seed give the same clusters on one machine or many, whatever the row order of the
sources. With learnt weights (see :mod:`jobs.stages.weigh`) both sides are clustered in the weighted
space: feature a of every embedding is multiplied by the weights' ``scaled`` factor, and the
centroids select works on are in that space.

``quantize.update: assign``: a pool that grew is assigned to the pool centroids of the latest
clustering of another version of it (:func:`jobs.state.reuse.update_base`), the sizes counted
again, unless the rows fit those centroids worse than the first clustering's rows did by more
than ``quantize.max_drift`` (:func:`_updated`): then it is clustered again.
"""
from __future__ import annotations

import importlib
import json
import re
import sys
import threading
import time
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.common import faults
from jobs.common.errors import InputError
from jobs.common.frames import ROW_ID, seed_hash, seeded_order
from jobs.common.log import log, spark_bar, took
from jobs.common.runtime import free_memory
from jobs.config import (JobConfig, auto_pool_k, kmeans_driver_rows, kmeans_init_rows,
                         row_budget)
from jobs.io import tables
from jobs.io.session import share
from jobs.io.sources import Side
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import Inputs, heldout_vectors, prepare_inputs
from jobs.state.stored import apply_weights, centroid_counts, load_weights, remember_centroids


def kmeans_side(embeddings, k: int, qcfg, seed: int, side: str, warn=print, spark=None,
                dim: int | None = None):
    """Fits K-means on one side's (row_id, embedding) rows with ``quantize.algorithm``
    (with a progress bar when ``spark`` is given); ``dim``, where known, is their dimension.

    Returns:
      ``(centroid rows [(side, cluster_id, centroid, size)], assignments DataFrame, cached input,
      K-means iterations run)``. The assignments may be persisted (where Spark tasks computed
      them, to count the sizes): unpersist them, and the input, once they are written.
    """
    if qcfg.algorithm == "mllib":
        return _kmeans_mllib(embeddings, k, qcfg, seed, side, warn, spark)
    return _kmeans_lloyd(embeddings, k, qcfg, seed, side, warn, spark, dim)


def _cached(frame, k: int, side: str, warn):
    """The side's K-means input persisted and counted; ``k`` capped at its rows, with a warning."""
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    rows = frame.count()
    faults.point(f"cached:{side}")
    return frame, rows, _capped(k, rows, side, warn)


def _capped(k: int, rows: int, side: str, warn) -> int:
    if k > rows:
        warn(f"quantize {side}: k={k} is more than its {rows} rows; using k={rows}.")
        return rows
    return k


def _centroid_rows(side: str, centres, sizes) -> list:
    """``(side, cluster_id, centroid, size)`` for every cluster that kept a row."""
    return [(side, i, np.asarray(centres[i], np.float32).tolist(), int(sizes[i]))
            for i in range(len(centres)) if sizes[i] > 0]


def _kmeans_mllib(embeddings, k, qcfg, seed, side, warn, spark):
    # K-means|| samples per partition, so the input's layout is part of the seed: a fixed number
    # of partitions by row_id, sorted within each, gives the same clusters on any cluster size.
    vectors = (embeddings.select("row_id", array_to_vector("embedding").alias("features"))
               .repartition(qcfg.partitions, "row_id").sortWithinPartitions("row_id"))
    vectors, rows, k = _cached(vectors, k, side, warn)
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
    centroid_rows = _centroid_rows(side, centres, sizes)
    assignments = model.transform(vectors).select(
        "row_id", F.col("cluster_id").cast("int").alias("cluster_id"))
    return centroid_rows, assignments, vectors, int(model.summary.numIter)


# --- the lloyd engine: gio_core.kmeans's block statistics in Arrow tasks ---------------------

def _binary(x: np.ndarray) -> pa.Array:
    """Rows of a float32 matrix as one Arrow binary value each (no copy per row)."""
    n, dim = x.shape
    offsets = np.arange(n + 1, dtype=np.int32) * (dim * 4)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(x).data)])


def _matrix(column, dim: int) -> np.ndarray:
    """The float32 rows packed by :func:`_binary`, read from Arrow's buffers in place."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    buffers = arr.buffers()
    kind = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(buffers[1], kind)[arr.offset:arr.offset + len(arr) + 1]
    return np.frombuffer(buffers[2], np.float32, count=len(arr) * dim,
                         offset=int(offsets[0])).reshape(len(arr), dim)


def _laid_out(embeddings, partitions: int):
    """``(row_id, embedding)`` in ``partitions`` partitions by row_id, sorted within each: the
    layout, and so the order in which the lloyd engine adds rows, follows from the rows alone."""
    return (embeddings.select("row_id", "embedding")
            .repartition(partitions, "row_id").sortWithinPartitions("row_id"))


def _vectors(column, distance: str) -> np.ndarray:
    """An Arrow list column of embeddings as a float32 matrix (unit rows for ``cosine``)."""
    from gio_core.kmeans import normalise
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max()):
        raise ValueError("quantize: embeddings of different lengths in one side")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    x = np.asarray(flat, np.float32).reshape(len(column), -1)
    return normalise(x) if distance == "cosine" else x


def _packed(embeddings, partitions: int, distance: str):
    """``(row_id, vec)``: each embedding as float32 bytes (unit length for ``cosine``), laid out
    by :func:`_laid_out`."""

    def pack(batches):
        for b in batches:
            x = _vectors(b.column(1), distance)
            yield pa.RecordBatch.from_arrays([b.column(0), _binary(x)], ["row_id", "vec"])

    id_type = embeddings.schema["row_id"].dataType.simpleString()
    return _laid_out(embeddings, partitions).mapInArrow(pack, f"row_id {id_type}, vec binary")


def _stats(spark, packed, centres: np.ndarray, distance: str):
    """The summed block statistics of every row under ``centres``: one Spark job, each task
    sends its partition's sums, counts and inertia, added here in partition order."""
    from gio_core.kmeans import Stats, empty_stats, stream_stats
    k, dim = centres.shape
    shared = share(spark, centres)

    def task(batches):
        from pyspark import TaskContext
        c = shared.value
        total = stream_stats((_matrix(b.column(0), dim) for b in batches), c, distance)
        yield pa.RecordBatch.from_arrays(
            [pa.array([TaskContext.get().partitionId()], pa.int32()),
             pa.array([total.sums.tobytes()], pa.binary()),
             pa.array([total.counts.tobytes()], pa.binary()),
             pa.array([total.inertia], pa.float64())], ["part", "sums", "counts", "inertia"])

    rows = sorted(packed.select("vec").mapInArrow(
        task, "part int, sums binary, counts binary, inertia double").collect(),
        key=lambda r: r["part"])
    shared.destroy()
    total = empty_stats(k, dim)
    for r in rows:
        total = total + Stats(np.frombuffer(r["sums"], np.float64).reshape(k, dim),
                              np.frombuffer(r["counts"], np.int64), r["inertia"])
    return total


def _assign(spark, packed, centres: np.ndarray, distance: str):
    """``(row_id, cluster_id)``: each row's nearest centre, computed when read, each partition
    cut into blocks from its first row as :func:`_stats` cuts it (so the labels agree with the
    sizes, whatever Spark's Arrow batch size)."""
    from collections import deque

    from gio_core.kmeans import stream_nearest
    dim = centres.shape[1]
    shared = share(spark, centres)

    def task(batches):
        c = shared.value
        ids: deque = deque()

        def blocks():
            for b in batches:
                ids.append(b.column(0))
                yield _matrix(b.column(1), dim)

        for labels in stream_nearest(blocks(), c, distance):
            yield pa.RecordBatch.from_arrays([ids.popleft(), pa.array(labels, pa.int32())],
                                             ["row_id", "cluster_id"])

    id_type = packed.schema["row_id"].dataType.simpleString()
    return packed.mapInArrow(task, f"row_id {id_type}, cluster_id int")


def init_sample(packed, rows: int, seed: int):
    """The rows k-means++ starts from: at most ``rows`` of them, those with the least
    ``xxhash64(seed, row_id)``, in that order (neither the sources' row order nor the layout
    changes which or in what order)."""
    picked = seeded_order(packed, seed).limit(rows).select("vec").toArrow()
    if picked.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    return _matrix(picked.column(0), _width(picked.column(0)))


def _width(column) -> int:
    """The dimension of the packed float32 rows of a non-empty binary column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return len(arr[0].as_py()) // 4


def training_rows(rows: int, k: int, qcfg) -> int:
    """How many of a side's rows the centres are fitted on: ``quantize.rows_per_cluster`` per
    cluster (null: every row), at most the side's rows."""
    if qcfg.rows_per_cluster is None:
        return rows
    return min(rows, qcfg.rows_per_cluster * k)


def _first_in_seeded_order(packed, rows: int, seed: int):
    """The ``rows`` rows of ``packed`` first in the seeded order, as a filter on it, so they keep
    its partitions and their order (the hash and id of the last one kept bound the filter)."""
    h = seed_hash(seed)
    last = (packed.select("row_id", h.alias("h")).orderBy("h", "row_id")
            .offset(rows - 1).limit(1).collect()[0])
    return packed.where((h < F.lit(last["h"]))
                        | ((h == F.lit(last["h"])) & (F.col("row_id") <= F.lit(last["row_id"]))))


def _import_meanwhile(module: str) -> None:
    """Import ``module`` in a thread of its own, while this one waits on Spark (an import
    started here later waits for it to finish, and raises its error, if any)."""
    if module not in sys.modules:
        threading.Thread(target=_quietly_import, args=(module,), daemon=True,
                         name=f"gio-spark import {module}").start()


def _quietly_import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:               # noqa: BLE001 - the import in the stage's thread says why
        pass


def driver_threads(spark) -> int:
    """How many blocks of rows a fit on the driver works on at once (each matrix product on
    one BLAS thread; the fit is the same for any number): the N of a ``local[N]`` master (1
    for ``local``), else ``spark.driver.cores`` where set, else the cores the driver may run
    on; never more than those."""
    from gio_core.kmeans import cores
    try:
        master = spark.conf.get("spark.master", "") or ""
        driver_cores = spark.conf.get("spark.driver.cores", None)
    except Exception:               # noqa: BLE001 - a session that will not say: every core
        master, driver_cores = "", None
    local = re.fullmatch(r"local(?:\[(\d+)(?:,\d+)?\])?", master.strip())
    if local:
        wanted = int(local.group(1) or 1)
    elif driver_cores and str(driver_cores).strip().isdigit():
        wanted = int(driver_cores)
    else:
        wanted = cores()
    return max(1, min(wanted, cores()))


def _partition_of_id(partitions: int):
    """The partition :func:`_laid_out` puts a row in: Spark's hash partitioning by ``row_id``
    (Murmur3, seed 42, the ``hash`` function's) modulo the partitions."""
    return F.pmod(F.hash("row_id"), F.lit(partitions))


def _fit_on_driver(spark, rows_frame, k, qcfg, seed, side, shown="", partitions=None):
    """Lloyd in memory on ``rows_frame``'s rows, collected once in partition order (sorted
    within each, with each row's hash): fitted on the :func:`training_rows` of them first in
    the seeded order (kept in that layout), from k-means++ on the first
    :func:`~jobs.config.kmeans_init_rows` of those; the partitions' statistics are added in
    partition order, as the tasks' are. With ``partitions``, ``rows_frame`` is not laid out
    yet: its rows are collected as they come and put in :func:`_laid_out`'s order here (by
    :func:`_partition_of_id`, then by id as Spark sorts it), which saves the shuffle.
    Returns ``(ids, x, fit, fitted on every row, where each partition's rows start and the
    last ends)``."""
    from pyspark.sql.functions import spark_partition_id

    from gio_core.kmeans import lloyd, seed_centres
    column = "vec" if "vec" in rows_frame.columns else "embedding"
    part = spark_partition_id() if partitions is None else _partition_of_id(partitions)
    got = rows_frame.select("row_id", column, seed_hash(seed).alias("h"),
                            part.alias("part")).toArrow()
    x = (_matrix(got.column("vec"), _width(got.column("vec"))) if column == "vec"
         else _vectors(got.column("embedding"), qcfg.distance))
    columns = got.select(["row_id", "h", "part"])
    if partitions is not None:      # laid out here, as _laid_out would, without its shuffle
        # (row ids are never null: the sources refuse a null id)
        laid = pc.sort_indices(columns, sort_keys=[("part", "ascending"), ("row_id", "ascending")])
        del got                     # the rows' only copy from here on is x's
        columns, x = columns.take(laid), x[laid.to_numpy()]
    ids = columns.column("row_id").to_numpy(zero_copy_only=False)
    parts = columns.column("part").to_numpy()
    assert np.all(np.diff(parts) >= 0), "the rows are in their partitions' order"
    order = np.lexsort((ids, columns.column("h").to_numpy()))
    train = training_rows(len(ids), k, qcfg)
    start = seed_centres(x[order[:min(kmeans_init_rows(qcfg, k), train)]], k, seed,
                         qcfg.distance)
    keep = np.sort(order[:train])
    shown = shown or f"{len(ids)} rows" + ("" if train == len(ids) else f", fitted on {train}")
    with spark_bar(spark, f"quantize {side}: K-means, k={k} on {shown} (on the driver)",
                   total=1, unit=" fit", done=lambda: 0):
        fit = lloyd(x[keep] if train < len(ids) else x, start, qcfg.max_iter, qcfg.tol,
                    qcfg.distance, blocks=np.unique(parts[keep], return_counts=True)[1].tolist(),
                    normalised=True, threads=driver_threads(spark))
    sizes = np.unique(parts, return_counts=True)[1]
    return ids, x, fit, train == len(ids), np.r_[0, np.cumsum(sizes)]


def _kmeans_on_driver(spark, embeddings, k, qcfg, seed, side):
    """A side of at most ``quantize.driver_rows`` rows: its rows collected once and laid out
    on the driver (not shuffled, packed or cached first), fitted on the driver by the tasks' steps
    (:func:`_fit_on_driver`) and every row assigned there; a Spark job per iteration would
    cost more than the arithmetic. The input it returns is the packed rows, not cached."""
    from gio_core.kmeans import parts_nearest
    ids, x, fit, every, parts_at = _fit_on_driver(
        spark, embeddings.select("row_id", "embedding"), k, qcfg, seed, side,
        partitions=qcfg.partitions)
    # Each partition labelled on its own, as the tasks label it (see _assign)
    labels = fit.labels if every else np.concatenate(
        [got[0] for got in parts_nearest(
            [x[lo:hi] for lo, hi in zip(parts_at[:-1], parts_at[1:], strict=True)],
            fit.centres, qcfg.distance, driver_threads(spark))])
    sizes = np.bincount(labels, minlength=len(fit.centres))
    centroid_rows = _centroid_rows(side, fit.centres, sizes)
    id_type = embeddings.schema["row_id"].dataType.simpleString()
    # From Arrow whatever spark.sql.execution.arrow.pyspark.enabled says (the driver may hold
    # millions of rows here)
    assignments = spark.createDataFrame(
        pa.table({"row_id": pa.array(ids), "cluster_id": pa.array(labels.astype(np.int32))}),
        f"row_id {id_type}, cluster_id int")
    return (centroid_rows, assignments, _packed(embeddings, qcfg.partitions, qcfg.distance),
            fit.iterations)


def _driver_rows(spark, embeddings, qcfg, dim: int | None) -> int:
    """:func:`~jobs.config.kmeans_driver_rows` for these rows (for ``auto``, the session's
    driver settings and their dimension, read off the first row where not given)."""
    if qcfg.driver_rows != "auto":
        return int(qcfg.driver_rows)
    if dim is None:
        first = embeddings.select(F.size("embedding").alias("dim")).first()
        dim = (first["dim"] if first else None) or 1
    try:
        memory = spark.conf.get("spark.driver.memory", None)
        result = spark.conf.get("spark.driver.maxResultSize", None)
    except Exception:               # noqa: BLE001 - a session that will not say: Spark's defaults
        memory = result = None
    return kmeans_driver_rows(qcfg, dim, memory, result, free_memory())


def _kmeans_lloyd(embeddings, k, qcfg, seed, side, warn, spark, dim=None):
    """Lloyd's engine. The centres are fitted on :func:`training_rows` rows (those first in
    the seeded order, or every row), on the driver when they are at most
    ``quantize.driver_rows``, else one Spark job per iteration; then every row is assigned to
    its nearest centre, once (the assignments are returned persisted, where they were computed
    in Spark tasks: the caller unpersists them once written)."""
    from gio_core.kmeans import seed_centres, update
    spark = spark if spark is not None else embeddings.sparkSession
    _import_meanwhile("sklearn.cluster")    # for the start; its 0.8 s pass while Spark works
    rows = embeddings.count()
    driver_rows = _driver_rows(spark, embeddings, qcfg, dim)
    if rows <= driver_rows:
        faults.point(f"cached:{side}")
        k = _capped(k, rows, side, warn)
        return _kmeans_on_driver(spark, embeddings, k, qcfg, seed, side)
    packed = _packed(embeddings, qcfg.partitions, qcfg.distance)
    packed, rows, k = _cached(packed, k, side, warn)
    train = training_rows(rows, k, qcfg)
    note = "" if train == rows else f", fitted on {train}"
    training = packed if train == rows else _first_in_seeded_order(packed, train, seed)
    if train <= driver_rows:
        _, _, fit, _, _ = _fit_on_driver(spark, training, k, qcfg, seed, side,
                                      f"{rows} rows, fitted on {train}")
        centres, iterations = fit.centres, fit.iterations
    else:
        if training is not packed:
            training = training.persist(StorageLevel.MEMORY_AND_DISK)
        sample = init_sample(training, kmeans_init_rows(qcfg, k), seed)
        centres = seed_centres(sample, k, seed, qcfg.distance)
        done = {"it": 0}
        with spark_bar(spark, f"quantize {side}: K-means, k={k} on {rows} rows{note}",
                       total=qcfg.max_iter, unit=" it", done=lambda: done["it"]):
            for _ in range(qcfg.max_iter):
                centres, shift = update(centres, _stats(spark, training, centres, qcfg.distance),
                                        qcfg.distance)
                done["it"] += 1
                if shift <= qcfg.tol:
                    break
        if training is not packed:
            training.unpersist()
        iterations = done["it"]
    # One pass assigns every row; the sizes are counted off the assignments, kept for the write
    assignments = _assign(spark, packed, centres, qcfg.distance).persist(
        StorageLevel.MEMORY_AND_DISK)
    centroid_rows = _centroid_rows(side, centres, _sizes(assignments, len(centres)))
    return centroid_rows, assignments, packed, iterations


def _sizes(assignments, k: int) -> np.ndarray:
    """How many rows ``assignments`` (row_id, cluster_id) put in each of ``k`` clusters."""
    sizes = np.zeros(k, np.int64)
    for cluster, count in assignments.groupBy("cluster_id").count().collect():
        sizes[cluster] = count
    return sizes


def find_copies(spark, pool: DataFrame, refs: dict, target_rows: list, d, distance: str):
    """The decontamination step: the pool rows that copy a row of ``refs`` (cosine at least
    ``decontaminate.threshold``), each compared with the rows of its ``decontaminate.probes``
    nearest target clusters (:mod:`gio_core.copies`).

    ``pool`` and each of ``refs`` (``{side: frame}``: the target's rows, and the held-out rows
    where they count): (row_id, embedding) in the space quantize clusters in; ``target_rows``:
    the target's centroid rows (:func:`kmeans_side`).

    Returns ``(found, release, rows, compared)``: ``(row_id, copy_of, side, cosine)`` of the
    pool rows found (persisted: ``release()`` frees them and the rows shared with the tasks,
    once nothing reads them), how many rows by the side they copy, and the rows compared in
    all.

    Raises:
      InputError: held-out vectors of another dimension than the pool's.
    """
    from gio_core.copies import copy_index, near_copies
    from gio_core.kmeans import normalise
    ids, sides, vectors = [], [], []
    for side, frame in refs.items():
        got = (frame.select("row_id", F.col("embedding").cast("array<float>").alias("v"))
               .orderBy("row_id").collect())
        ids += [str(r["row_id"]) for r in got]
        sides += [side] * len(got)
        vectors += [r["v"] for r in got]
    centres = np.array([r[2] for r in target_rows], np.float32)
    lengths = {len(v) for v in vectors}
    if lengths != {centres.shape[1]}:
        raise InputError(f"the rows to decontaminate against have {sorted(lengths)} features, "
                         f"the pool {centres.shape[1]}; give evaluate.heldout vectors of the "
                         "pool's dimension (or texts), or set decontaminate.heldout: false.")
    x = np.array(vectors, np.float32)
    index = copy_index(normalise(x) if distance == "cosine" else x, centres, distance)
    shared = share(spark, (index, ids, sides))
    threshold, probes = float(d.threshold), int(d.probes)

    def task(batches):
        index, ids, sides = shared.value
        for b in batches:
            emb = b.column(1)
            x = np.asarray(pc.list_flatten(emb).to_numpy(zero_copy_only=False),
                           np.float32).reshape(len(emb), -1)
            found = near_copies(index, x, threshold, probes)
            yield pa.RecordBatch.from_arrays(
                [pa.concat_arrays([b.column(0).take(pa.array(found.rows)),
                                   pa.nulls(1, b.column(0).type)]),
                 pa.array([ids[j] for j in found.refs] + [None], pa.string()),
                 pa.array([sides[j] for j in found.refs] + [None], pa.string()),
                 pa.array(found.cosine.astype(np.float64).tolist() + [None], pa.float64()),
                 pa.array([0] * len(found.rows) + [found.compared], pa.int64())],
                ["row_id", "copy_of", "side", "cosine", "compared"])

    id_type = pool.schema["row_id"].dataType.simpleString()
    cached = (pool.select("row_id", F.col("embedding").cast("array<float>").alias("embedding"))
              .mapInArrow(task, f"row_id {id_type}, copy_of string, side string, "
                                "cosine double, compared long")
              .persist(StorageLevel.MEMORY_AND_DISK))
    totals = cached.groupBy("side").agg(F.count("row_id").alias("rows"),
                                        F.sum("compared").alias("compared")).collect()
    rows = {r["side"]: int(r["rows"]) for r in totals if r["side"] is not None}
    compared = sum(int(r["compared"] or 0) for r in totals)

    def release() -> None:
        cached.unpersist()
        shared.destroy()
    return cached.where(F.col("row_id").isNotNull()).drop("compared"), release, rows, compared


def run_quantize(spark, cfg: JobConfig, plan: reuse.Plan, inputs: Inputs,
                 embeddings: Callable[[Side], DataFrame]) -> str:
    """Clusters both sides and commits the tables, unless done already; returns the
    clustering id. ``embeddings(side)``: a side's (row_id, embedding) rows, computed by the
    embed stage when they are not yet (called only when quantize has work to do)."""
    key, fp = plan.clustering_id, plan.quantize

    def compute():
        q = cfg.quantize
        pool = embeddings(inputs.pool)
        target = embeddings(inputs.target)
        scale = None
        if plan.weights_id is not None:
            scale = load_weights(spark, cfg, plan.weights_id, plan.weights)
            log(f"quantize: in the space weighted by {plan.weights_id} "
                f"({int(np.sum(scale > 1e-3))} of {len(scale)} features above 0.001 of the "
                "largest)")
            pool, target = apply_weights(pool, scale), apply_weights(target, scale)
        warn = lambda msg: log(f"warning: {msg}")       # noqa: E731
        t0 = time.perf_counter()
        domains = inputs.target.report.get("domains") if cfg.target.domain_column else None
        if domains:
            target_rows, frees, target_iter, by_domain = _target_by_domain(
                spark, cfg, inputs.target, target, domains, warn, inputs.dim)
            detail: dict = {"target_domains": by_domain}
        else:
            target_rows, assigned_t, cached_t, target_iter = kmeans_side(
                target, q.target_k, q, q.seed + 1, "target", warn, spark, inputs.dim)
            frees, detail = [cached_t.unpersist, assigned_t.unpersist], {}
        kept = int(inputs.pool.report["kept"])
        aside = None
        if cfg.decontaminate.threshold is not None:
            refs = {"target": target}
            if reuse.decontaminates_heldout(cfg):
                held = heldout_vectors(spark, cfg, log)
                refs["heldout"] = held if scale is None else apply_weights(held, scale)
            pool, aside, free, found = _decontaminated(spark, cfg, pool, refs, target_rows,
                                                       kept)
            detail.update(found)
            frees.append(free)
            kept -= detail["set_aside"]
        pool_k = q.pool_k
        updated = None
        if q.update == "assign":
            detail.update(basis=plan.basis, pool_validate=plan.validate["pool"], base=plan.base)
            if plan.base is None:
                log("quantize: update assign: no earlier clustering of this pool under "
                    "output.path to update; clustering it")
                detail["update"] = "first"
            else:
                updated, more = _updated(spark, cfg, plan.base, pool, warn)
                detail.update(more)
        if updated is not None:
            pool_rows, assignments, cached = updated
            pool_k, how = len(pool_rows), f"assigned to clustering {plan.base}'s"
        else:
            if pool_k == "auto":
                pool_k = auto_pool_k(kept, cfg.select)
                log(f"quantize: pool_k auto: {pool_k} clusters for {kept} pool rows"
                    + (f" and a budget of {row_budget(cfg.select, kept)}"
                       if row_budget(cfg.select, kept) else ""))
            pool_rows, assignments, cached, pool_iter = kmeans_side(
                pool, pool_k, q, q.seed, "pool", warn, spark, inputs.dim)
            frees.append(assignments.unpersist)
            how = f"{pool_iter} iterations"
            if q.update == "assign":          # the fit later updates are measured against
                fit = _fit_per_row(spark, cached, pool_rows, q.distance)
                detail.update(pool_inertia_per_row=fit, reference_inertia_per_row=fit)
        if cfg.decontaminate.duplicates is not None:
            assignments, pool_rows, dups, free, more = _deduplicated(
                spark, cfg.decontaminate.duplicates, pool, assignments, pool_rows)
            frees.append(free)
            aside = dups if aside is None else aside.unionByName(dups)
            by_side = {**detail.get("set_aside_by_side", {}), "pool": more.pop("duplicates")}
            detail.update(more, set_aside=sum(by_side.values()), set_aside_by_side=by_side)
        log(f"quantize: {len(pool_rows)} pool clusters ({how}), "
            f"{len(target_rows)} target clusters ({target_iter} iterations) in "
            f"{took(time.perf_counter() - t0)}")
        bandwidth = target_bandwidth(target)
        centroids = (spark.createDataFrame([(key, *r) for r in pool_rows + target_rows],
                                           tables.CENTROIDS), pool_rows + target_rows)
        return (centroids, assignments, aside,
                [cached.unpersist] + frees,
                {"pool_k": pool_k, "pool_clusters": len(pool_rows),
                 "target_clusters": len(target_rows), "target_bandwidth": bandwidth, **detail})

    def commit(computed):
        centroids, assignments, aside, _, detail = computed
        centroids, rows = centroids
        mine = tables.replace_key(spark, centroids, cfg.output.path, "centroids", key,
                                  local=True)
        if mine is not None:                  # what select collects next, without reading it
            remember_centroids(cfg, key, mine, rows)
        if aside is not None:
            tables.replace_key(spark, aside.withColumn("clustering_id", F.lit(key)),
                               cfg.output.path, "set_aside", key)
        tables.replace_key(spark, assignments.withColumn("clustering_id", F.lit(key)),
                           cfg.output.path, "pool_assignments", key)
        return key, detail

    def release(computed) -> None:
        for free in computed[3]:
            free()

    def reused() -> str:
        log(f"quantize: reusing clustering {key}")
        return key

    def lost(detail: dict) -> str | None:
        """What is gone of the committed clustering (rows deleted or replaced by hand)."""
        counts = centroid_counts(spark, cfg, key)
        want = {"pool": detail.get("pool_clusters"), "target": detail.get("target_clusters")}
        for side in ("pool", "target"):
            if not counts.get(side) or (want[side] is not None and counts[side] != want[side]):
                return (f"its {side} centroids are not those it committed ({counts.get(side, 0)} "
                        f"rows, {want[side]} recorded)")
        if tables.read_key(spark, cfg.output.path, "pool_assignments", key).limit(1).count() == 0:
            return "its pool assignments are gone"
        aside = detail.get("set_aside")
        if aside is not None:
            table = tables.table_path(cfg.output.path, "set_aside")
            found = (tables.read_key(spark, cfg.output.path, "set_aside", key).count()
                     if tables.exists(spark, table) else 0)
            if found != aside:
                return f"its set-aside rows are not those it committed ({found} rows, {aside} recorded)"
        return None

    return run_stage(spark, cfg.output.path, "quantize", key, fp, compute, commit, reused,
                     lost, release)


def domain_ks(target_k: int, domains: dict, least: int) -> dict:
    """``quantize.target_k`` shared out between the target's domains by their rows (largest
    remainders), each at least ``least`` (``select.k + 1``: the estimator's need) and at most
    its distinct rows."""
    rows = {d: int(c["rows"]) for d, c in domains.items()}
    caps = {d: int(min(c["rows"], c.get("distinct_values", c["rows"]))) for d, c in domains.items()}
    total = sum(rows.values()) or 1
    raw = {d: target_k * n / total for d, n in rows.items()}
    ks = {d: int(np.floor(v)) for d, v in raw.items()}
    for d in sorted(raw, key=lambda d: (-(raw[d] - ks[d]), d))[:target_k - sum(ks.values())]:
        ks[d] += 1
    return {d: max(1, min(max(ks[d], least), caps[d])) for d in domains}


def _target_by_domain(spark, cfg: JobConfig, side: Side, target: DataFrame, domains: dict,
                      warn, dim: int | None = None):
    """The target clustered domain by domain (``target.domain_column``): each domain's rows
    with its part of ``quantize.target_k`` (:func:`domain_ks`), its clusters numbered after the
    domains before it. Returns ``(centroid rows, frees, iterations, {domain: [cluster ids]})``."""
    q = cfg.quantize
    column = F.col(cfg.target.domain_column).cast("string")
    ks = domain_ks(q.target_k, domains, cfg.select.k + 1)
    rows, frees, iterations, by_domain, offset = [], [], 0, {}, 0
    for name in domains:
        ids = side.frame.where(column == name).select(ROW_ID)
        part = target.join(ids, ROW_ID, "left_semi")
        found, assigned, cached, its = kmeans_side(part, ks[name], q, q.seed + 1, "target",
                                                   warn, spark, dim)
        frees += [cached.unpersist, assigned.unpersist]
        iterations = max(iterations, its)
        renumbered = [(r[0], offset + r[1], *r[2:]) for r in found]
        by_domain[name] = [r[1] for r in renumbered]
        log(f"quantize: target domain {name!r}: {len(renumbered)} clusters of "
            f"{domains[name]['rows']} rows")
        rows += renumbered
        offset += ks[name]
    return rows, frees, iterations, by_domain


def _fit_per_row(spark, packed, centroid_rows: list, distance: str) -> float:
    """The mean squared distance of the (packed, cached) rows to their nearest centroid."""
    centres = np.array([r[2] for r in centroid_rows], np.float32)
    stats = _stats(spark, packed, centres, distance)
    return float(stats.inertia) / max(int(stats.counts.sum()), 1)


def _updated(spark, cfg: JobConfig, base: str, pool: DataFrame, warn):
    """``quantize.update: assign``: the pool's rows assigned to the pool centroids of clustering
    ``base`` and the sizes counted again, ``((centroid rows, assignments, cached input), detail)``;
    ``(None, detail)`` when the rows' fit to those centroids (their mean squared distance) is
    worse than the first clustering's by more than ``quantize.max_drift``: the pool is then
    clustered again."""
    q = cfg.quantize
    out = cfg.output.path
    rows = (tables.read_key(spark, out, "centroids", base).where(F.col("side") == "pool")
            .orderBy("cluster_id").select("cluster_id", "centroid").collect())
    record = stagelog.latest(spark, out, "quantize", base)
    before = json.loads(record["detail"]) if record is not None and record["detail"] else {}
    reference = before.get("reference_inertia_per_row", before.get("pool_inertia_per_row"))
    if not rows or reference is None:
        log(f"quantize: update assign: clustering {base} is gone or recorded no fit; "
            "clustering the pool")
        return None, {"update": "reclustered"}
    ids = np.array([r["cluster_id"] for r in rows], np.int32)
    centres = np.array([r["centroid"] for r in rows], np.float32)
    packed, count, _ = _cached(_packed(pool, q.partitions, q.distance), len(ids), "pool", warn)
    stats = _stats(spark, packed, centres, q.distance)
    fit = float(stats.inertia) / max(count, 1)
    drift = fit / reference - 1.0 if reference > 0 else (0.0 if fit == 0 else float("inf"))
    detail = {"drift": round(drift, 6), "pool_inertia_per_row": fit,
              "reference_inertia_per_row": reference}
    if drift > q.max_drift:
        log(f"quantize: update assign: the pool's rows fit clustering {base}'s centroids "
            f"{drift:.1%} worse than its first clustering's rows did (more than "
            f"quantize.max_drift {q.max_drift:g}); clustering the pool again")
        packed.unpersist()
        return None, {**detail, "update": "reclustered"}
    log(f"quantize: update assign: {count} pool rows assigned to clustering {base}'s "
        f"{len(ids)} pool clusters (fit {drift:+.1%} against its first clustering)")
    index = spark.createDataFrame([(i, int(c)) for i, c in enumerate(ids)],
                                  "position int, cluster int")
    labels = _assign(spark, packed, centres, q.distance)
    assignments = (labels.join(F.broadcast(index), labels["cluster_id"] == index["position"])
                   .select("row_id", F.col("cluster").alias("cluster_id")))
    centroid_rows = [("pool", int(ids[i]), centres[i].tolist(), int(stats.counts[i]))
                     for i in range(len(ids)) if stats.counts[i] > 0]
    return (centroid_rows, assignments, packed), {**detail, "update": "assigned"}


def _decontaminated(spark, cfg: JobConfig, pool: DataFrame, refs: dict, target_rows: list,
                    kept: int):
    """``(the pool without the rows that copy a row of refs, those rows, what frees them, the
    figures for the stage log)``: :func:`find_copies`, logged.

    Raises:
      InputError: every pool row is a copy.
    """
    d = cfg.decontaminate
    t0 = time.perf_counter()
    aside, release, by_side, compared = find_copies(spark, pool, refs, target_rows, d,
                                                    cfg.quantize.distance)
    rows = sum(by_side.values())
    per_row = compared / max(kept, 1)
    against = " or ".join({"target": "target rows", "heldout": "held-out rows"}[s]
                          for s in refs)
    found = ", ".join(f"{by_side.get(s, 0)} {s}" for s in refs) if len(refs) > 1 else ""
    log(f"quantize: decontaminate: {rows} of {kept} pool rows copy {against} (cosine >= "
        f"{d.threshold:g}{'; ' + found if found else ''}) and are set aside; {per_row:.1f} rows "
        f"compared per pool row, in {len(target_rows)} target clusters (probes={d.probes}), in "
        f"{took(time.perf_counter() - t0)}")
    if rows >= kept:
        release()
        raise InputError(f"every one of the pool's {kept} rows copies {against} (cosine >= "
                         f"decontaminate.threshold={d.threshold:g}): nothing is left to select "
                         "from; check that the pool is not the same rows, or raise "
                         "decontaminate.threshold.")
    if rows:
        pool = pool.join(aside.select("row_id"), "row_id", "left_anti")
    return pool, aside, release, {"set_aside": rows, "set_aside_by_side": by_side,
                                  "compared_per_row": round(per_row, 3)}


def _deduplicated(spark, threshold: float, pool: DataFrame, assignments: DataFrame,
                  pool_rows: list):
    """Near-duplicates inside the pool (``decontaminate.duplicates``): each cluster's rows in
    row id order, a row set aside when its cosine with a row kept before it in its cluster is at
    least ``threshold`` (:func:`gio_core.copies.duplicates`, one ``applyInPandas`` group per
    cluster).

    Returns ``(the assignments without them, the pool's centroid rows with the sizes of the
    rows kept, them as (row_id, copy_of, side, cosine), what frees them, the figures)``.
    """
    from gio_core.copies import duplicates
    t0 = time.perf_counter()

    def task(pdf):
        pdf = pdf.sort_values("row_id", kind="stable")
        found = duplicates(np.stack(pdf["embedding"].to_numpy()).astype(np.float32), threshold)
        ids = pdf["row_id"].to_numpy()
        return pd.DataFrame({
            "row_id": np.r_[ids[found.rows], ids[:1]],
            "copy_of": [str(v) for v in ids[found.refs]] + [None],   # the last: the figures
            "cosine": np.r_[found.cosine.astype(np.float64), np.nan],
            "cluster_id": np.full(len(found.rows) + 1, pdf["cluster_id"].iloc[0], np.int32),
            "compared": np.r_[np.zeros(len(found.rows), np.int64), found.compared]})

    id_type = pool.schema["row_id"].dataType.simpleString()
    cached = (assignments.join(pool.select("row_id", F.col("embedding").cast("array<float>")
                                           .alias("embedding")), "row_id")
              .groupBy("cluster_id")
              .applyInPandas(task, f"row_id {id_type}, copy_of string, cosine double, "
                                   "cluster_id int, compared long")
              .persist(StorageLevel.MEMORY_AND_DISK))
    found = cached.where(F.col("copy_of").isNotNull())
    per_cluster = dict(found.groupBy("cluster_id").count().collect())
    compared = cached.agg(F.sum("compared")).first()[0] or 0
    rows = sum(per_cluster.values())
    total = sum(r[3] for r in pool_rows)
    log(f"quantize: duplicates: {rows} of {total} pool rows nearly duplicate a row before them "
        f"in their cluster (cosine >= {threshold:g}) and are set aside; "
        f"{compared / max(total, 1):.1f} rows compared per pool row, in "
        f"{took(time.perf_counter() - t0)}")
    if rows:
        assignments = assignments.join(found.select("row_id"), "row_id", "left_anti")
    sized = [(side, i, c, size - per_cluster.get(i, 0)) for side, i, c, size in pool_rows]
    aside = found.select("row_id", "copy_of", F.lit("pool").alias("side"), "cosine")
    return assignments, sized, aside, cached.unpersist, {
        "duplicates": rows, "duplicates_compared_per_row": round(compared / max(total, 1), 3)}


def target_bandwidth(embeddings) -> float:
    """The median squared distance between target rows (at most 2,048, taken in the order of a
    hash of their row ids, so not by the source's row order): the RBF kernel's width for
    select's ``mmd`` rule. Centroids sit closer together than the rows they stand for, so the
    rule takes its width from the rows."""
    from gio_core import median_bandwidth
    from gio_core._mmd import MEDIAN_POINTS
    rows = (embeddings.orderBy(F.xxhash64("row_id"), "row_id").limit(MEDIAN_POINTS)
            .select(F.col("embedding").cast("array<float>").alias("v")).collect())
    return median_bandwidth(np.array([r["v"] for r in rows], np.float32))


def _quantize(spark, cfg: JobConfig, plan: reuse.Plan, inputs: Inputs, registry) -> str:
    embed = registry["embed"]
    return run_quantize(spark, cfg, plan, inputs,
                        lambda side: embed.provide(spark, cfg, plan, side))


def quantize_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    _quantize(spark, cfg, plan, prepare_inputs(spark, cfg, plan, log), registry)


STAGE = Stage(
    "quantize", "the quantize stage alone: K-means on pool and target", "quantize", both_sides,
    needs=("embed",), outputs=("centroids", "set_aside", "pool_assignments"),
    command=quantize_command,
    in_run=lambda cfg: True,
    step=lambda run: _quantize(run.spark, run.cfg, run.plan, run.inputs, run.registry),
    connect=True)
