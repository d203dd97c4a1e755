"""Embed and select on a CUDA GPU, against the same work on the CPU in the same run.

* embed: the bundled MiniLM's ``encode`` on ``--texts`` demo docstrings (repeated to that many)
  on the GPU (torch's CUDA wheels), against the CPU on ``--cpu-texts`` of them;
* select: ``gio_core.select`` (knn, exact, unit weights, ``--picks`` picks) on ``--pool`` x
  ``--target`` clustered 384-d centroids (default 1,000,000 x 100,000) with JAX on the GPU
  (``jax[cuda12]``), against the CPU on ``--cpu-pool`` x ``--cpu-target`` (default 100,000 x
  10,000; the GPU problem would take hours there), both reported as picks/s and seconds, with
  the GPU's peak memory.

One JSON line per measurement, appended to ``--out`` (default ``bench/results/gpu.jsonl``), and a
summary line. Without a GPU it stops with a message (exit 3), unless ``--allow-cpu`` (a smoke run
of the script itself on small sizes: its figures say nothing about GPUs).

    make bench-gpu        # pip installs jax[cuda12] into .venv first
    python bench/gpu.py [--pool 1000000] [--target 100000] [--picks 200] [--allow-cpu]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
from bench._common import clustered, emit  # noqa: E402

TARGET_COMPONENTS = [3, 11, 19, 27, 35]


def embed_rate(device: str, texts: list[str], batch: int) -> float:
    from jobs.io.encoders import load_model
    model = load_model("bundled", device)
    model.encode(texts[:batch], batch_size=batch)                        # warm-up
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.encode(texts, batch_size=batch, normalize_embeddings=True)
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - start)


def select_run(pool_rows: int, target_rows: int, picks: int, device) -> dict:
    import jax
    import gio_core
    weights = np.zeros(50)
    weights[TARGET_COMPONENTS] = [0.4, 0.25, 0.15, 0.1, 0.1]
    pool, comp = clustered(pool_rows, 384, seed=1)
    target, _ = clustered(target_rows, 384, seed=2, weights=weights)
    kw = dict(method="exact", stop_criterion="none", max_iter=picks)
    with jax.default_device(device):
        gio_core.select(target[:64], pool[:512], **dict(kw, max_iter=8))      # compile
        start = time.perf_counter()
        result = gio_core.select(target, pool, **kw)
        seconds = time.perf_counter() - start
    stats = device.memory_stats() or {}
    return {"pool": pool_rows, "target": target_rows, "picks": int(len(result.indices)),
            "seconds": round(seconds, 2), "picks_per_s": round(len(result.indices) / seconds, 2),
            "from_target_components": float(np.isin(comp[result.indices],
                                                    TARGET_COMPONENTS).mean()),
            "peak_device_mib": round(stats.get("peak_bytes_in_use", 0) / 2 ** 20, 1) or None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--target", type=int, default=100_000)
    parser.add_argument("--cpu-pool", type=int, default=100_000)
    parser.add_argument("--cpu-target", type=int, default=10_000)
    parser.add_argument("--picks", type=int, default=200)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--cpu-texts", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--out", default="bench/results/gpu.jsonl")
    args = parser.parse_args()

    import jax
    import torch
    gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" \
        else []
    if not (gpus and torch.cuda.is_available()) and not args.allow_cpu:
        print(f"bench/gpu.py: no CUDA GPU seen (JAX: {jax.default_backend()}, torch CUDA: "
              f"{torch.cuda.is_available()}); run it where one is, after `make bench-gpu` "
              "installs jax[cuda12], or pass --allow-cpu for a smoke run.", file=sys.stderr)
        return 3
    cpu = jax.devices("cpu")[0]
    fast = gpus[0] if gpus else cpu
    where = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name(0) if where == "cuda" else "none (smoke run on the CPU)"

    from jobs.io.demo_data import demo_rows
    docs = [r["text"] for r in demo_rows("pool")]
    texts = (docs * (args.texts // len(docs) + 1))[: args.texts]
    rows = []
    gpu_rate = embed_rate(where, texts, args.batch)
    cpu_rate = embed_rate("cpu", texts[: args.cpu_texts], 64)
    rows.append({"bench": "embed", "device": card, "texts": len(texts),
                 "texts_per_s": round(gpu_rate, 1), "cpu_texts_per_s": round(cpu_rate, 1),
                 "cpu_threads": torch.get_num_threads(), "speedup": round(gpu_rate / cpu_rate, 2)})
    emit(rows[-1], args.out)
    for device, pool, target in ((fast, args.pool, args.target),
                                 (cpu, args.cpu_pool, args.cpu_target)):
        rows.append({"bench": "select", "device": card if device is fast else "cpu",
                     **select_run(pool, target, args.picks, device)})
        emit(rows[-1], args.out)
    gpu_sel, cpu_sel = rows[1], rows[2]
    emit({"summary": "GPU against CPU in this run", "device": card,
          "embed_speedup": rows[0]["speedup"],
          "select_pairs_per_s_ratio": round(
              (gpu_sel["pool"] * gpu_sel["target"] / gpu_sel["seconds"])
              / (cpu_sel["pool"] * cpu_sel["target"] / cpu_sel["seconds"]), 2)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
