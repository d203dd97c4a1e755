"""The embed stage: sentence embeddings inside Spark, each distinct text embedded once.

The encoder (:func:`jobs.io.encoders.embed_frame`, a ``mapInPandas`` function) loads the
sentence-transformers model once per Python worker and encodes each Arrow batch. A text side is
embedded through ``text_embeddings``, the store of every text's vector under the model's key
(:func:`jobs.state.reuse.text_model_id`; one row per distinct text, by its SHA-256):

1. the side's texts are hashed, and those the store does not hold for this model are embedded,
   ``embed.commit_rows`` at a time, each chunk appended to the store in its own transaction (a
   chunk is the texts whose hash falls in it: the same chunks, batches and vectors whatever the
   rows' order or layout);
2. ``<side>_embeddings`` under its ``embeddings_id`` is then written in one transaction: each
   row's vector, from the store.

So a killed embed stage keeps the chunks it committed and its re-run embeds only the rest, a
source that grew (or changed) embeds only its new texts, and texts that repeat (in a side, or
in both sides) are embedded once. Sides with a precomputed vector column are read straight from
the source.
"""
from __future__ import annotations

import math
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame, functions as F

from jobs.common.frames import EMBEDDING, ROW_ID
from jobs.common.log import log, spark_bar, took
from jobs.config import JobConfig
from jobs.io import tables
from jobs.io.encoders import embed_frame, embed_partitions
from jobs.io.session import row_counter
from jobs.io.sources import Side
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse
from jobs.state.inputs import prepare_inputs

TEXT_HASH = "text_hash"
STORE = "text_embeddings"


def hashed_texts(side: Side) -> DataFrame:
    """``(row_id, text_hash, text)`` of a text side."""
    text = side.src.text_column
    return side.frame.select(ROW_ID, F.sha2(F.col(text).cast("string"), 256).alias(TEXT_HASH),
                             F.col(text))


def stored_hashes(spark, output: str, model_id: str) -> DataFrame | None:
    """The hashes of the texts the store holds for ``model_id``; None before its first chunk."""
    if not tables.exists(spark, tables.table_path(output, STORE)):
        return None
    return tables.read_key(spark, output, STORE, model_id).select(TEXT_HASH)


def embed_missing(spark, cfg: JobConfig, texts: DataFrame, side: str, model_id: str) -> dict:
    """Embeds the texts of ``texts`` (:func:`hashed_texts`) that the store does not hold for
    ``model_id``, appending them chunk by chunk; ``{"texts", "embedded", "seconds"}``."""
    e = cfg.embed
    text = texts.columns[2]
    distinct = texts.select(TEXT_HASH, text).dropDuplicates([TEXT_HASH])
    have = stored_hashes(spark, cfg.output.path, model_id)
    missing = distinct if have is None else distinct.join(have, TEXT_HASH, "left_anti")
    total = distinct.count()
    # The chunks are buckets of the text's hash, as many as the side's distinct texts need: a
    # re-run after a kill, which finds some buckets stored, embeds the others in the batches
    # a run that was never killed gives them.
    chunks = max(1, math.ceil(total / e.commit_rows))
    bucket = F.pmod(F.xxhash64(TEXT_HASH), F.lit(chunks))
    missing = missing.withColumn("_chunk", bucket).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sizes = {r["_chunk"]: r["n"] for r in
                 missing.groupBy("_chunk").agg(F.count(F.lit(1)).alias("n")).collect()}
        n = sum(sizes.values())
        if n == 0:
            log(f"embed {side}: all {total} distinct texts are stored already ({STORE})")
            return {"texts": total, "embedded": 0, "seconds": 0.0}
        tasks = embed_partitions(math.ceil(total / chunks), e.rows_per_task)
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        log(f"embed {side}: encoding {n} of {total} distinct texts of {text!r} with {e.model}"
            f"{'' if e.backend == 'torch' else ' on ' + e.backend} (batch {e.batch_size}, "
            f"{len(sizes)} commit{'s' if len(sizes) > 1 else ''} of {tasks} task"
            f"{'s' if tasks > 1 else ''})")
        counter = row_counter(spark)                    # None on Spark Connect
        t0 = time.perf_counter()
        with spark_bar(spark, f"embed {side}", total=n, unit="texts",
                       done=None if counter is None else (lambda: counter.value)):
            for chunk in sorted(sizes):
                part = missing.where(F.col("_chunk") == chunk).drop("_chunk")
                vectors = embed_frame(part.withColumnRenamed(TEXT_HASH, ROW_ID), text, e.model,
                                      e.batch_size, e.normalize, e.device, threads, counter,
                                      tasks, e.backend)
                tables.append(spark, vectors.select(F.lit(model_id).alias("model_id"),
                                                    F.col(ROW_ID).alias(TEXT_HASH), EMBEDDING),
                              cfg.output.path, STORE)
        seconds = time.perf_counter() - t0
        log(f"embed {side}: {n} texts in {took(seconds)} ({n / max(seconds, 1e-9):.0f} texts/s)")
        return {"texts": total, "embedded": n, "seconds": round(seconds, 3)}
    finally:
        missing.unpersist()


def side_embeddings(spark, cfg: JobConfig, plan: reuse.Plan, side: Side) -> DataFrame:
    """The (row_id, embedding) rows of one side, computed and committed if not done yet."""
    if EMBEDDING in side.frame.columns:
        return side.frame.select(ROW_ID, EMBEDDING)
    name, stage = f"{side.name}_embeddings", f"embed_{side.name}"
    key, fp = plan.embeddings_of(side.name)
    rows = int(side.report["kept"])
    model_id = reuse.text_model_id(cfg)

    def compute():
        return hashed_texts(side)

    def commit(texts):
        figures = embed_missing(spark, cfg, texts, side.name, model_id)
        store = tables.read_key(spark, cfg.output.path, STORE, model_id)
        # One vector a text (two runs at once may both have stored a text: the least is taken)
        vectors = (store.join(texts.select(TEXT_HASH).distinct(), TEXT_HASH, "left_semi")
                   .groupBy(TEXT_HASH).agg(F.min(EMBEDDING).alias(EMBEDDING)))
        out = (texts.select(ROW_ID, TEXT_HASH).join(vectors, TEXT_HASH)
               .select(F.lit(key).alias("embeddings_id"), ROW_ID, EMBEDDING))
        tables.replace_key(spark, out, cfg.output.path, name, key)
        written = tables.read_key(spark, cfg.output.path, name, key).count()
        if written != rows:
            raise RuntimeError(f"embed {side.name}: {written} of {rows} rows have a vector in "
                               f"{STORE}; its rows for model {model_id} were changed while "
                               "this stage ran. Run again.")
        return None, {"rows": rows, **figures}

    run_stage(spark, cfg.output.path, stage, key, fp, compute, commit,
              reused=lambda: log(f"embed {side.name}: reusing {name} {key}"))
    return tables.read_key(spark, cfg.output.path, name, key).select(ROW_ID, EMBEDDING)


def embed_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    inputs = prepare_inputs(spark, cfg, plan, log)
    for side in (inputs.pool, inputs.target):
        side_embeddings(spark, cfg, plan, side)


# Not a step of its own in `gio-spark run`: quantize asks for the embeddings (``provide``) only
# when it has work to do, so a run whose clustering is committed never looks at them.
STAGE = Stage(
    "embed", "the embed stage alone: sentence embeddings of pool and target", "embed",
    both_sides, needs=(), outputs=(STORE, "pool_embeddings", "target_embeddings"),
    command=embed_command, provide=side_embeddings, log_names=("embed_pool", "embed_target"),
    connect=True)
