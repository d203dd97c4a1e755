"""gio_core.GIOKL against the GIO source package (grad-info-opt), same data, one run.

Two cases: the source README's 2-D quick-start (its data, a uniform start of 100 points in
[0, 8]^2, normalize=False) and a 2,000 x 64 pool with a 500 x 64 target (unit-norm clustered
embeddings, a uniform start of 20 normalised points). Both implementations get the same start set
through ``D``. Reported: wall time of each (ours once cold, including JIT compilation, and once
warm), their ratio, the number of picks, the final KL, whether the picked sets are identical and
how long a prefix of the pick order agrees.

    pip install -e '.[bench]'; python bench/compat_vs_source.py [--skip-source]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import clustered, timed  # noqa: E402


def quick_start():
    from tests.gio_core.test_compat import quick_start_data   # the source README's data
    pool, target, start = quick_start_data()
    return ("quick_start_2d", pool, target, jnp.asarray(start),
            dict(uniform_low=0, uniform_high=8, uniform_start_size=100, dim=2),
            dict(normalize=False))


def embeddings_64():
    weights = np.zeros(50)
    weights[[3, 11, 19]] = [0.5, 0.3, 0.2]
    pool, _ = clustered(2000, 64, seed=1)
    target, _ = clustered(500, 64, seed=2, weights=weights)
    start = np.random.default_rng(3).uniform(-1, 1, (20, 64))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    return "pool_2000x64_target_500x64", jnp.asarray(pool), jnp.asarray(target), \
        jnp.asarray(start, jnp.float32), dict(dim=64), dict()


def compare(case, run_source: bool):
    import gio_core
    name, pool, target, start, ctor, fit_kw = case
    s = start.shape[0]
    (ours, _, _), cold = timed(lambda: gio_core.GIOKL(**ctor).fit(pool, target, D=start, **fit_kw))
    (ours, ours_kl, _), warm = timed(lambda: gio_core.GIOKL(**ctor).fit(pool, target, D=start,
                                                                         **fit_kw))
    row = {"case": name, "ours_seconds_cold": round(cold, 2), "ours_seconds_warm": round(warm, 2),
           "ours_picks": int(ours.shape[0] - s), "ours_final_kl": float(ours_kl[-1])}
    if run_source:
        from GIO import GIOKL as SourceModule
        with contextlib.redirect_stdout(io.StringIO()):
            src = SourceModule.GIOKL(**ctor)
            (theirs, theirs_kl, _), src_time = timed(lambda: src.fit(pool, target, D=start,
                                                                      **fit_kw))
        a, b = np.asarray(ours[s:]), np.asarray(theirs[s:])
        prefix = 0
        while prefix < min(len(a), len(b)) and np.allclose(a[prefix], b[prefix]):
            prefix += 1
        row.update({
            "source_seconds": round(src_time, 2), "source_picks": int(len(b)),
            "source_final_kl": float(theirs_kl[-1]),
            "speedup_vs_source_cold": round(src_time / cold, 1),
            "speedup_vs_source_warm": round(src_time / warm, 1),
            "same_picked_set": sorted(map(tuple, np.round(a, 5).tolist()))
            == sorted(map(tuple, np.round(b, 5).tolist())),
            "same_order_prefix": prefix,
            "max_abs_kl_difference": float(np.max(np.abs(np.asarray(ours_kl[:len(theirs_kl)])
                                                          - np.asarray(theirs_kl[:len(ours_kl)],
                                                                       float))))})
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-source", action="store_true", help="time gio_core only")
    args = parser.parse_args()
    for case in (quick_start(), embeddings_64()):
        print(json.dumps(compare(case, not args.skip_source)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
