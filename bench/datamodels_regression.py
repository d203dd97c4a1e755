"""Datamodels regression: gio_core.datamodels.lasso_path against scikit-learn's lasso_path.

For models in {500, 5,000} x training examples in {1,000, 10,000} x targets in {10, 1,000},
one run: random-half masks and, per target, a sparse linear signal (20 examples) plus noise.
Both fit the same full path (``k`` lambdas from lam_max down to ``eps * lam_max``, warm starts,
scikit-learn's duality-gap tolerance ``tol``, no early stopping) on the same standardised masks:

* ``sklearn``: ``sklearn.linear_model.lasso_path`` (coordinate descent, float64), one target
  at a time, as one would run it per target; timed on ``--sklearn-targets`` targets and
  reported per target;
* ``gio_core``: ``lasso_path(..., patience=None)`` (FISTA vectorised over targets, float32),
  timed on all targets up to ``--max-targets`` (the cost grows linearly in the targets of a
  chunk), reported per target, JIT compilation included (one cold call per case).

The ratio is sklearn's seconds per target over ours. Agreement: the cosine between the two
weight vectors at the path's last lambda, on the targets both fitted. Writes JSON lines to
stdout and, with ``--out``, to a file.

    python bench/datamodels_regression.py [--k 100] [--out bench/results/datamodels_regression.jsonl]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def problem(models: int, examples: int, targets: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = rng.random((models, examples)) < 0.5
    truth = np.zeros((examples, targets), np.float32)
    for t in range(targets):
        idx = rng.choice(examples, 20, replace=False)
        truth[idx, t] = rng.normal(0, 1, 20)
    outputs = masks.astype(np.float32) @ truth + rng.normal(0, 1, (models, targets))
    return masks, outputs.astype(np.float64)


def run_case(models, examples, targets, args) -> dict:
    from sklearn.linear_model import lasso_path as sk_path

    from gio_core import datamodels as dm
    masks, outputs = problem(models, examples, targets)
    ours_n = min(targets, args.max_targets)
    start = time.perf_counter()
    ours = dm.lasso_path(masks, outputs[:, :ours_n], k=args.k, eps=args.eps, tol=args.tol,
                         patience=None, max_iter=args.max_iter)
    ours_s = time.perf_counter() - start
    stats = dm.standardization(masks)
    x_std = ((masks - stats.mean) / np.where(stats.scale > 0, stats.scale, 1.0))
    sk_n = min(targets, args.sklearn_targets)
    cosines = []
    start = time.perf_counter()
    for t in range(sk_n):
        y = outputs[:, t] - outputs[:, t].mean()
        _, coefs, _ = sk_path(x_std, y, eps=args.eps, alphas=args.k, tol=args.tol,
                              max_iter=args.max_iter)
        mine = ours.weight[t] * stats.scale
        ref = coefs[:, -1]
        cosines.append(float(mine @ ref / (np.linalg.norm(mine) * np.linalg.norm(ref))))
    sk_s = time.perf_counter() - start
    row = {"models": models, "examples": examples, "targets": targets, "k": args.k,
           "eps": args.eps, "tol": args.tol,
           "mode": "gram" if examples <= 2 * models else "data",
           "gio_core_targets_timed": ours_n, "gio_core_s": round(ours_s, 3),
           "gio_core_s_per_target": ours_s / ours_n,
           "sklearn_targets_timed": sk_n, "sklearn_s": round(sk_s, 3),
           "sklearn_s_per_target": sk_s / sk_n,
           "speedup": (sk_s / sk_n) / (ours_s / ours_n),
           "cosine_min": min(cosines), "converged": int(ours.converged.sum())}
    return row


def main() -> None:
    from bench._common import emit
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=10_000)
    parser.add_argument("--sklearn-targets", type=int, default=2)
    parser.add_argument("--max-targets", type=int, default=1000)
    parser.add_argument("--models", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--examples", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--out")
    args = parser.parse_args()
    for models, examples, targets in itertools.product(args.models, args.examples,
                                                       args.targets):
        row = run_case(models, examples, targets, args)
        emit(row, args.out)


if __name__ == "__main__":
    main()
