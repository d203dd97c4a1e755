"""The embed stage: sentence embeddings inside Spark.

A ``mapInPandas`` function loads the sentence-transformers model once per Python worker and
encodes each Arrow batch. Text sides are written to ``<side>_embeddings`` under their
``embeddings_id`` (one transaction each, reused while the source and model are unchanged); sides
with a precomputed vector column are read straight from the source.
"""
from __future__ import annotations

import time
from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame, functions as F

from jobs import reuse, tables
from jobs.config import JobConfig
from jobs.inputs import EMBEDDING, ROW_ID, Side
from jobs.log import log, spark_bar, took
from jobs.models import load_model, task_device


def encoder(model: str, batch_size: int, normalize: bool, device: str, threads: int | None,
            text_column: str, counter=None, backend: str = "torch"):
    """A function for ``DataFrame.mapInPandas``: (row_id, text) batches -> (row_id, embedding).
    ``counter``: a Spark accumulator the tasks add their rows to (a progress bar reads it)."""

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        st = load_model(model, task_device(device), threads, backend)
        for batch in batches:
            texts = batch[text_column].astype(str).tolist()
            vectors = st.encode(texts, batch_size=batch_size, normalize_embeddings=normalize,
                                convert_to_numpy=True, show_progress_bar=False)
            if counter is not None:
                counter.add(len(texts))
            yield pd.DataFrame({ROW_ID: batch[ROW_ID].values,
                                EMBEDDING: list(vectors.astype("float32"))})

    return encode


def embed_frame(df: DataFrame, text_column: str, model: str = "bundled", batch_size: int = 64,
                normalize: bool = True, device: str = "auto", threads: int | None = None,
                counter=None, partitions: int | None = None, backend: str = "torch"):
    """Embeds ``text_column`` of ``df``; returns a DataFrame (row_id, embedding array<float>).
    ``partitions``: hash-partition the rows by row_id into that many tasks, sorted by row_id
    within each (the same batches whatever the source's layout or the cluster's size)."""
    fn = encoder(model, batch_size, normalize, device, threads, text_column, counter, backend)
    df = df.select(ROW_ID, text_column)
    if partitions is not None:
        df = df.repartition(partitions, ROW_ID).sortWithinPartitions(ROW_ID)
    return df.mapInPandas(
        fn, f"{ROW_ID} string, {EMBEDDING} array<float>")


def embed_partitions(rows: int, rows_per_task: int) -> int:
    """How many embedding tasks a side of ``rows`` rows gets: ceil(rows / rows_per_task)."""
    return max(1, -(-int(rows) // int(rows_per_task)))


def side_embeddings(spark, cfg: JobConfig, plan: reuse.Plan, side: Side) -> DataFrame:
    """The (row_id, embedding) rows of one side, computed and committed if not done yet."""
    if EMBEDDING in side.frame.columns:
        return side.frame.select(ROW_ID, EMBEDDING)
    name, stage = f"{side.name}_embeddings", f"embed_{side.name}"
    key, fp = plan.embeddings_id[side.name], plan.embed[side.name]
    if reuse.is_done(spark, cfg.output.path, stage, key, fp):
        log(f"embed {side.name}: reusing {name} {key}")
    else:
        e = cfg.embed
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        rows = int(side.report["kept"])
        tasks = embed_partitions(rows, e.rows_per_task)
        log(f"embed {side.name}: encoding {rows} texts of {side.src.text_column!r} with "
            f"{e.model}{'' if e.backend == 'torch' else ' on ' + e.backend} (batch "
            f"{e.batch_size}, {tasks} task{'s' if tasks > 1 else ''})")
        reuse.begin(spark, cfg.output.path, stage, key, fp)
        counter = spark.sparkContext.accumulator(0)
        out = embed_frame(side.frame, side.src.text_column, e.model, e.batch_size, e.normalize,
                          e.device, threads, counter, tasks, e.backend).withColumn("embeddings_id",
                                                                        F.lit(key))
        t0 = time.perf_counter()
        with spark_bar(spark, f"embed {side.name}", total=rows, unit="texts",
                       done=lambda: counter.value):
            tables.replace_key(spark, out, cfg.output.path, name, key)
        seconds = time.perf_counter() - t0
        log(f"embed {side.name}: {rows} texts in {took(seconds)} "
            f"({rows / max(seconds, 1e-9):.0f} texts/s)")
        reuse.record(spark, cfg.output.path, stage, key, fp, "done")
    return tables.read_key(spark, cfg.output.path, name, key).select(ROW_ID, EMBEDDING)


def stored_embeddings(spark, cfg: JobConfig, plan: reuse.Plan, side: Side) -> DataFrame | None:
    """(row_id, embedding) of a side without computing anything: its vector column, or its
    committed ``<side>_embeddings``; None when neither exists yet."""
    if EMBEDDING in side.frame.columns:
        return side.frame.select(ROW_ID, EMBEDDING)
    key = plan.embeddings_id[side.name]
    if not reuse.is_done(spark, cfg.output.path, f"embed_{side.name}", key, plan.embed[side.name]):
        return None
    return tables.read_key(spark, cfg.output.path, f"{side.name}_embeddings", key).select(
        ROW_ID, EMBEDDING)


def embedded_rows(spark, cfg: JobConfig, rows: DataFrame, text: str) -> DataFrame:
    """``rows`` (with row_id and ``text``) joined with their texts' embeddings, computed on the
    executors with the ``embed`` section's model."""
    e = cfg.embed
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    vectors = embed_frame(rows, text, e.model, e.batch_size, e.normalize, e.device, threads,
                          backend=e.backend)
    return rows.join(vectors, ROW_ID)
