"""Helpers shared by the benchmarks: synthetic clustered embeddings and a child-process runner."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def clustered(rows: int, dim: int, seed: int, components: int = 50, spread: float = 1.0,
              weights=None, centres=None):
    """Unit-norm points around ``components`` random directions, like sentence embeddings.

    Returns ``(points [rows, dim] float32, component of each row [rows])``."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = np.random.default_rng(12345).normal(size=(components, dim))
    comp = rng.choice(len(centres), size=rows, p=weights)
    x = centres[comp] + spread * rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), comp


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_child(module_args: list[str], timeout: float = 3600) -> dict:
    """Runs ``python -m ...`` in a fresh process; returns its JSON line plus its peak RSS."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, *module_args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(row: dict, out: str | None) -> None:
    """Prints ``row`` as one JSON line and, with ``out``, appends it to that file."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
