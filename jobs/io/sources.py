"""Reading and checking the inputs: everything that can be wrong with the config's sources and
output location is found here, before any heavy work, and reported as one :class:`InputError`.

Three steps, from cheap to thorough:

1. :func:`preflight` runs before the JVM starts: local input paths exist, the output location is
   a folder gio-spark can write to and not inside an input.
2. :func:`read_side` reads a side's schema: required columns, their types, ``row_id`` and the
   parsed ``embedding``; read failures (a missing file, a file that is not Parquet...) become
   one clear line.
3. :func:`scan_side` scans a side once for rows that cannot be used, :func:`enforce` applies
   the side's ``bad_rows`` policy and :func:`clean_side` leaves the bad rows out, the same way
   everywhere; :func:`check_outputs` checks that the output tables, if they exist, are
   gio-spark's own. :func:`jobs.state.inputs.prepare_inputs` runs these for a command (and
   reuses the scan of an unchanged source).

Bad rows (``bad_rows: reject`` refuses them, ``drop`` leaves them out and counts them):
a null id; an id that occurs more than once (without ``id_column`` rows are identified by their
content, so these are exact copies); a null, blank or non-UTF-8 text; a null, unparseable,
empty or non-finite precomputed vector. Duplicates are resolved the same way on every run and
row order: the copy with the smallest content hash stays.
"""
from __future__ import annotations

import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import Callable

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common.errors import InputError
from jobs.common.extras import require
from jobs.common.frames import EMBEDDING, ROW_ID, is_ml_vector
from jobs.config import (FRAME_FORMAT, NAMED_FORMATS, JobConfig, SourceSection,
                         effective_embedding_column)
from jobs.io import tables
from jobs.io.demo_data import demo_frame
from jobs.io.encoders import load_model, model_dimension
from jobs.io.session import is_connect

EXAMPLES = 3
# What an id column may hold: one value per row that reads the same as text on every run.
ID_TYPES = (T.StringType, T.IntegralType, T.DecimalType, T.DateType, T.BooleanType)


# ---------------------------------------------------------------------------
# Before Spark
# ---------------------------------------------------------------------------

def _local(path: str) -> str | None:
    if tables.on_file_system(path):
        return None
    return path.removeprefix("file:")


def _file_path(src: SourceSection) -> str | None:
    """A source's location on the local file system, or None (a remote one, a catalog table's
    name, the demo's side, a DataFrame's token)."""
    if src.format in NAMED_FORMATS or not src.path:
        return None
    return _local(src.path)


# DataFrames handed to the Python API, by the token that stands for them in ``path``.
_FRAMES: dict[str, DataFrame] = {}


def register_frame(df: DataFrame) -> str:
    """Keeps ``df`` for the run that reads it; returns its token (``path`` of a ``dataframe``
    source), unique across threads. :func:`release_frame` forgets it."""
    token = f"<DataFrame {uuid.uuid4().hex[:12]}>"
    _FRAMES[token] = df
    return token


def located(src: SourceSection) -> str:
    """Where a source is, for messages: its path quoted, or "the DataFrame" for one handed to
    the Python API."""
    return "the DataFrame" if src.format == FRAME_FORMAT else repr(src.path)


def release_frame(token: str) -> None:
    _FRAMES.pop(token, None)


def content_identity(df: DataFrame) -> dict:
    """What identifies a frame's rows without a location or a version to go by (a DataFrame, a
    view, a table that is not Delta's): their count and a hash that does not depend on their
    order or partitioning (the sum of each row's 64-bit hash, exact). One pass over the rows."""
    row = df.select(F.count(F.lit(1)).alias("rows"), F.sum(F.xxhash64(F.to_json(F.struct(
        *[df[c] for c in df.columns]))).cast("decimal(38,0)")).alias("hash")).first()
    return {"rows": int(row["rows"]), "content": str(row["hash"]),
            "schema": df.schema.simpleString()}


def frame_of(side: str, src: SourceSection) -> DataFrame:
    """The DataFrame of a ``dataframe`` source."""
    df = _FRAMES.get(src.path)
    if df is None:
        raise InputError(f"{side}.format {FRAME_FORMAT} is the Python API's, for a DataFrame "
                         f"handed to it ({src.path!r} is none); in a config file name a table "
                         "(format: table) or files.")
    return df


def _sources(cfg: JobConfig, sides: tuple) -> list[tuple[str, SourceSection]]:
    out = [(side, getattr(cfg, side)) for side in sides]
    if cfg.weigh.enabled:
        out.append(("weigh.source", cfg.weigh.source))
    if cfg.train.enabled:
        if cfg.train.source.path is not None:
            out.append(("train.source", cfg.train.source))
        out.append(("train.validation", cfg.train.validation))
    return out


def preflight(cfg: JobConfig, sides: tuple = ("pool", "target")) -> None:
    """Checks that need no JVM: input paths, and the output location (exists as a folder or can
    be created, is writable, is not itself a Delta table, is not inside an input).
    ``sides``: the sides the command reads (none for the weigh command, train on a source of
    its own, imnn and most datamodels commands)."""
    for side, src in _sources(cfg, sides):
        path = _file_path(src)
        if path is not None and not os.path.exists(path):
            raise InputError(f"{side}.path {src.path!r} does not exist. Check the path (relative "
                             f"paths are resolved from {os.getcwd()!r}).")
    embeds = [side for side, src in _sources(cfg, sides)
              if not effective_embedding_column(src) and (src.text_column or src.format == "demo")
              and not (side == "weigh.source" and cfg.weigh.a_columns)]
    if embeds:
        require("embed", f"embedding the text of {', '.join(embeds)}",
                "give precomputed vectors (embedding_column)")
        if cfg.embed.backend != "torch":
            require("onnx", f"embed.backend {cfg.embed.backend}", "set embed.backend: torch")
    weights = _local(cfg.weights.path) if cfg.weights.path else None
    if weights is not None and not os.path.isdir(weights):
        raise InputError(f"weights.path {cfg.weights.path!r} is not a folder; name the output "
                         "folder of the run that learnt the weights (it holds feature_weights).")
    out = _local(cfg.output.path)
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output.path {cfg.output.path!r} is a file; name a folder for "
                         "gio-spark's tables.")
    if os.path.isdir(os.path.join(out, "_delta_log")):
        raise InputError(f"output.path {cfg.output.path!r} is itself a Delta table; give "
                         "gio-spark a folder of its own (its tables go inside it).")
    out_abs = os.path.realpath(out)
    for side, src in _sources(cfg, sides):
        path = _file_path(src)
        if path is not None and os.path.isdir(path):
            inside = os.path.realpath(path)
            if out_abs == inside or out_abs.startswith(inside + os.sep):
                raise InputError(f"output.path {cfg.output.path!r} is inside {side}.path "
                                 f"{src.path!r}; writing there would change the input. Choose "
                                 "an output folder outside the inputs.")
    probe = out
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    try:
        fd, name = tempfile.mkstemp(prefix=".gio-spark-probe-", dir=probe)
        os.close(fd)
        os.remove(name)
    except OSError as err:
        raise InputError(f"output.path {cfg.output.path!r} is not writable ({probe!r}: "
                         f"{err.strerror}); choose a folder you can write to.") from None


# Object stores and the package that gives Spark (Hadoop) a file system for each; the version is
# the running Hadoop's.
CONNECTORS = {"s3a": "org.apache.hadoop:hadoop-aws", "abfs": "org.apache.hadoop:hadoop-azure",
              "abfss": "org.apache.hadoop:hadoop-azure", "wasb": "org.apache.hadoop:hadoop-azure",
              "wasbs": "org.apache.hadoop:hadoop-azure",
              "gs": "com.google.cloud.bigdataoss:gcs-connector"}


def config_paths(cfg: JobConfig, sides: tuple) -> list[tuple[str, str]]:
    """``(key, path)`` of every location a command with these sides reads or writes."""
    out = [(f"{key}.path", src.path) for key, src in _sources(cfg, sides)
           if src.format not in NAMED_FORMATS and src.path]
    if cfg.evaluate.enabled and cfg.evaluate.heldout.path:
        out.append(("evaluate.heldout.path", cfg.evaluate.heldout.path))
    for key, path in (("weights.path", cfg.weights.path), ("imnn.simulations", cfg.imnn.simulations),
                      ("output.path", cfg.output.path)):
        if path:
            out.append((key, path))
    return out


def check_file_systems(spark, cfg: JobConfig, sides: tuple) -> None:
    """Every object-store location of the command has a file system in this Spark, before any
    work: a missing connector is bad input that names the package to add, not a Java
    ``ClassNotFoundException`` from the middle of a stage.

    Raises:
      InputError: a location whose scheme this Spark cannot read or write.
    """
    if is_connect(spark):
        _check_file_systems_on_server(spark, cfg, sides)
        return
    from py4j.protocol import Py4JJavaError

    jvm = spark._jvm
    conf = tables.hadoop_conf(spark)
    for key, path in config_paths(cfg, sides):
        if "://" not in path:
            continue
        scheme = path.split("://", 1)[0].lower()
        if scheme in ("file", "hdfs"):
            continue
        try:
            jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, conf)
        except Py4JJavaError as err:
            cause = str(err.java_exception.toString()).split("\n")[0]
            version = jvm.org.apache.hadoop.util.VersionInfo.getVersion()
            package = CONNECTORS.get(scheme)
            if scheme in ("s3", "s3n"):
                fix = "write it as s3a:// (Hadoop's S3 file system) and add the package " \
                      f"org.apache.hadoop:hadoop-aws:{version}"
            elif package is None:
                fix = f"add the package of a Hadoop file system for {scheme}://"
            else:
                suffix = f":{version}" if package.startswith("org.apache.hadoop") else ""
                fix = f"add the package {package}{suffix}"
            raise InputError(f"{key} {path!r} is on {scheme}://, which this Spark cannot read or "
                             f"write ({cause}); {fix} to spark.jars.packages (spark.conf in the "
                             "config, or spark-submit --packages), with the store's credentials "
                             f"in spark.hadoop.fs.{scheme}.* settings.") from None


def _check_file_systems_on_server(spark, cfg: JobConfig, sides: tuple) -> None:
    """:func:`check_file_systems` on Spark Connect: the server lists each object-store
    location (the client has no JVM to ask); a scheme it has no file system for is refused."""
    for key, path in config_paths(cfg, sides):
        scheme = path.split("://", 1)[0].lower() if "://" in path else "file"
        if scheme in ("file", "hdfs"):
            continue
        try:
            tables.remote_files(spark, path.rstrip("/") + "/_gio_spark_probe")
        except Exception as err:  # noqa: BLE001 - only a missing file system is bad input
            text = str(err)
            if "UnsupportedFileSystem" not in text and "ClassNotFoundException" not in text \
                    and "No FileSystem for scheme" not in text:
                raise
            package = CONNECTORS.get(scheme)
            fix = (f"add the package {package} (at the server's Hadoop version)"
                   if package else f"add the package of a Hadoop file system for {scheme}://")
            if scheme in ("s3", "s3n"):
                fix = "write it as s3a:// and add the package org.apache.hadoop:hadoop-aws"
            raise InputError(f"{key} {path!r} is on {scheme}://, which the Spark Connect server "
                             f"cannot read or write; {fix} to the server's spark.jars.packages, "
                             f"with the store's credentials in spark.hadoop.fs.{scheme}.* "
                             "settings.") from None


# ---------------------------------------------------------------------------
# Read failures in the user's words
# ---------------------------------------------------------------------------

_CAUSE = re.compile(r"Caused by: ([\w.$]+): (.*)")
_READ_FILE = re.compile(r"\[FAILED_READ_FILE\.(\w+)\][^\n]*?reading file ([^\s]+?)\.\s")


def _innermost_cause(text: str) -> str:
    causes = _CAUSE.findall(text)
    if not causes:
        first = next((line for line in text.splitlines() if line.strip()), text)
        return first.strip()
    cls, message = causes[-1]
    return f"{cls.rsplit('.', 1)[-1]}: {message.strip()}"


def read_failure(err: BaseException, side: str, src: SourceSection) -> InputError | None:
    """The :class:`InputError` for a Spark failure caused by the input data, or None."""
    text = str(err)
    where = f"{side} ({src.format}) at {src.path!r}"
    found = _READ_FILE.search(text)
    if found:
        kind, file = found.groups()
        if kind == "FILE_NOT_EXIST" and src.format == "delta":
            return InputError(f"{where}: the data file {file} that its Delta log references is "
                              "missing. Restore it (or remove it from the table with FSCK REPAIR "
                              "TABLE) and run again.")
        return InputError(f"{where}: cannot read {file}: {_innermost_cause(text)}. Fix or remove "
                          "that file.")
    for marker, what in (("PATH_NOT_FOUND", "does not exist"),
                         ("DELTA_MISSING_DELTA_TABLE", "is not a Delta table"),
                         ("is not a Delta table", "is not a Delta table"),
                         ("UNABLE_TO_INFER_SCHEMA", "holds no readable data files"),
                         ("is not a Parquet file", "holds a file that is not Parquet")):
        if marker in text:
            return InputError(f"{where} {what}: {_innermost_cause(text)}.")
    return None


def guarded(action: Callable, side: str, src: SourceSection):
    """Runs a Spark action on a side, turning failures caused by its data into InputError."""
    try:
        return action()
    except InputError:
        raise
    except Exception as err:          # noqa: BLE001 - re-raised unless it is the data's fault
        mapped = read_failure(err, side, src)
        if mapped is None:
            raise
        raise mapped from None


# ---------------------------------------------------------------------------
# Reading a side's schema
# ---------------------------------------------------------------------------

def _read_raw(spark: SparkSession, side: str, src: SourceSection) -> DataFrame:
    if src.format == "demo":
        try:
            return demo_frame(spark, src.path)
        except ValueError as err:
            raise InputError(f"{side}.format demo: {err} Set path: pool, target or heldout.") from None
    if src.format == FRAME_FORMAT:
        return frame_of(side, src)
    options = {str(k): str(v) for k, v in src.options.items()}
    reader = spark.read.options(**options)
    if src.format == "table":
        return reader.table(src.path)
    if src.format == "delta":
        return reader.format("delta").load(src.path)
    if src.format == "parquet":
        return reader.parquet(src.path)
    if src.format in ("csv", "tsv"):
        opts = {"header": "true", "multiLine": "true", "escape": '"'}
        if src.format == "tsv":
            opts["sep"] = "\t"
        opts.update(options)
        return spark.read.options(**opts).csv(src.path)
    if src.format == "jsonl":
        return reader.json(src.path)
    if src.format == "text":
        return reader.text(src.path).withColumnRenamed("value", src.text_column or "text")
    if src.format == "gio_csv":
        return spark.read.option("delimiter", options.get("delimiter", "\t")).csv(src.path)
    raise InputError(f"{side}.format={src.format!r} is not supported.")


def _embedding_expr(df: DataFrame, side: str, column: str):
    dtype = df.schema[column].dataType
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return F.col(column).cast("array<float>")
    if isinstance(dtype, T.StringType):
        # The GIO source's CSV form: a JSON-like vector string such as "[0.1, 0.2, ...]".
        return F.from_json(F.col(column), "array<float>")
    if is_ml_vector(dtype):
        from pyspark.ml.functions import vector_to_array
        return vector_to_array(F.col(column), "float32")
    raise InputError(f"{side}.embedding_column {column!r} has type {dtype.simpleString()}; "
                     "expected array<float>, array<double>, an MLlib vector or a vector string "
                     "such as '[0.1, 0.2]'.")


def own_columns(df: DataFrame) -> list[str]:
    """The source's own columns of a side frame (without the added row_id and embedding)."""
    return [c for c in df.columns if c not in (ROW_ID, EMBEDDING)]


def row_id_expr(columns: list[str], id_column: str | None):
    """A row's id: its ``id_column`` as text, or else the SHA-256 of its content (``columns``,
    in order), so that the same row has the same id in every table that holds its columns."""
    if id_column:
        return F.col(id_column).cast("string")
    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in columns])), 256)


# The columns the selected rows add to the pool's own (cluster_id, rank, run_id): a pool column
# of one of these names is kept as source_<name>.
SELECTED_ADDS = tuple(tables.SELECTED_EXTRA.names)


def read_side(spark: SparkSession, side: str, src: SourceSection) -> DataFrame:
    """Reads one side's schema and adds ``row_id`` (and ``embedding``); reads no rows.

    A source column named ``row_id`` or ``embedding`` that is not the configured id or vector
    column is kept as ``source_row_id`` / ``source_embedding``; so is a pool column named as one
    of the columns the selected rows add (``cluster_id``, ``rank``, ``run_id``).

    Raises:
      InputError: an unreadable source, a missing column, a column of the wrong type.
    """
    def read():
        df = _read_raw(spark, side, src)
        df.schema          # noqa: B018 - forces schema inference, where read failures show up
        return df

    try:
        df = guarded(read, side, src)
    except AnalysisException as err:
        raise InputError(f"cannot read {side} ({src.format}) at {src.path!r}: "
                         f"{_innermost_cause(str(err))}") from None
    emb = effective_embedding_column(src)
    columns = df.columns
    if not columns:
        raise InputError(f"{side} at {located(src)} has no columns (a file written from an empty "
                         "table?); give it rows with the configured columns.")
    domain = getattr(src, "domain_column", None)
    wanted = {"text_column": src.text_column if not emb else None,
              "id_column": src.id_column, "embedding_column": emb, "domain_column": domain}
    for key, column in wanted.items():
        if column and column not in columns:
            raise InputError(f"{side}.{key} {column!r} is not a column of {located(src)}; "
                             f"its columns are: {', '.join(columns)}.")
    if not emb and src.text_column:
        dtype = df.schema[src.text_column].dataType
        if not isinstance(dtype, T.StringType):
            raise InputError(f"{side}.text_column {src.text_column!r} has type "
                             f"{dtype.simpleString()}; name a column of text to embed.")
    if src.id_column:
        dtype = df.schema[src.id_column].dataType
        if not isinstance(dtype, ID_TYPES):
            raise InputError(f"{side}.id_column {src.id_column!r} holds {dtype.simpleString()} "
                             "values; an id is one text or number per row. Name such a column, "
                             "or set id_column to null to identify rows by their content.")
    if domain:
        dtype = df.schema[domain].dataType
        if not isinstance(dtype, ID_TYPES):
            raise InputError(f"{side}.domain_column {domain!r} holds {dtype.simpleString()} "
                             "values; a domain is one text or number per row (such as 'code'). "
                             "Name such a column.")
    added = SELECTED_ADDS if side == "pool" else ()
    for key, column in wanted.items():
        if column in added:
            raise InputError(f"{side}.{key} {column!r} has the name of a column the selected rows "
                             f"add ({', '.join(SELECTED_ADDS)}); copy it to a column of another "
                             "name in the source and name that one.")
    for reserved in (ROW_ID, EMBEDDING, *added):
        if reserved in columns and reserved not in (src.id_column, emb):
            df = df.withColumnRenamed(reserved, f"source_{reserved}")
    df = df.withColumn(ROW_ID, row_id_expr(df.columns, src.id_column))
    if emb:
        try:
            df = df.withColumn(EMBEDDING, _embedding_expr(df, side, emb))
        except InputError:
            # A file written from an empty frame types its columns loosely: say what is wrong.
            if not guarded(lambda: df.take(1), side, src):
                raise InputError(f"{side} at {located(src)} has no rows; give it at least "
                                 "one.") from None
            raise
    return df


# ---------------------------------------------------------------------------
# The scan, the policy, and the cleaned frame
# ---------------------------------------------------------------------------

def _conditions(df: DataFrame, src: SourceSection, extra: dict | None = None) -> dict:
    """Named boolean columns, one per kind of bad row (null-safe: never null); ``extra`` adds
    a stage's own kinds (the weigh stage's feature columns)."""
    emb = effective_embedding_column(src)
    cond = {"null_id": F.col(ROW_ID).isNull()}
    if emb:
        raw, vec = F.col(emb), F.col(EMBEDDING)
        cond["null_embedding"] = raw.isNull()
        cond["not_a_vector"] = raw.isNotNull() & vec.isNull()
        cond["empty_vector"] = vec.isNotNull() & (F.size(vec) == 0)
        cond["non_finite"] = vec.isNotNull() & F.coalesce(F.exists(
            vec, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))), F.lit(False))
    elif src.text_column:
        text = F.col(src.text_column)
        cond["blank_text"] = text.isNull() | (F.trim(text) == "")
        cond["invalid_utf8"] = text.isNotNull() & ~F.is_valid_utf8(text)
    domain = getattr(src, "domain_column", None)
    if domain:
        cond["null_domain"] = F.col(domain).isNull()
    cond.update(extra or {})
    return cond


def _valid(cond: dict):
    bad = None
    for c in cond.values():
        bad = c if bad is None else (bad | c)
    return ~bad


def scan_side(df: DataFrame, side: str, src: SourceSection, extra: dict | None = None,
              distinct: bool = False) -> dict:
    """One pass over a side: row count, bad rows by kind, duplicates, vector lengths.

    Returns:
      ``{"rows", "kept", "duplicate_id", <kind>: count..., "dim_min", "dim_max"}`` where
      ``kept`` is the number of distinct ids among the valid rows (what the side contributes);
      with ``distinct``, also ``distinct_values``: the valid rows' distinct vectors (or texts,
      for a side to embed), which bound how many clusters the side can have.
    """
    cond = _conditions(df, src, extra)
    valid = _valid(cond)
    aggs = [F.count(F.lit(1)).alias("rows"),
            F.count_distinct(F.col(ROW_ID)).alias("distinct_ids"),
            F.coalesce(F.sum(valid.cast("long")), F.lit(0)).alias("valid_rows"),
            F.count_distinct(F.when(valid, F.col(ROW_ID))).alias("kept")]
    aggs += [F.coalesce(F.sum(c.cast("long")), F.lit(0)).alias(name) for name, c in cond.items()]
    if EMBEDDING in df.columns:
        size = F.when(valid, F.size(EMBEDDING))
        aggs += [F.min(size).alias("dim_min"), F.max(size).alias("dim_max")]
    if distinct:
        value = F.col(EMBEDDING) if EMBEDDING in df.columns else F.col(src.text_column)
        aggs.append(F.count_distinct(F.when(valid, value)).alias("distinct_values"))
    row = guarded(lambda: df.select(*aggs).first(), side, src)
    report = {k: (int(v) if v is not None else None) for k, v in row.asDict().items()}
    report["duplicate_id"] = report["rows"] - report["null_id"] - report.pop("distinct_ids")
    report["duplicates_among_valid"] = report.pop("valid_rows") - report["kept"]
    domain = getattr(src, "domain_column", None)
    if domain and report["kept"]:
        report["domains"] = _domain_counts(df, side, src, valid, domain, distinct)
    return report


MAX_DOMAINS = 64      # domains of one target (each is clustered and selected for apart)


def _domain_counts(df: DataFrame, side: str, src: SourceSection, valid, domain: str,
                   distinct: bool) -> dict:
    """``{domain (as text): {"rows": usable rows, "distinct_values": ...}}`` of a side with a
    domain column, in the domains' order.

    Raises:
      InputError: more than :data:`MAX_DOMAINS` domains (a column of ids, not of domains?).
    """
    aggs = [F.count_distinct(F.col(ROW_ID)).alias("rows")]
    if distinct:
        value = F.col(EMBEDDING) if EMBEDDING in df.columns else F.col(src.text_column)
        aggs.append(F.count_distinct(value).alias("distinct_values"))
    found = guarded(lambda: df.where(valid).groupBy(F.col(domain).cast("string").alias("d"))
                    .agg(*aggs).orderBy("d").limit(MAX_DOMAINS + 1).collect(), side, src)
    if len(found) > MAX_DOMAINS:
        raise InputError(f"{side}.domain_column {domain!r} holds more than {MAX_DOMAINS} "
                         f"distinct values (e.g. {', '.join(repr(r['d']) for r in found[:3])}); "
                         "each domain is a target of its own, clustered and selected for apart. "
                         "Name a column with fewer domains, or set domain_column to null.")
    return {r["d"]: {k: int(v) for k, v in r.asDict().items() if k != "d"} for r in found}


_KIND_WORDS = {
    "null_id": "a null id",
    "duplicate_id": "an id used by other rows too",
    "blank_text": "a null or blank text",
    "invalid_utf8": "text that is not valid UTF-8",
    "null_embedding": "a null vector",
    "not_a_vector": "a value that is not a vector",
    "empty_vector": "an empty vector",
    "non_finite": "NaN, inf or null vector values",
    "bad_a": "a null, NaN or inf value in space A's columns",
    "bad_b": "a null, NaN or inf value (or a null label) in weigh.b_columns",
    "null_label": "a null label in train.label_column",
    "null_domain": "a null domain",
}


def _snippet(value, width: int = 40) -> str:
    text = str(value)
    return repr(text if len(text) <= width else text[:width] + "...")


def _examples(df: DataFrame, src: SourceSection, kind: str, cond: dict) -> str:
    """A few offending rows, chosen the same way whatever the row order."""
    if kind == "duplicate_id":
        rows = (df.where(F.col(ROW_ID).isNotNull()).groupBy(ROW_ID).count()
                .where(F.col("count") > 1).orderBy(F.desc("count"), ROW_ID).limit(EXAMPLES)
                .collect())
        if src.id_column:
            return "e.g. " + ", ".join(f"{_snippet(r[ROW_ID])} x{r['count']}" for r in rows)
        return f"e.g. {rows[0]['count']} copies of one row" if rows else ""
    bad = df.where(cond[kind])
    if kind == "null_id":
        sample = bad.select(F.to_json(F.struct(*[F.col(c) for c in own_columns(df)
                                                 if c != src.id_column])).alias("v"))
        rows = sample.orderBy("v").limit(EXAMPLES).collect()
        return "e.g. " + ", ".join(_snippet(r["v"]) for r in rows)
    if kind == "not_a_vector":
        column = effective_embedding_column(src)
        rows = bad.select(ROW_ID, F.col(column).cast("string").alias("v")).orderBy(ROW_ID) \
            .limit(EXAMPLES).collect()
        return "e.g. " + ", ".join(f"{_snippet(r['v'])} in row {_snippet(r[ROW_ID], 20)}"
                                   for r in rows)
    rows = bad.select(ROW_ID).orderBy(ROW_ID).limit(EXAMPLES).collect()
    return "rows " + ", ".join(_snippet(r[ROW_ID], 24) for r in rows)


def _hints(src: SourceSection, kinds: list[str]) -> str:
    hints = []
    column = effective_embedding_column(src)
    csv = src.format in ("csv", "tsv", "gio_csv")
    if "not_a_vector" in kinds:
        hint = (f"{column!r} must hold arrays of numbers, MLlib vectors or strings such as "
                "'[0.1, 0.2]'")
        if csv:
            hint += " (in CSV files an unterminated quote shifts the fields of a row)"
        hints.append(hint)
    elif csv and "null_embedding" in kinds:
        hints.append(f"in a CSV file an unterminated quote shifts the fields that follow it, "
                     f"which leaves {column!r} empty")
    if "invalid_utf8" in kinds:
        hints.append("re-encode the source as UTF-8")
    if "duplicate_id" in kinds and not src.id_column:
        hints.append("without id_column a row is identified by its content, so these rows are "
                     "exact copies; name an id_column if copies are distinct rows")
    return "; ".join(hints)


def enforce(df: DataFrame, side: str, src: SourceSection, report: dict,
            warn: Callable[[str], None], extra: dict | None = None) -> None:
    """Applies the side's ``bad_rows`` policy to a scan report.

    Raises:
      InputError: ``reject`` and bad rows were found (with counts and examples), or nothing
        usable is left, or the vectors have different lengths.
    """
    if report["rows"] == 0:
        raise InputError(f"{side} at {located(src)} has no rows; give it at least one.")
    kinds = [k for k in _KIND_WORDS if report.get(k)]
    if kinds and src.bad_rows == "reject":
        cond = _conditions(df, src, extra)
        parts = [f"{report[k]} with {_KIND_WORDS[k]} "
                 f"({guarded(lambda k=k: _examples(df, src, k, cond), side, src)})" for k in kinds]
        hint = _hints(src, kinds)
        raise InputError(f"{side} has rows it cannot use: {'; '.join(parts)}. "
                         + (f"Hint: {hint}. " if hint else "")
                         + f"Fix the source, or set {side}.bad_rows: drop to leave them out.")
    if kinds:
        counts = ", ".join(f"{report[k]} with {_KIND_WORDS[k]}" for k in kinds)
        warn(f"{side}: dropping {report['rows'] - report['kept']} of {report['rows']} rows "
             f"({counts}); {side}.bad_rows is drop.")
    if report["kept"] == 0:
        raise InputError(f"{side} at {located(src)} has no usable rows ({report['rows']} read, "
                         "all of them bad); fix the source.")
    lo, hi = report.get("dim_min"), report.get("dim_max")
    if lo is not None and lo != hi:
        raise InputError(f"{side} vectors have different lengths ({lo} to {hi}); every vector "
                         "must have the same dimension.")


def clean_side(df: DataFrame, src: SourceSection, report: dict,
               extra: dict | None = None) -> DataFrame:
    """The side's usable rows under its policy: bad rows out, one row per id.

    Of rows sharing an id, the one with the smallest SHA-256 of its content stays, so the result
    does not depend on row order or partitioning.
    """
    if report["rows"] == report["kept"]:
        return df
    df = df.where(_valid(_conditions(df, src, extra)))
    if report.get("duplicates_among_valid"):
        content = F.sha2(F.to_json(F.struct(*[F.col(c) for c in own_columns(df)])), 256)
        order = Window.partitionBy(ROW_ID).orderBy(content)
        df = (df.withColumn("__gio_copy", F.row_number().over(order))
              .where(F.col("__gio_copy") == 1).drop("__gio_copy"))
    return df


# ---------------------------------------------------------------------------
# Both sides, ready for the stages
# ---------------------------------------------------------------------------

@dataclass
class Side:
    name: str
    src: SourceSection
    frame: DataFrame           # usable rows: own columns + row_id (+ embedding)
    schema: T.StructType       # the source's own columns
    report: dict


def side_dim(cfg: JobConfig, side: Side) -> int:
    """A checked side's embedding dimension: its vectors' (from the scan), or ``embed.model``'s
    for a side of texts (:func:`checked_model_dim`)."""
    dim = side.report.get("dim_min") if effective_embedding_column(side.src) else None
    return int(dim) if dim is not None else checked_model_dim(cfg)


def checked_model_dim(cfg: JobConfig) -> int:
    """The embedding dimension of ``embed.model``; a model that cannot be loaded is bad input."""
    try:
        dim = model_dimension(cfg.embed.model)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any load failure is a config problem here
        raise InputError(f"embed.model {cfg.embed.model!r} cannot be loaded: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. "
                         "Give a sentence-transformers model directory, or 'bundled'.") from None
    if cfg.embed.backend != "torch":
        # Exported (and cached) here, before any task needs it; a model it cannot run is bad input.
        try:
            load_model(cfg.embed.model, "cpu", None, cfg.embed.backend)
        except ValueError as err:
            raise InputError(str(err)) from None
    return dim


def check_outputs(spark, cfg: JobConfig, pool_schema: T.StructType | None) -> None:
    """Every gio-spark table that already exists under ``output.path`` is gio-spark's own, of
    this version and shape, and ``output.table``, if it exists, takes the selected rows;
    refuses before any heavy work otherwise."""
    if cfg.output.table and pool_schema is not None:
        tables.check_catalog_table(spark, cfg.output.table,
                                   tables.selected_rows_schema(pool_schema))
    for name in tables.TABLES:
        schema = (tables.selected_rows_schema(pool_schema)
                  if name == "selected_rows" and pool_schema is not None else None)
        if name == "selected_rows" and schema is None:
            continue
        tables.check_existing(spark, cfg.output.path, name, schema)


def check_class_column(schema: T.StructType, column: str, key: str, where: str, columns: list,
                       what: str = "class labels") -> None:
    """``column`` (the option ``key``) is a column of ``where`` holding text, integers or
    booleans."""
    if column not in schema.names:
        raise InputError(f"{key} {column!r} is not a column of {where}; its columns are: "
                         f"{', '.join(columns)}.")
    dtype = schema[column].dataType
    if not isinstance(dtype, (T.StringType, T.IntegralType, T.BooleanType)):
        raise InputError(f"{key} {column!r} of {where} has type {dtype.simpleString()}; {what} "
                         "are text, integers or booleans.")


def selected_frame(spark, output: str, run_id: str, pool: Side, key: str, purpose: str):
    """Run ``run_id``'s selected rows with the pool's own columns and their ``row_id`` computed
    as the pool's. ``key`` and ``purpose`` name the option and the use in messages
    ("train.selection", "train on a selection").

    Raises:
      InputError: the rows lack the pool's columns (another pool's run), or the pool's id column
        was not kept.
    """
    df = tables.read_key(spark, output, "selected_rows", run_id)
    own = [f.name for f in pool.schema.fields]
    lacking = [c for c in own if c not in df.columns]
    if lacking:
        raise InputError(f"the selected rows of run {run_id} lack the pool's columns "
                         f"{lacking}: they were selected from another pool. Name a run of this "
                         f"config's pool in {key}.")
    if pool.src.id_column and pool.src.id_column not in own:
        raise InputError(f"the pool's id_column {pool.src.id_column!r} is not kept in "
                         "selected_rows (it is named like gio-spark's own row_id); rename it in "
                         f"the source to {purpose}.")
    return df.select(*own).withColumn(ROW_ID, row_id_expr(own, pool.src.id_column))
