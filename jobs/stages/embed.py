"""The embed stage: sentence embeddings inside Spark.

The encoder (:func:`jobs.io.encoders.embed_frame`, a ``mapInPandas`` function) loads the
sentence-transformers model once per Python worker and encodes each Arrow batch. Text sides are
written to ``<side>_embeddings`` under their ``embeddings_id`` (one transaction each, reused
while the source and model are unchanged); sides with a precomputed vector column are read
straight from the source.
"""
from __future__ import annotations

import time

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


def side_embeddings(spark, cfg: JobConfig, plan: reuse.Plan, side: Side) -> DataFrame:
    """The (row_id, embedding) rows of one side, computed and committed if not done yet."""
    if EMBEDDING in side.frame.columns:
        return side.frame.select(ROW_ID, EMBEDDING)
    name, stage = f"{side.name}_embeddings", f"embed_{side.name}"
    key, fp = plan.embeddings_of(side.name)
    rows = int(side.report["kept"])

    def compute():
        """The embeddings as a lazy frame (the model runs as commit writes it) and the counter
        its tasks add their rows to."""
        e = cfg.embed
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        tasks = embed_partitions(rows, e.rows_per_task)
        log(f"embed {side.name}: encoding {rows} texts of {side.src.text_column!r} with "
            f"{e.model}{'' if e.backend == 'torch' else ' on ' + e.backend} (batch "
            f"{e.batch_size}, {tasks} task{'s' if tasks > 1 else ''})")
        counter = row_counter(spark)                    # None on Spark Connect
        out = embed_frame(side.frame, side.src.text_column, e.model, e.batch_size, e.normalize,
                          e.device, threads, counter, tasks, e.backend).withColumn(
                              "embeddings_id", F.lit(key))
        return out, counter

    def commit(computed):
        out, counter = computed
        t0 = time.perf_counter()
        with spark_bar(spark, f"embed {side.name}", total=rows, unit="texts",
                       done=None if counter is None else (lambda: counter.value)):
            tables.replace_key(spark, out, cfg.output.path, name, key)
        seconds = time.perf_counter() - t0
        log(f"embed {side.name}: {rows} texts in {took(seconds)} "
            f"({rows / max(seconds, 1e-9):.0f} texts/s)")
        return None, {"rows": rows, "seconds": round(seconds, 3)}

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
    both_sides, needs=(), outputs=("pool_embeddings", "target_embeddings"),
    command=embed_command, provide=side_embeddings, log_names=("embed_pool", "embed_target"),
    connect=True)
