"""The Delta tables gio-spark writes: their schemas (declared here and nowhere else), how they are
created and written, and the checks that protect a user's other data.

Under ``output.path``:

| table | columns | key (partition) | written by |
| --- | --- | --- | --- |
| ``text_embeddings`` | model_id, text_hash, embedding (one row per distinct text) | model_id | embed (appended chunk by chunk) |
| ``pool_embeddings``, ``target_embeddings`` | embeddings_id, row_id, embedding | embeddings_id | embed (text sources) |
| ``centroids`` | clustering_id, side, cluster_id, centroid, size | clustering_id | quantize |
| ``pool_assignments`` | clustering_id, row_id, cluster_id | clustering_id | quantize |
| ``set_aside`` | clustering_id, row_id, copy_of, side, cosine | clustering_id | quantize (``decontaminate``) |
| ``selection`` | run_id, select_fingerprint, rank, cluster_id, cluster_size, kl_after | run_id | select |
| ``selection_domains`` | run_id, rank, cluster_id, domain, how (a target with ``domain_column``) | run_id | select |
| ``runs`` | run_id, select_fingerprint, clustering_id, params, KL curve, inputs, ... | run_id | select |
| ``selected_rows`` | the pool's own columns + cluster_id, rank, run_id | run_id | explode |
| ``feature_weights`` | weights_id, weights_fingerprint, feature, name, weight, scaled | weights_id | weigh |
| ``weight_runs`` | weights_id, fingerprint, params, spaces, DII curve, final DII, ... | weights_id | weigh |
| ``train_runs`` | train_id, fingerprint, arm, params, rows, classes, per-epoch history, ... | train_id | train |
| ``models`` | train_id, fingerprint, arm, kind, sizes, classes, standardisation, params | train_id | train |
| ``evaluations`` | eval_id, fingerprint, run_id, method, rows, MMD², kNN KL, share, recall, accuracy, ... | eval_id | evaluate |
| ``imnn_history``, ``imnn_fits`` | imnn_id, fingerprint, per-iteration statistics; the fit | imnn_id | imnn |
| ``datamodels_weights`` | regress_id, target, train_index, weight (nonzero only) | regress_id | datamodels regress |
| ``datamodels_fits`` | regress_id, fingerprint, target, bias, lambda, MSE and r on val and test | regress_id | datamodels regress |
| ``datamodels_regressions`` | regress_id, fingerprint, params, store, model splits, summary | regress_id | datamodels regress |
| ``stages`` | stage, key, fingerprint, status, at, detail | (append-only log) | every stage |

Rules every write follows:

* a table is created explicitly (schema, partition column and the ``gio-spark.table`` /
  ``gio-spark.schema`` properties) before its first write, or, for a few rows made on the
  driver (the stage log, a run's record and selection, the centroids), with them as its first
  commit; two runs creating it at once both succeed;
* ``text_embeddings`` alone is appended to (blind appends, one transaction a chunk, never
  conflicting): the vectors of texts it does not hold yet, so a killed embed stage keeps the
  chunks it committed and a grown source embeds only its new texts;
* every other write replaces exactly one key's partition (``replaceWhere`` on the key) in one transaction,
  never the whole table, so runs with other keys keep their rows, and a re-run replaces its own
  rows instead of duplicating them; a concurrent-commit conflict is retried a bounded number of
  times;
* gio-spark never writes into a table it did not create: a table without its properties, of
  another schema version or with other columns is refused before any heavy work.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
from typing import Callable, TypeVar

from delta.exceptions import (ConcurrentAppendException, ConcurrentDeleteDeleteException,
                              ConcurrentDeleteReadException, ConcurrentTransactionException,
                              ConcurrentWriteException, MetadataChangedException,
                              ProtocolChangedException)
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import faults
from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.log import log
from jobs.io.session import is_connect

SCHEMA_VERSION = "3"
TABLE_PROPERTY = "gio-spark.table"
SCHEMA_PROPERTY = "gio-spark.schema"

# The texts' vectors, one row per distinct text and model (the store the embed stage looks texts
# up in before it runs the model, and appends to chunk by chunk).
TEXT_EMBEDDINGS = T.StructType([
    T.StructField("model_id", T.StringType(), False),
    T.StructField("text_hash", T.StringType(), False),        # SHA-256 of the text, hex
    T.StructField("embedding", T.ArrayType(T.FloatType(), False), False),
])
EMBEDDINGS = T.StructType([
    T.StructField("embeddings_id", T.StringType(), False),
    T.StructField("row_id", T.StringType(), False),
    T.StructField("embedding", T.ArrayType(T.FloatType(), False), False),
])
CENTROIDS = T.StructType([
    T.StructField("clustering_id", T.StringType(), False),
    T.StructField("side", T.StringType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("centroid", T.ArrayType(T.FloatType(), False), False),
    T.StructField("size", T.LongType(), False),
])
ASSIGNMENTS = T.StructType([
    T.StructField("clustering_id", T.StringType(), False),
    T.StructField("row_id", T.StringType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
])
SET_ASIDE = T.StructType([
    T.StructField("clustering_id", T.StringType(), False),
    T.StructField("row_id", T.StringType(), False),          # the pool row set aside
    T.StructField("copy_of", T.StringType(), False),         # the row it copies
    T.StructField("side", T.StringType(), False),            # where that row is: target
    T.StructField("cosine", T.DoubleType(), False),
])
SELECTION = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("select_fingerprint", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("cluster_size", T.LongType(), False),
    T.StructField("kl_after", T.DoubleType(), False),
])
SELECTION_DOMAINS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),            # the pick's rank in selection
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("domain", T.StringType(), False),           # the target domain it serves
    T.StructField("how", T.StringType(), False),              # share, or nearest (GIO's choice)
])
RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("select_fingerprint", T.StringType(), False),
    T.StructField("clustering_id", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),          # JSON of the whole config
    T.StructField("kl_start", T.DoubleType(), True),
    T.StructField("kl_curve", T.ArrayType(T.DoubleType(), False), False),
    T.StructField("stop_reason", T.StringType(), False),
    T.StructField("picks", T.IntegerType(), False),
    T.StructField("pool_centroids", T.IntegerType(), False),
    T.StructField("target_centroids", T.IntegerType(), False),
    T.StructField("dim", T.DoubleType(), False),             # the estimator's d
    T.StructField("mmd_curve", T.ArrayType(T.DoubleType(), False), True),   # stop rule mmd
    T.StructField("diagnostics", T.StringType(), True),      # JSON: noise floor, warm-up, ...
    T.StructField("inputs", T.StringType(), True),           # JSON: rows read and dropped per side
    T.StructField("timings", T.StringType(), False),         # JSON: seconds per step
    T.StructField("versions", T.StringType(), False),        # JSON: library versions
])
STAGES = T.StructType([
    T.StructField("stage", T.StringType(), False),
    T.StructField("key", T.StringType(), False),
    T.StructField("fingerprint", T.StringType(), False),
    T.StructField("status", T.StringType(), False),          # started or done
    T.StructField("at", T.TimestampType(), False),
    T.StructField("at_ns", T.LongType(), False),             # orders records of one instant
    T.StructField("detail", T.StringType(), True),           # JSON, stage-specific
])
FEATURE_WEIGHTS = T.StructType([
    T.StructField("weights_id", T.StringType(), False),
    T.StructField("weights_fingerprint", T.StringType(), False),
    T.StructField("feature", T.IntegerType(), False),        # index in space A
    T.StructField("name", T.StringType(), False),            # column, or column[index]
    T.StructField("weight", T.DoubleType(), False),          # as learnt (DADApy's |w|)
    T.StructField("scaled", T.DoubleType(), False),          # weight / max weight: what quantize uses
])
WEIGHT_RUNS = T.StructType([
    T.StructField("weights_id", T.StringType(), False),
    T.StructField("weights_fingerprint", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),          # JSON of the whole config
    T.StructField("space_a", T.StringType(), False),         # JSON: kind, columns, features
    T.StructField("space_b", T.StringType(), False),         # JSON: kind, columns (labels)
    T.StructField("points", T.IntegerType(), False),         # rows sampled and trained on
    T.StructField("features", T.IntegerType(), False),       # D_A
    T.StructField("dii_curve", T.ArrayType(T.DoubleType(), False), False),   # [epochs + 1]
    T.StructField("weights_curve", T.ArrayType(T.ArrayType(T.DoubleType(), True), True),
                  False),                                    # [epochs + 1, D_A]
    T.StructField("dii_final", T.DoubleType(), False),
    T.StructField("dii_error", T.DoubleType(), True),
    T.StructField("greedy", T.StringType(), True),           # JSON: the best set per size
    T.StructField("inputs", T.StringType(), True),           # JSON: rows read and dropped
    T.StructField("timings", T.StringType(), False),
    T.StructField("versions", T.StringType(), False),
])
# Fields of a struct inside an array must be nullable in Delta.
EPOCH = T.StructType([
    T.StructField("epoch", T.IntegerType(), True),
    T.StructField("lr", T.DoubleType(), True),
    T.StructField("train_loss", T.DoubleType(), True),
    T.StructField("train_accuracy", T.DoubleType(), True),
    T.StructField("val_loss", T.DoubleType(), True),
    T.StructField("val_accuracy", T.DoubleType(), True),
    T.StructField("steps", T.IntegerType(), True),
    T.StructField("steps_taken", T.IntegerType(), True),     # GAF: steps where some agreed
    T.StructField("mean_agreed", T.DoubleType(), True),       # GAF: micro-batches fused a step
    T.StructField("memorised", T.DoubleType(), True),         # label_noise: flipped rows learnt
    T.StructField("seconds", T.DoubleType(), True),
])
TRAIN_RUNS = T.StructType([
    T.StructField("train_id", T.StringType(), False),
    T.StructField("train_fingerprint", T.StringType(), False),
    T.StructField("arm", T.StringType(), False),              # selection, or random (baseline)
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),           # JSON of the whole config
    T.StructField("rows_from", T.StringType(), False),        # JSON: run, source or pool sample
    T.StructField("train_rows", T.IntegerType(), False),
    T.StructField("val_rows", T.IntegerType(), False),
    T.StructField("classes", T.ArrayType(T.StringType(), False), False),
    T.StructField("model", T.StringType(), False),            # JSON: kind, layer sizes
    T.StructField("method", T.StringType(), False),           # gaf or sgd
    T.StructField("history", T.ArrayType(EPOCH, True), False),   # one record per epoch
    T.StructField("val_accuracy", T.DoubleType(), False),     # after the last epoch
    T.StructField("val_loss", T.DoubleType(), False),
    T.StructField("best_val_accuracy", T.DoubleType(), False),
    T.StructField("inputs", T.StringType(), True),            # JSON: rows read and dropped
    T.StructField("timings", T.StringType(), False),
    T.StructField("versions", T.StringType(), False),
])
MODELS = T.StructType([
    T.StructField("train_id", T.StringType(), False),
    T.StructField("train_fingerprint", T.StringType(), False),
    T.StructField("arm", T.StringType(), False),
    T.StructField("kind", T.StringType(), False),             # logistic or mlp
    T.StructField("sizes", T.ArrayType(T.IntegerType(), False), False),   # [features, ..., classes]
    T.StructField("classes", T.ArrayType(T.StringType(), False), False),  # output i's label
    T.StructField("feature_mean", T.ArrayType(T.DoubleType(), False), False),
    T.StructField("feature_scale", T.ArrayType(T.DoubleType(), False), False),
    T.StructField("features", T.StringType(), False),         # JSON: where features came from
    T.StructField("params_format", T.StringType(), False),    # gio_core.gaf.PARAMS_FORMAT
    T.StructField("params", T.BinaryType(), False),           # gio_core.gaf.mlp_to_bytes
])
EVALUATIONS = T.StructType([
    T.StructField("eval_id", T.StringType(), False),
    T.StructField("eval_fingerprint", T.StringType(), False),
    T.StructField("run_id", T.StringType(), False),           # the selection evaluated
    T.StructField("method", T.StringType(), False),           # selection, gio_rows, random, ...
    T.StructField("rows", T.IntegerType(), False),            # rows it chose from the sample
    T.StructField("mmd", T.DoubleType(), False),              # MMD² to the held-out rows
    T.StructField("knn_kl", T.DoubleType(), True),
    T.StructField("share", T.DoubleType(), True),             # rows from the target's domains
    T.StructField("recall", T.DoubleType(), True),            # of the sample's such rows
    T.StructField("accuracy", T.DoubleType(), True),          # the probe's, on the held-out rows
    T.StructField("wall_s", T.DoubleType(), True),            # null for the selection itself
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),           # JSON of the whole config
    T.StructField("detail", T.StringType(), False),           # JSON: sample, bandwidth, inputs
    T.StructField("versions", T.StringType(), False),
])
IMNN_HISTORY = T.StructType(
    [T.StructField("imnn_id", T.StringType(), False),
     T.StructField("imnn_fingerprint", T.StringType(), False),
     T.StructField("iteration", T.IntegerType(), False)]
    + [T.StructField(prefix + name, T.DoubleType(), True)
       for prefix in ("", "val_") for name in ("detF", "detC", "detinvC", "lambda2", "r",
                                                "loss")])
_MATRIX = T.ArrayType(T.ArrayType(T.DoubleType(), True), True)    # Delta: no NOT NULL in arrays
IMNN_FITS = T.StructType([
    T.StructField("imnn_id", T.StringType(), False),
    T.StructField("imnn_fingerprint", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),           # JSON of the whole config
    T.StructField("simulations", T.StringType(), False),      # JSON: path, version, counts
    T.StructField("network", T.StringType(), False),          # JSON: gio_core.imnn.mlp's spec
    T.StructField("theta_fid", T.ArrayType(T.DoubleType(), False), False),
    T.StructField("weights_format", T.StringType(), False),
    T.StructField("weights", T.BinaryType(), False),          # the chosen (best or final) ones
    T.StructField("final_weights", T.BinaryType(), False),
    T.StructField("F", _MATRIX, False),
    T.StructField("C", _MATRIX, False),
    T.StructField("invC", _MATRIX, False),
    T.StructField("invF", _MATRIX, False),
    T.StructField("dmu_dtheta", _MATRIX, False),
    T.StructField("mu", T.ArrayType(T.DoubleType(), False), False),
    T.StructField("det_F", T.DoubleType(), False),            # of the chosen weights
    T.StructField("max_det_F", T.DoubleType(), False),
    T.StructField("iterations", T.IntegerType(), False),
    T.StructField("stopped_by", T.StringType(), False),       # patience or max_iterations
    T.StructField("mode", T.StringType(), False),             # spark or local
    T.StructField("timings", T.StringType(), False),
    T.StructField("versions", T.StringType(), False),
])
DATAMODELS_WEIGHTS = T.StructType([
    T.StructField("regress_id", T.StringType(), False),
    T.StructField("target", T.IntegerType(), False),          # position in the outputs array
    T.StructField("train_index", T.IntegerType(), False),     # position in the masks array
    T.StructField("weight", T.DoubleType(), False),           # nonzero, on the masks' own scale
])
DATAMODELS_FITS = T.StructType([
    T.StructField("regress_id", T.StringType(), False),
    T.StructField("regress_fingerprint", T.StringType(), False),
    T.StructField("target", T.IntegerType(), False),
    T.StructField("bias", T.DoubleType(), False),
    T.StructField("lam", T.DoubleType(), False),              # the chosen lambda
    T.StructField("lam_max", T.DoubleType(), False),
    T.StructField("lambdas_tried", T.IntegerType(), False),
    T.StructField("nonzeros", T.IntegerType(), False),
    T.StructField("train_mse", T.DoubleType(), True),
    T.StructField("val_mse", T.DoubleType(), True),
    T.StructField("val_r", T.DoubleType(), True),
    T.StructField("test_mse", T.DoubleType(), True),
    T.StructField("test_r", T.DoubleType(), True),
    T.StructField("iterations", T.LongType(), False),
    T.StructField("converged", T.BooleanType(), False),
    T.StructField("path_val_mse", T.ArrayType(T.DoubleType(), True), True),   # per lambda tried
])
DATAMODELS_REGRESSIONS = T.StructType([
    T.StructField("regress_id", T.StringType(), False),
    T.StructField("regress_fingerprint", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("params", T.StringType(), False),           # JSON of the whole config
    T.StructField("store", T.StringType(), False),            # JSON: path, version, spec, keys
    T.StructField("train_models", T.ArrayType(T.LongType(), True), False),   # store indices
    T.StructField("val_models", T.ArrayType(T.LongType(), True), False),
    T.StructField("test_models", T.ArrayType(T.LongType(), True), False),
    T.StructField("targets", T.IntegerType(), False),
    T.StructField("training_examples", T.IntegerType(), False),
    T.StructField("summary", T.StringType(), False),          # JSON: mean r, nonzeros, ...
    T.StructField("timings", T.StringType(), False),
    T.StructField("versions", T.StringType(), False),
])
SELECTED_EXTRA = T.StructType([
    T.StructField("cluster_id", T.IntegerType(), True),
    T.StructField("rank", T.IntegerType(), True),
    T.StructField("run_id", T.StringType(), True),
])

SCHEMAS = {"text_embeddings": TEXT_EMBEDDINGS,
           "pool_embeddings": EMBEDDINGS, "target_embeddings": EMBEDDINGS,
           "centroids": CENTROIDS, "pool_assignments": ASSIGNMENTS, "set_aside": SET_ASIDE,
           "selection": SELECTION, "selection_domains": SELECTION_DOMAINS,
           "runs": RUNS, "feature_weights": FEATURE_WEIGHTS, "weight_runs": WEIGHT_RUNS,
           "train_runs": TRAIN_RUNS, "models": MODELS, "evaluations": EVALUATIONS,
           "imnn_history": IMNN_HISTORY,
           "imnn_fits": IMNN_FITS, "datamodels_weights": DATAMODELS_WEIGHTS,
           "datamodels_fits": DATAMODELS_FITS, "datamodels_regressions": DATAMODELS_REGRESSIONS,
           "stages": STAGES}
KEYS = {"text_embeddings": "model_id",
        "pool_embeddings": "embeddings_id", "target_embeddings": "embeddings_id",
        "centroids": "clustering_id", "pool_assignments": "clustering_id",
        "set_aside": "clustering_id", "selection": "run_id", "selection_domains": "run_id", "runs": "run_id", "selected_rows": "run_id",
        "feature_weights": "weights_id", "weight_runs": "weights_id",
        "train_runs": "train_id", "models": "train_id", "evaluations": "eval_id",
        "imnn_history": "imnn_id",
        "imnn_fits": "imnn_id", "datamodels_weights": "regress_id",
        "datamodels_fits": "regress_id", "datamodels_regressions": "regress_id", "stages": None}
TABLES = tuple(KEYS)

MAX_ATTEMPTS = 8

# Object stores and distributed file systems: their files are not looked at with os.
_REMOTE = ("s3://", "s3a://", "s3n://", "gs://", "hdfs://", "abfs://", "abfss://", "dbfs:/",
           "wasb://", "wasbs://")


def is_remote(path: str) -> bool:
    """Whether ``path`` names a location on an object store or a distributed file system."""
    return path.startswith(_REMOTE)


def on_file_system(path: str) -> bool:
    """Whether ``path`` is reached through Hadoop's FileSystem rather than ``os``: an object
    store or a distributed file system (any ``scheme://`` but ``file:``, and ``dbfs:/``)."""
    return is_remote(path) or ("://" in path and not path.startswith("file:"))


def delta_ref(path: str) -> str:
    """``path`` as SQL names a Delta table by its location: delta.`path`."""
    return "delta.`" + path.replace("`", "``") + "`"


def delta_detail(spark: SparkSession, table: str):
    """``DESCRIBE DETAIL`` of a Delta table (``table``: a catalog name or :func:`delta_ref`),
    or None where there is none (nothing there, another format, a view). SQL, so that it works
    on a Spark Connect session as on a classic one."""
    from pyspark.errors import AnalysisException
    try:
        row = spark.sql(f"DESCRIBE DETAIL {table}").first()
    except AnalysisException:
        return None
    return row if row is not None and row["format"] == "delta" else None


def delta_version(spark: SparkSession, table: str) -> int:
    """The latest version of a Delta table (a catalog name or :func:`delta_ref`)."""
    return int(spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").select("version").first()[0])


def _listing(spark: SparkSession, path: str, recursive: bool = True):
    """On Spark Connect (no Hadoop FileSystem on the client): the files under ``path`` as the
    server lists them, ``[(path, size, modification time in ms)]``, or None when nothing is
    there. Spark's listing leaves out names starting with ``_`` or ``.`` below ``path``."""
    from pyspark.errors import AnalysisException
    try:
        rows = (spark.read.format("binaryFile").option("recursiveFileLookup", str(recursive).lower())
                .load(path).select("path", "length", "modificationTime").collect())
    except AnalysisException as err:
        if "PATH_NOT_FOUND" in str(err):
            return None
        raise
    return [(r["path"], int(r["length"]), int(r["modificationTime"].timestamp() * 1000))
            for r in rows]


def hadoop_conf(spark: SparkSession):
    """The session's Hadoop configuration: the context's plus the session's own ``spark.conf``
    settings (credentials a notebook set with ``spark.conf.set`` included)."""
    return spark._jsparkSession.sessionState().newHadoopConf()


def _hadoop_path(spark: SparkSession | None, path: str):
    """``(Hadoop Path, its FileSystem)`` in the session's Hadoop configuration (``spark``, or
    the active or last session of this process)."""
    spark = spark or SparkSession.getActiveSession() or SparkSession._instantiatedSession
    hpath = spark._jvm.org.apache.hadoop.fs.Path(path)
    return hpath, hpath.getFileSystem(hadoop_conf(spark))


def remote_files(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """``(name relative to path, size, modification time in ms)`` of every file under a remote
    ``path`` (or of the file itself), listed through Hadoop's FileSystem, sorted; [] when
    nothing is there."""
    if is_connect(spark):
        from urllib.parse import urlparse
        listed = _listing(spark, path)
        if not listed:
            return []
        base = urlparse(path).path.rstrip("/") + "/"
        found = []
        for name, size, mtime in listed:
            rel = urlparse(name).path
            found.append((rel[len(base):] if rel.startswith(base) else os.path.basename(rel),
                          size, mtime))
        return sorted(found)
    hpath, fs = _hadoop_path(spark, path)
    if not fs.exists(hpath):
        return []
    root = fs.getFileStatus(hpath)
    if root.isFile():
        return [(hpath.getName(), int(root.getLen()), int(root.getModificationTime()))]
    base = str(fs.makeQualified(hpath).toUri().getPath()).rstrip("/") + "/"
    found, it = [], fs.listFiles(hpath, True)
    while it.hasNext():
        st = it.next()
        name = str(st.getPath().toUri().getPath())
        found.append((name[len(base):] if name.startswith(base) else name, int(st.getLen()),
                      int(st.getModificationTime())))
    return sorted(found)


def put_file(spark: SparkSession, dest: str, write: Callable[[str], bool | None]) -> bool:
    """Writes a side file (a plot, a report) to ``dest`` whatever its scheme: ``write(path)``
    writes it to a local path (``dest`` itself when it is local, a temporary file otherwise,
    then copied through Hadoop's FileSystem). Returns False when ``write`` returned False
    (nothing written). On Spark Connect the file goes through the server
    (``copyFromLocalToFs``) to a location without a scheme, in the server's default file system;
    where the server does not take it (a location with a scheme; a local file system, unless the
    server sets spark.connect.copyFromLocalToFs.allowDestLocal) a warning says so and nothing is
    written."""
    if spark is not None and is_connect(spark):
        return _put_through_server(spark, dest, write)
    if not on_file_system(dest):
        return write(dest.removeprefix("file:")) is not False
    with tempfile.TemporaryDirectory(prefix="gio-spark-put-") as folder:
        local = os.path.join(folder, os.path.basename(dest.rstrip("/")))
        if write(local) is False:
            return False
        with open(local, "rb") as f:
            data = f.read()
    # One stream of a few hundred kB at most: S3A writes it as one PUT on close (its transfer
    # manager, which copyFromLocalFile uses, is more than a plot needs).
    try:
        target, fs = _hadoop_path(spark, dest)
        stream = fs.create(target, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
    except Exception as err:  # noqa: BLE001 - a side file must not fail a committed stage
        log(f"warning: could not write {dest}: {str(err).splitlines()[0] if str(err) else err}")
        return False
    return True


def _put_through_server(spark: SparkSession, dest: str, write: Callable[[str], bool | None]) -> bool:
    with tempfile.TemporaryDirectory(prefix="gio-spark-put-") as folder:
        local = os.path.join(folder, os.path.basename(dest.rstrip("/")))
        if write(local) is False:
            return False
        try:
            spark.copyFromLocalToFs(local, dest.removeprefix("file:"))
        except Exception as err:  # noqa: BLE001 - a side file must not fail a committed stage
            details = getattr(err, "details", None)        # gRPC's own errors carry it
            why = details() if callable(details) else next(
                (line for line in str(err).splitlines() if line.strip()), str(err))
            log(f"warning: {dest} not written: the Spark Connect server did not take it "
                f"({str(why).strip()[:200]})")
            return False
    return True


def check_catalog_table(spark: SparkSession, name: str, schema: T.StructType) -> None:
    """``output.table``, if it exists, is a Delta table with the selected rows' columns.

    Raises:
      InputError: a table of another format or with other columns (never written into).
    """
    if not spark.catalog.tableExists(name):
        return
    fmt = spark.sql(f"DESCRIBE DETAIL {name}").select("format").first()[0]
    if fmt != "delta":
        raise InputError(f"output.table {name!r} is a {fmt} table; gio-spark writes selected "
                         "rows into a Delta table only. Name a new table (it is created).")
    have = [(f.name, f.dataType.simpleString()) for f in spark.table(name).schema.fields]
    want = [(f.name, f.dataType.simpleString()) for f in schema.fields]
    if have != want:
        raise InputError(f"output.table {name!r} has the columns "
                         f"{', '.join(n for n, _ in have)}, not the selected rows' "
                         f"{', '.join(n for n, _ in want)}; name a new table (it is created) or "
                         "one that runs on this pool wrote.")


def publish_rows(spark: SparkSession, name: str, rows: DataFrame, run_id: str) -> bool:
    """Writes a run's selected rows into the catalog table ``name``: created (Delta,
    partitioned by ``run_id``) when missing, else this run's rows replaced in one transaction.
    Returns False, writing nothing, when the table holds as many rows of the run already."""
    count = rows.count()
    if spark.catalog.tableExists(name):
        if spark.table(name).where(F.col("run_id") == run_id).count() == count:
            return False
        (rows.write.format("delta").mode("overwrite")
         .option("replaceWhere", f"run_id = '{run_id}'").saveAsTable(name))
    else:
        rows.write.format("delta").partitionBy("run_id").saveAsTable(name)
    return True


def table_path(output: str, name: str) -> str:
    return os.path.join(output, name)


def exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` is a Delta table now.

    ``DeltaTable.isDeltaTable`` answers from the Delta log this JVM cached for the path: once it
    has seen a folder whose ``_delta_log`` had no commit yet (another process creating the
    table), it keeps answering False after that commit lands. Reading the table refreshes the
    cached log, so a False with a ``_delta_log`` present is asked again after one.
    """
    if is_connect(spark):
        return delta_detail(spark, delta_ref(path)) is not None
    if DeltaTable.isDeltaTable(spark, path):
        return True
    if not path_exists(os.path.join(path, "_delta_log")):
        return False
    try:
        DeltaTable.forPath(spark, path)
    except Exception:               # noqa: BLE001 - not (yet) a table: Delta's AnalysisException
        return False
    return DeltaTable.isDeltaTable(spark, path)


def local_version(path: str) -> tuple | None:
    """The newest commit of the local Delta table at ``path``: ``(version, mtime, inode)`` of
    its newest commit file (a table deleted and made anew differs), ``(-1,)`` when there is
    none, ``(-2,)`` while it changes under us (equal to no other); None for a remote path. A
    few microseconds: what a process's caches of small tables are checked against."""
    if on_file_system(path):
        return None
    local = path.removeprefix("file:")
    folder = os.path.join(local, "_delta_log")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return (-1,)
    commits = [n for n in names if n.endswith(".json") and n[:20].isdigit()]
    if not commits:
        return (-1,)
    newest = max(commits)
    try:
        st = os.stat(os.path.join(folder, newest))
    except FileNotFoundError:
        return (-2,)
    return (int(newest[:20]), st.st_mtime_ns, st.st_ino)


def created_empty(path: str) -> bool:
    """Whether the local Delta table at ``path`` was created without rows: its first commit adds
    no file."""
    first = os.path.join(path.removeprefix("file:"), "_delta_log", f"{0:020d}.json")
    try:
        with open(first, encoding="utf-8") as f:
            return not any(line.startswith('{"add"') for line in f)
    except OSError:
        return False


def selected_rows_schema(pool_columns: T.StructType) -> T.StructType:
    """``selected_rows``: the pool's own columns (nullable) then cluster_id, rank, run_id."""
    own = [T.StructField(f.name, f.dataType, True) for f in pool_columns.fields]
    return T.StructType(own + list(SELECTED_EXTRA.fields))


# ---------------------------------------------------------------------------
# Concurrency: what counts as a conflict, and the bounded retry
# ---------------------------------------------------------------------------

_CONFLICT_MARKERS = ("io.delta.exceptions.Concurrent", "DELTA_CONCURRENT",
                     "io.delta.exceptions.MetadataChangedException",
                     "io.delta.exceptions.ProtocolChangedException",
                     "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
                     "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION",
                     "FileAlreadyExistsException")


def is_conflict(err: BaseException) -> bool:
    """Whether ``err`` is Delta's optimistic-concurrency failure (retrying may succeed)."""
    if isinstance(err, (ConcurrentAppendException, ConcurrentDeleteReadException,
                        ConcurrentDeleteDeleteException, ConcurrentTransactionException,
                        ConcurrentWriteException, MetadataChangedException,
                        ProtocolChangedException)):
        return True
    text = str(err)
    return any(marker in text for marker in _CONFLICT_MARKERS)


R = TypeVar("R")


def with_retries(action: Callable[[], R], what: str, attempts: int = MAX_ATTEMPTS,
                 transient: Callable[[BaseException], bool] | None = None) -> R:
    """Runs ``action``; on a Delta concurrency conflict (or an error ``transient`` accepts)
    waits (jittered, growing) and retries, at most ``attempts`` times in all, then raises
    :class:`ConcurrentRunError`."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:          # noqa: BLE001 - filtered by is_conflict
            if not is_conflict(err) and not (transient is not None and transient(err)):
                raise
            if attempt == attempts:
                raise ConcurrentRunError(
                    f"{what}: another run on the same output kept committing conflicting changes "
                    f"({attempts} attempts). Run it again when the other run has finished.") from None
            time.sleep(min(5.0, 0.2 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def at_once(spark: SparkSession, *calls: Callable[[], R]) -> list[R]:
    """Runs ``calls`` at the same time and returns their results in order, once every one has
    ended; then raises the first error, in the order of ``calls`` (the others' are logged).

    For a stage's writes that do not depend on each other: commits into different tables, a
    plot. Most of a small commit's time is Delta's planning on the driver's JVM and the wait for
    its few tasks, during which another commit's, or Python's drawing, can go on. Each call but
    the first runs in a :class:`pyspark.InheritableThread`, which keeps the caller's job group,
    job tags and local properties (a notebook's scheduler pool) where PySpark pins its threads
    (its default). Every call is waited for, also when another failed or the caller is
    interrupted meanwhile: nothing goes on writing after this returns or raises. A ``raise:``
    or ``pause:`` failure point (:mod:`jobs.common.faults`) in one call stops that call only.
    On Spark Connect the calls run one after another."""
    if len(calls) < 2 or is_connect(spark):
        return [call() for call in calls]
    from pyspark import InheritableThread

    ended: dict[int, tuple[bool, object]] = {}

    def runner(index: int, call: Callable[[], R]) -> Callable[[], None]:
        def run() -> None:
            try:
                ended[index] = (True, call())
            except BaseException as err:      # noqa: BLE001 - raised again by the caller
                ended[index] = (False, err)
        return run

    threads = []
    interrupted: BaseException | None = None
    try:
        for i, call in enumerate(calls[1:], start=1):
            thread = InheritableThread(runner(i, call), session=spark, daemon=False,
                                       name=f"gio-spark-commit-{i}")
            thread.start()
            threads.append(thread)
        runner(0, calls[0])()
    except BaseException as err:              # noqa: BLE001 - a thread that did not start
        interrupted = err
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except BaseException as err:      # noqa: BLE001 - Ctrl-C: wait, then raise it
                interrupted = interrupted or err
    if interrupted is not None:
        raise interrupted
    outcomes = [ended.get(i, (False, RuntimeError(f"the thread of write {i} ended without a "
                                                "result")))
              for i in range(len(calls))]
    failed = [value for done, value in outcomes if not done]
    for other in failed[1:]:
        log(f"another write of the same commit failed too: {type(other).__name__}: {other}")
    if failed:
        raise failed[0]                       # type: ignore[misc]
    return [value for _, value in outcomes]   # type: ignore[misc]


# ---------------------------------------------------------------------------
# Creating tables and checking existing ones
# ---------------------------------------------------------------------------

# Tables this process has created or checked: (path, name, schema). A gio-spark table keeps its
# properties and columns for life (writes conform to them), so one check per process suffices.
_CHECKED: set = set()


def _location(path: str) -> str:
    """``path`` as Delta's SQL takes it for a table's location: SQL's delta.`path` is a table
    name unless the path is absolute, so a relative one is made absolute; and Delta compares a
    location with the one it qualifies: file:///x is file:/x to Hadoop."""
    location = path if "://" in path or path.startswith("file:") else os.path.abspath(path)
    if location.startswith("file:///"):
        location = "file:/" + location[len("file:///"):]
    return location


def _properties(spark: SparkSession, path: str) -> dict:
    """The table's properties. ``SHOW TBLPROPERTIES`` reads them from the log's metadata;
    ``DESCRIBE DETAIL`` (or ``DeltaTable.detail``) also sizes the files, which costs a Spark
    job (0.3-0.8 s against 0.02 s for a table the process has not read yet). SQL, so that it
    works on Spark Connect as on a classic session."""
    rows = spark.sql(f"SHOW TBLPROPERTIES {delta_ref(_location(path))}").collect()
    return {row["key"]: row["value"] for row in rows}


def _describe(schema: T.StructType) -> dict:
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def check_existing(spark: SparkSession, output: str, name: str,
                   schema: T.StructType | None = None) -> bool:
    """Checks a table gio-spark is about to write, if it exists; returns whether it exists.

    Raises:
      InputError: the path holds something that is not a gio-spark table of this name and
        version, or one with other columns.
    """
    path = table_path(output, name)
    want = schema if schema is not None else SCHEMAS.get(name)
    memo = (path, name, None if want is None else want.simpleString())
    if memo in _CHECKED:
        if path_exists(os.path.join(path, "_delta_log")):
            return True
        _CHECKED.discard(memo)        # deleted since: check (and create) it anew
    if not path_exists(path):
        return False
    if not exists(spark, path) and not _created_meanwhile(spark, path):
        if _abandoned_creation(path):
            # No commit: what an interrupted creation left. Removed, then created; unless
            # something there is still changing (a run writing it right now).
            idle = _idle_s(path.removeprefix("file:"))
            if idle < CREATION_WAIT_S:
                raise ConcurrentRunError(
                    f"{path} holds the uncommitted files of a table being created, changed "
                    f"{idle:.0f} s ago: another run is creating it. Run again when it has "
                    "finished.")
            log(f"warning: {path} holds only an interrupted creation's files (no "
                "commit); creating the table anew.")
            shutil.rmtree(path.removeprefix("file:"), ignore_errors=True)
            _CHECKED.discard(memo)
            return False
        raise InputError(f"output.path {output!r} already holds {name!r}, which is not a Delta "
                         "table written by gio-spark; gio-spark never writes into data it did not "
                         "create. Use another output.path.")
    props = _properties(spark, path)
    if props.get(TABLE_PROPERTY) != name:
        raise InputError(f"the Delta table {path!r} was not created by gio-spark (it lacks the "
                         f"property {TABLE_PROPERTY}={name}); gio-spark never writes into a table "
                         "it did not create. Use another output.path.")
    if props.get(SCHEMA_PROPERTY) != SCHEMA_VERSION:
        raise InputError(f"the table {path!r} was written by another version of gio-spark "
                         f"(schema {props.get(SCHEMA_PROPERTY)!r}, this version writes "
                         f"{SCHEMA_VERSION!r}). Use another output.path.")
    if want is not None:
        have = _describe(spark.read.format("delta").load(path).schema)
        if have != _describe(want):
            extra = "" if name != "selected_rows" else (
                " It holds the selections of a pool with other columns.")
            raise InputError(f"the table {path!r} has the columns {have}, not the expected "
                             f"{_describe(want)}.{extra} Use another output.path.")
    _CHECKED.add(memo)
    return True


CREATION_WAIT_S = 30.0


_COMMIT = re.compile(r"^\d{20}\.(json|checkpoint.*|crc)$")


def _idle_s(local: str) -> float:
    """Seconds since anything under the local folder ``local`` last changed."""
    newest = 0.0
    for root, dirs, files in os.walk(local):
        for n in dirs + files:
            try:
                newest = max(newest, os.stat(os.path.join(root, n)).st_mtime)
            except FileNotFoundError:
                continue
    return time.time() - newest if newest else float("inf")


def _uncommitted_only(local: str, names: list) -> bool:
    """Whether a table folder's entries (``names``) are only what a creation that has not
    committed yet leaves: its ``_delta_log``, hidden files, and the data files a ``CREATE TABLE
    ... AS SELECT`` writes before its commit (``part-*`` files, at the top or in folders of the
    table's partition column, ``<key>=<value>``)."""
    name = os.path.basename(local.rstrip("/"))
    key = KEYS.get(name)
    for n in names:
        if n == "_delta_log" or n.startswith("."):
            continue
        full = os.path.join(local, n)
        if n.startswith("part-") and os.path.isfile(full):
            continue
        if key and n.startswith(f"{key}=") and os.path.isdir(full) and all(
                m.startswith(("part-", ".")) for m in os.listdir(full)):
            continue
        return False
    return True


def _abandoned_creation(path: str) -> bool:
    """Whether a local folder is what an interrupted table creation leaves (a full disk, a
    killed process): a ``_delta_log`` without any commit, hidden temporary files, empty folders,
    and the uncommitted data files of a creation with its first rows (:func:`_created_with`).
    Nothing in it is a table's data, so it is removed and the table created anew."""
    local = path.removeprefix("file:")
    if "://" in local or not os.path.isdir(os.path.join(local, "_delta_log")):
        return False
    try:
        if not _uncommitted_only(local, os.listdir(local)):
            return False
    except FileNotFoundError:            # changing under us: not abandoned
        return False
    for _, _, names in os.walk(os.path.join(local, "_delta_log")):
        if any(_COMMIT.match(n) for n in names):
            return False
    return True


def _created_meanwhile(spark: SparkSession, path: str) -> bool:
    """Whether a folder that is not (yet) a Delta table is one that a concurrent run is creating:
    it holds nothing but what a creation leaves before its commit (:func:`_uncommitted_only`)
    and becomes a Delta table within ``CREATION_WAIT_S`` (longer while its files change). A
    folder with any other file is someone else's data."""
    local = path.removeprefix("file:")
    if "://" in local or not os.path.isdir(local):
        return False
    start = time.monotonic()
    while True:
        try:
            names = os.listdir(local)
            if not _uncommitted_only(local, names):
                return False
        except FileNotFoundError:
            return False
        if exists(spark, path):
            return True
        waited = time.monotonic() - start
        # Waits CREATION_WAIT_S, and on while something there changed less than that ago (a
        # creation's data files come just before its commit), at most three times as long.
        if waited >= CREATION_WAIT_S and (waited >= 3 * CREATION_WAIT_S
                                          or _idle_s(local) >= CREATION_WAIT_S):
            return False
        time.sleep(0.5)


def path_exists(path: str) -> bool:
    """Whether anything is at ``path``; a remote one is asked through Hadoop's FileSystem (in the
    active session's configuration)."""
    if on_file_system(path):
        spark = SparkSession.getActiveSession() or SparkSession._instantiatedSession
        if is_connect(spark):
            return _listing(spark, path, recursive=False) is not None
        hpath, fs = _hadoop_path(spark, path)
        return bool(fs.exists(hpath))
    return os.path.exists(path.removeprefix("file:"))


def ensure_table(spark: SparkSession, output: str, name: str,
                 schema: T.StructType | None = None) -> str:
    """Creates the table if it does not exist (race-free), checks it, returns its path."""
    path = table_path(output, name)
    schema = schema if schema is not None else SCHEMAS[name]

    if check_existing(spark, output, name, schema):
        return path

    location = _location(path)

    def create():
        if is_connect(spark):
            # No DeltaTable API on a Connect client: the same in SQL, one commit. The columns
            # come from an empty frame (DDL cannot name a user-defined type: an MLlib vector).
            parts = f" PARTITIONED BY (`{KEYS[name]}`)" if KEYS[name] else ""
            spark.sql(f"CREATE TABLE IF NOT EXISTS {delta_ref(location)} USING delta{parts} "
                      f"TBLPROPERTIES ('{TABLE_PROPERTY}' = '{name}', "
                      f"'{SCHEMA_PROPERTY}' = '{SCHEMA_VERSION}') AS SELECT * FROM {{empty}}",
                      empty=spark.createDataFrame([], schema))
        elif not exists(spark, path):
            builder = (DeltaTable.createIfNotExists(spark).location(location).addColumns(schema)
                       .property(TABLE_PROPERTY, name).property(SCHEMA_PROPERTY, SCHEMA_VERSION))
            if KEYS[name]:
                builder = builder.partitionedBy(KEYS[name])
            builder.execute()

    def being_created(err: BaseException) -> bool:
        # Another run's creation under way: its _delta_log is there, its first commit not yet
        # (Delta then reports the table as not found). Seen with three runs creating at once.
        return "DELTA_TABLE_NOT_FOUND" in str(err) and path_exists(os.path.join(path,
                                                                                 "_delta_log"))

    with_retries(create, f"creating {path}", transient=being_created)
    with_retries(lambda: check_existing(spark, output, name, schema), f"checking {path}",
                 transient=being_created)
    return path


# ---------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------

def read_table(spark: SparkSession, output: str, name: str) -> DataFrame:
    """Reads one of gio-spark's tables after checking that it is one."""
    path = table_path(output, name)
    if not path_exists(path) or not exists(spark, path):
        raise InputError(f"table {name!r} does not exist under {output!r}; run the stage that "
                         "writes it first (or the whole pipeline).")
    check_existing(spark, output, name, None if name == "selected_rows" else SCHEMAS[name])
    return spark.read.format("delta").load(path)


def stored_keys(spark: SparkSession, output: str, name: str) -> list[str] | None:
    """The keys (sorted) that one of gio-spark's tables holds, or None when it does not exist."""
    path = table_path(output, name)
    if not path_exists(path) or not exists(spark, path):
        return None
    return sorted(r[0] for r in read_table(spark, output, name).select(KEYS[name]).distinct()
                  .collect())


def read_key(spark: SparkSession, output: str, name: str, value: str) -> DataFrame:
    """The rows of one key (partition) of a gio-spark table."""
    return read_table(spark, output, name).where(F.col(KEYS[name]) == value)


def _relaxed(dtype: T.DataType) -> T.DataType:
    return T.ArrayType(dtype.elementType, True) if isinstance(dtype, T.ArrayType) else dtype


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Casts and orders ``df``'s columns to ``schema``'s types."""
    return df.select([F.col(f.name).cast(_relaxed(f.dataType)).alias(f.name)
                      for f in schema.fields])


# A few rows of small tables (a run's record, its selection) as this process last wrote or read
# them: (table path, key) -> (the table's local version then, rows). Used while the table has
# no newer commit, so a stage reading what an earlier stage of the same run has just committed
# does not pay for Delta's snapshot of the new version (three Spark jobs); any other commit in
# between makes it read the table. Remote tables are read each time.
_ROWS: dict = {}


def key_rows(spark: SparkSession, output: str, name: str, value: str) -> list:
    """The rows of one key of a small gio-spark table, as Rows in the table's column order."""
    path = table_path(output, name)
    version = local_version(path)
    memo = _ROWS.get((path, value))
    if memo is not None and version is not None and len(version) == 3 and memo[0] == version:
        return list(memo[1])
    rows = read_key(spark, output, name, value).collect()
    if version is not None and len(version) == 3:
        _ROWS[(path, value)] = (version, rows)
    return list(rows)


def _created_with(spark: SparkSession, data: DataFrame, output: str, name: str,
                  schema: T.StructType) -> bool:
    """Creates a table that did not exist when looked at (:func:`_first_write`) *with* ``data``
    as its first rows, in one commit
    (``CREATE TABLE ... AS SELECT``), instead of a creation and a write: about 0.7 s less a new
    table. For a few rows made on the driver only, so that the statement fails only where
    another run created the table first; then nothing is committed and False is returned (the
    caller writes as into any existing table). Any other failure is raised. A kill or a failure
    inside it leaves uncommitted files, which the next run waits for, until nothing has changed
    there for ``CREATION_WAIT_S``, and then removes (see :func:`_created_meanwhile`). Delta
    makes the columns of a table created so nullable (as on Spark Connect, where every table is
    created so); gio-spark's writes conform to the schema either way."""
    path = table_path(output, name)
    parts = f" PARTITIONED BY (`{KEYS[name]}`)" if KEYS[name] else ""
    try:
        # One task: its data file is written just before the commit, so an uncommitted file
        # that stays unchanged is an interrupted creation's (see _created_meanwhile).
        spark.sql(f"CREATE TABLE {delta_ref(_location(path))} USING delta{parts} "
                  f"TBLPROPERTIES ('{TABLE_PROPERTY}' = '{name}', "
                  f"'{SCHEMA_PROPERTY}' = '{SCHEMA_VERSION}') AS SELECT * FROM {{data}}",
                  data=data.coalesce(1))
    except Exception:                 # noqa: BLE001 - a race is told by a commit being there
        version = local_version(path)
        if (version is not None and len(version) == 3) or (version is None
                                                           and exists(spark, path)):
            return False              # another run created it meanwhile: write into it
        raise                         # a real error (its uncommitted files: see the docstring)
    check_existing(spark, output, name, schema)
    return True


def _first_write(spark: SparkSession, data: DataFrame, output: str, name: str,
                 schema: T.StructType, local: bool) -> bool:
    """For ``local`` rows and a table that does not exist yet: the failure point before the
    write, then :func:`_created_with`; whether that created the table with the rows."""
    if not local or check_existing(spark, output, name, schema):
        return False
    if name != "stages":
        faults.point(f"before:{name}")
    return _created_with(spark, data, output, name, schema)


def _version_written(before: tuple | None, after: tuple | None) -> tuple | None:
    """``after`` when the commit it names is the write just made (no other came between)."""
    if (before is not None and after is not None and len(after) == 3
            and (before == (-1,) and after[0] == 0
                 or len(before) == 3 and after[0] == before[0] + 1)):
        return after
    return None


def replace_key(spark: SparkSession, df: DataFrame, output: str, name: str, value: str,
                schema: T.StructType | None = None, local: bool = False,
                remember: bool | list = False) -> tuple | None:
    """Replaces the rows of one key with ``df`` in one transaction (creating the table first).

    ``df`` must hold only rows of that key; they are conformed to the table's schema. Other
    keys' rows are never touched; a concurrent conflict is retried. ``local``: ``df`` is made on
    the driver (a few rows, or centroids): a new table is created with them in one commit.
    ``remember``: a few rows, kept for :func:`key_rows`: True collects them from ``df``; a
    list gives them (the tuples ``df`` was made of, in the schema's column order), which spares
    that Spark job. Returns the table's local version that
    this write made (None when unknown: a remote table, or another commit came between).
    """
    schema = schema if schema is not None else SCHEMAS[name]
    path = table_path(output, name)
    column = KEYS[name]
    escaped = str(value).replace("'", "''")
    data = conform(df.where(F.col(column) == value), schema)
    if isinstance(remember, list):
        make = Row(*schema.names)
        rows = [make(*r) for r in remember]
    else:
        rows = data.collect() if remember else None
    _ROWS.pop((path, value), None)
    before = local_version(path)
    if not _first_write(spark, data, output, name, schema, local):
        ensure_table(spark, output, name, schema)
        before = local_version(path)
        faults.point(f"before:{name}")
        with_retries(lambda: data.write.format("delta").mode("overwrite")
                     .option("replaceWhere", f"{column} = '{escaped}'").save(path),
                     f"writing {path}")
    mine = _version_written(before, local_version(path))
    if rows is not None and mine is not None:
        _ROWS[(path, value)] = (mine, rows)
    faults.point(f"after:{name}")
    return mine


def append(spark: SparkSession, df: DataFrame, output: str, name: str,
           local: bool = False) -> tuple | None:
    """Appends ``df`` (a blind append: never conflicts with other writers). ``local``: ``df``
    is a few rows made on the driver (see :func:`replace_key`). Returns the local version this
    append made, as :func:`replace_key` does."""
    path = table_path(output, name)
    data = conform(df, SCHEMAS[name])
    before = local_version(path)
    if not _first_write(spark, data, output, name, SCHEMAS[name], local):
        ensure_table(spark, output, name)
        before = local_version(path)
        if name != "stages":             # the stage log has failure points of its own
            faults.point(f"before:{name}")
        with_retries(lambda: data.write.format("delta").mode("append").save(path),
                     f"writing {path}")
    mine = _version_written(before, local_version(path))
    if name != "stages":
        faults.point(f"after:{name}")
    return mine


def detail_json(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)
