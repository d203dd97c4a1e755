"""gio_core.gaf's step against the reference's torch ``step_GAF``, same model sizes, one run.

The model is an MLP ``[inputs, hidden, 10]`` whose hidden width sets the parameter count (about
1e4, 1e5 and 1e6); each micro-batch holds 32 rows. Per case, micro-batches in {2, 4, 8}: the
median seconds per step of

* ``reference``: gradient-agreement-filtering 0.1.3's ``step_GAF`` (torch, one backward pass per
  micro-batch in a Python loop, then the pairwise fusion), SGD;
* ``gio_core``: ``gio_core.gaf.make_gaf_step`` (JAX, every micro-batch gradient in one ``vmap``,
  the fusion in a ``lax.scan``, jitted once), optax SGD;

after ``--warmup`` steps (JAX compiles in the first), and their ratio. Both run on the CPU with
the threads each library takes by default. Writes JSON lines to stdout and, with ``--out``, to a
file.

    python bench/gaf_vs_reference.py [--steps 20] [--out bench/results/gaf_vs_reference.jsonl]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

SIZES = {"1e4": (64, 128), "1e5": (256, 380), "1e6": (1024, 960)}   # inputs, hidden
ROWS = 32
CLASSES = 10


def reference_timer(inputs, hidden, n, steps, warmup):
    import torch
    from gradient_agreement_filtering import step_GAF
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, CLASSES))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(n * ROWS, inputs)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, n * ROWS))
    data = torch.utils.data.TensorDataset(x, y)
    mbs = [torch.utils.data.Subset(data, list(range(i * ROWS, (i + 1) * ROWS))) for i in range(n)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step_GAF(model, opt, loss, mbs, wandb=False, verbose=False, cos_distance_thresh=1.0)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), sum(p.numel() for p in model.parameters())


def gio_timer(inputs, hidden, n, steps, warmup):
    import jax
    import optax

    from gio_core import gaf
    params, apply_fn = gaf.mlp([inputs, hidden, CLASSES], seed=0)
    opt = optax.sgd(1e-3)
    step = gaf.make_gaf_step(gaf.classification_loss(apply_fn), opt, cos_distance_thresh=1.0)
    state = opt.init(params)
    rng = np.random.default_rng(0)
    mbs = {"x": jax.numpy.asarray(rng.normal(size=(n, ROWS, inputs)).astype(np.float32)),
           "y": jax.numpy.asarray(rng.integers(0, CLASSES, (n, ROWS)))}
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        params, state, m = step(params, state, mbs)
        jax.block_until_ready(params)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), int(sum(np.size(v) for v in jax.tree_util.tree_leaves(params)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    lines = []
    for label, (inputs, hidden) in SIZES.items():
        for n in (2, 4, 8):
            ref_s, ref_p = reference_timer(inputs, hidden, n, args.steps, args.warmup)
            gio_s, gio_p = gio_timer(inputs, hidden, n, args.steps, args.warmup)
            assert ref_p == gio_p, (ref_p, gio_p)
            line = {"params": gio_p, "size": label, "microbatches": n, "rows_per_microbatch": ROWS,
                    "reference_s_per_step": round(ref_s, 6), "gio_core_s_per_step": round(gio_s, 6),
                    "speedup": round(ref_s / gio_s, 2)}
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
