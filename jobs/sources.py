"""Readers for the pool and target sides, with the checks that run before any heavy work.

Every side becomes a DataFrame with the source's own columns plus

* ``row_id`` (string): the configured id column, or else a SHA-256 of the row's content (stable
  across runs, unlike ``monotonically_increasing_id``);
* ``embedding`` (array<float>) when the config names a precomputed embedding column.
"""
from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import ConfigError, SourceSection

ROW_ID = "row_id"
EMBEDDING = "embedding"
_REMOTE = ("s3://", "s3a://", "s3n://", "gs://", "hdfs://", "abfs://", "abfss://", "dbfs:/",
           "wasb://", "wasbs://", "file:/")


def _check_path(side: str, path: str) -> None:
    if path.startswith(_REMOTE):
        return
    if not os.path.exists(path):
        raise ConfigError(f"{side}.path {path!r} does not exist. Check the path (relative paths "
                          f"are resolved from {os.getcwd()!r}).")


def _read_raw(spark: SparkSession, side: str, src: SourceSection) -> DataFrame:
    from pyspark.errors import AnalysisException

    if src.format == "demo":
        from jobs.demo_data import demo_frame
        return demo_frame(spark, src.path)
    _check_path(side, src.path)
    reader = spark.read.options(**{str(k): str(v) for k, v in src.options.items()})
    try:
        if src.format == "delta":
            return reader.format("delta").load(src.path)
        if src.format == "parquet":
            return reader.parquet(src.path)
        if src.format in ("csv", "tsv"):
            opts = {"header": "true", "multiLine": "true", "escape": '"'}
            if src.format == "tsv":
                opts["sep"] = "\t"
            opts.update({str(k): str(v) for k, v in src.options.items()})
            return spark.read.options(**opts).csv(src.path)
        if src.format == "jsonl":
            return reader.json(src.path)
        if src.format == "text":
            return reader.text(src.path).withColumnRenamed("value", src.text_column or "text")
        if src.format == "gio_csv":
            return (spark.read.option("delimiter", src.options.get("delimiter", "\t"))
                    .csv(src.path))
    except AnalysisException as err:
        raise ConfigError(f"cannot read {side} ({src.format}) at {src.path!r}: "
                          f"{str(err).splitlines()[0]}") from None
    raise ConfigError(f"{side}.format={src.format!r} is not supported.")


def _embedding_expr(df: DataFrame, side: str, column: str):
    dtype = df.schema[column].dataType
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return F.col(column).cast("array<float>")
    if isinstance(dtype, T.StringType):
        # The GIO source's CSV form: a JSON-like vector string such as "[0.1, 0.2, ...]".
        return F.from_json(F.col(column), "array<float>")
    if dtype.typeName() == "vector":
        from pyspark.ml.functions import vector_to_array
        return vector_to_array(F.col(column), "float32")
    raise ConfigError(f"{side}.embedding_column {column!r} has type {dtype.simpleString()}; "
                      "expected array<float>, array<double>, an MLlib vector or a vector string.")


def read_side(spark: SparkSession, side: str, src: SourceSection) -> DataFrame:
    """Reads one side, adds ``row_id`` (and ``embedding``), and checks columns and emptiness.

    Raises:
      ConfigError: a missing path, a missing column, an empty table, a bad embedding column.
    """
    df = _read_raw(spark, side, src)
    if src.format == "gio_csv" and not src.embedding_column:
        src.embedding_column = "_c2"
    columns = df.columns
    wanted = {"text_column": src.text_column if not src.embedding_column else None,
              "id_column": src.id_column, "embedding_column": src.embedding_column}
    for key, column in wanted.items():
        if column and column not in columns:
            raise ConfigError(f"{side}.{key} {column!r} is not a column of {src.path!r}; "
                              f"its columns are: {', '.join(columns)}.")
    for reserved in (ROW_ID, EMBEDDING):
        if reserved in columns and reserved not in (src.id_column, src.embedding_column):
            df = df.withColumnRenamed(reserved, f"source_{reserved}")
    if src.id_column:
        df = df.withColumn(ROW_ID, F.col(src.id_column).cast("string"))
    else:
        df = df.withColumn(ROW_ID, F.sha2(F.to_json(F.struct(*[F.col(c) for c in columns])), 256))
    if src.embedding_column:
        df = df.withColumn(EMBEDDING, _embedding_expr(df, side, src.embedding_column))
    if not df.take(1):
        raise ConfigError(f"{side} at {src.path!r} has no rows; give it at least one.")
    return df


def check_embeddings(df: DataFrame, side: str) -> int:
    """Scans an ``embedding`` column once: one dimension, no nulls, no NaN or inf values.

    Returns:
      The embedding dimension.
    """
    stats = df.select(
        F.min(F.size(EMBEDDING)).alias("lo"), F.max(F.size(EMBEDDING)).alias("hi"),
        F.sum(F.when(F.col(EMBEDDING).isNull(), 1).otherwise(0)).alias("nulls"),
        F.sum(F.when(F.exists(EMBEDDING, lambda x: x.isNull() | F.isnan(x)
                              | (F.abs(x) == float("inf"))), 1).otherwise(0)).alias("bad"),
    ).first()
    if stats["nulls"]:
        raise ConfigError(f"{side} has {stats['nulls']} row(s) with a null embedding; drop them "
                          "or fix the embedding column.")
    if stats["bad"]:
        raise ConfigError(f"{side} has {stats['bad']} embedding(s) with NaN, inf or null "
                          "values; drop or repair those rows.")
    if stats["lo"] != stats["hi"]:
        raise ConfigError(f"{side} embeddings have different lengths ({stats['lo']} to "
                          f"{stats['hi']}); every vector must have the same dimension.")
    if stats["lo"] is None or stats["lo"] < 1:
        raise ConfigError(f"{side} embeddings are empty vectors.")
    return int(stats["lo"])
