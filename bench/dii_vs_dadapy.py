"""gio_core.dii.DiffImbalance against DADApy 0.3.4's, same data and settings, one run.

DADApy 0.3.4 pins jax 0.4.30 and flax 0.8.5, which cannot share gio-spark's environment, so it
runs in its own virtual environment (``make bench-dii`` builds ``.venv-dadapy``; or pass
``--dadapy-python``). Each case runs in a fresh process per implementation: the 5-D tutorial
case (500 points, full batch, sgd, 500 epochs) and N in {500, 2,000, 8,000} x D in {5, 50}
(A standard normal, B = A scaled by fixed weights, full batch, sgd). Reported per case and
implementation: the median seconds per epoch after the first (the first, which compiles, apart),
peak RSS, the final weights, and the cosine between the two implementations' final weights.

    python bench/dii_vs_dadapy.py [--dadapy-python .venv-dadapy/bin/python] [--epochs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib, json, resource, sys, time
import numpy as np
impl, n, d, epochs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 0
module = importlib.import_module("dadapy.diff_imbalance" if impl == "dadapy" else "gio_core.dii")
stamps = []

def timing_bar(iterable, *args, **kwargs):          # replaces the progress bar: times each epoch
    for item in iterable:
        stamps.append(time.perf_counter())
        yield item
    stamps.append(time.perf_counter())

module.tqdm = timing_bar
np.random.seed(0)
data_a = np.random.normal(size=(n, d))
scales = np.array([10, 3, 1, 30, 7.3]) if d == 5 else np.linspace(0.5, 20, d)
data_b = scales[None, :] * data_a
dii = module.DiffImbalance(data_a, data_b, num_epochs=epochs, seed=seed, batches_per_epoch=1,
                           point_adapt_lambda=True, k_init=1, k_final=1, optimizer_name="sgd",
                           learning_rate=1e-2)
t0 = time.perf_counter()
weights, imbs = dii.train()
total = time.perf_counter() - t0
per_epoch = np.diff(stamps)
print(json.dumps({"impl": impl, "n": n, "d": d, "epochs": epochs, "train_s": total,
                  "first_epoch_s": float(per_epoch[0]),
                  "s_per_epoch": float(np.median(per_epoch[1:])),
                  "final_weights": np.asarray(weights[-1]).tolist(), "imb_last": float(imbs[-1]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(python: str, impl: str, n: int, d: int, epochs: int, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_PYTHON_CLIENT_PREALLOCATE="false", TQDM_DISABLE="1")
    try:
        proc = subprocess.run([python, "-c", CHILD, impl, str(n), str(d), str(epochs)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "n": n, "d": d, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        if proc.returncode < 0 or "RESOURCE_EXHAUSTED" in proc.stderr or "MemoryError" in proc.stderr:
            tail = [f"out of memory or killed (exit {proc.returncode}): {tail[0][:200]}"]
        return {"impl": impl, "n": n, "d": d, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dadapy-python", default=str(ROOT / ".venv-dadapy" / "bin" / "python"))
    p.add_argument("--epochs", type=int, default=20, help="timed epochs per large case")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "dii_vs_dadapy_cpu_2cores.jsonl"))
    args = p.parse_args(argv)
    cases = [("tutorial", 500, 5, 500)]
    cases += [(f"n{n}_d{d}", n, d, args.epochs if n < 8000 else max(3, args.epochs // 4))
              for n in (500, 2000, 8000) for d in (5, 50)]
    lines = []
    for name, n, d, epochs in cases:
        ours = run(sys.executable, "ours", n, d, epochs, args.timeout)
        theirs = run(args.dadapy_python, "dadapy", n, d, epochs, args.timeout)
        row = {"case": name, "n": n, "d": d, "epochs": epochs, "ours": ours, "dadapy": theirs}
        if "error" not in ours and "error" not in theirs:
            row["weights_cosine"] = cosine(ours["final_weights"], theirs["final_weights"])
            row["speedup_per_epoch"] = theirs["s_per_epoch"] / ours["s_per_epoch"]
        print(json.dumps(row), flush=True)
        lines.append(json.dumps(row))
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
