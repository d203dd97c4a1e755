"""The Delta tables gio-spark writes: their schemas (declared here and nowhere else), where they
live, and the helpers that write each output as one Delta transaction.

Under ``output.path``:

| table | columns | written by |
| --- | --- | --- |
| ``pool_embeddings``, ``target_embeddings`` | row_id, embedding | embed (text sources only) |
| ``centroids`` | side, cluster_id, centroid, size | quantize (replaces that side's rows) |
| ``pool_assignments`` | row_id, cluster_id | quantize |
| ``selection`` | run_id, rank, cluster_id, cluster_size, kl_after | select (replaces that run's rows) |
| ``runs`` | run_id, params, kl_start, kl_curve, stop_reason, ... | select (replaces that run's row) |
| ``selected_rows`` | the pool's own columns + cluster_id, rank, run_id | explode (replaces that run's rows) |
| ``stages`` | stage, fingerprint, finished_at | every stage, after its output is committed |
"""
from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import ConfigError

EMBEDDINGS = T.StructType([
    T.StructField("row_id", T.StringType(), False),
    T.StructField("embedding", T.ArrayType(T.FloatType(), False), False),
])
CENTROIDS = T.StructType([
    T.StructField("side", T.StringType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("centroid", T.ArrayType(T.FloatType(), False), False),
    T.StructField("size", T.LongType(), False),
])
ASSIGNMENTS = T.StructType([
    T.StructField("row_id", T.StringType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
])
SELECTION = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("cluster_size", T.LongType(), False),
    T.StructField("kl_after", T.DoubleType(), False),
])
RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
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
    T.StructField("timings", T.StringType(), False),         # JSON: seconds per step
    T.StructField("versions", T.StringType(), False),        # JSON: library versions
])
STAGES = T.StructType([
    T.StructField("stage", T.StringType(), False),
    T.StructField("fingerprint", T.StringType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
])
SELECTED_EXTRA = ("cluster_id", "rank", "run_id")

SCHEMAS = {"pool_embeddings": EMBEDDINGS, "target_embeddings": EMBEDDINGS,
           "centroids": CENTROIDS, "pool_assignments": ASSIGNMENTS, "selection": SELECTION,
           "runs": RUNS, "stages": STAGES}


def table_path(output: str, name: str) -> str:
    return os.path.join(output, name)


def exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable
    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark: SparkSession, output: str, name: str) -> DataFrame:
    """Reads one of gio-spark's tables and checks its schema against the declared one."""
    path = table_path(output, name)
    if not exists(spark, path):
        raise ConfigError(f"table {name!r} does not exist under {output!r}; run the stage that "
                          "writes it first (or the whole pipeline).")
    df = spark.read.format("delta").load(path)
    want = SCHEMAS.get(name)
    if want is not None:
        have = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        for f in want.fields:
            if have.get(f.name) != f.dataType.simpleString():
                raise ConfigError(f"table {path!r} does not have the expected column "
                                  f"{f.name} {f.dataType.simpleString()}; it was not written by "
                                  "this version of gio-spark. Use another output.path.")
    return df


def _relaxed(dtype: T.DataType) -> T.DataType:
    return T.ArrayType(dtype.elementType, True) if isinstance(dtype, T.ArrayType) else dtype


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Casts and orders ``df``'s columns to ``schema``'s types."""
    return df.select([F.col(f.name).cast(_relaxed(f.dataType)).alias(f.name)
                      for f in schema.fields])


def overwrite(spark: SparkSession, df: DataFrame, path: str, partition_by=None) -> None:
    """Replaces the whole table in one transaction."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.save(path)


def replace_where(spark: SparkSession, df: DataFrame, path: str, column: str, value: str,
                  partition_by=None) -> None:
    """Replaces the rows with ``column = value`` in one transaction (creating the table if
    needed): re-running a run replaces its rows and never duplicates them."""
    writer = df.write.format("delta")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    if exists(spark, path):
        escaped = str(value).replace("'", "''")
        writer.mode("overwrite").option("replaceWhere", f"{column} = '{escaped}'").save(path)
    else:
        writer.mode("overwrite").save(path)
