"""Selection at scale: wall time and peak memory of gio_core.select, both methods.

Each configuration runs in its own process (so peak RSS is its own) on unit-norm clustered
embeddings with d = 384; the target is drawn from 5 of the pool's 50 components. The baseline,
run in the same invocation, is the exact method with its incremental rescoring switched off
(every pick rescores every pool row against every target), on the configurations where it
finishes in reasonable time.

    python bench/scale.py                 # the grid, then the 1,500 x 1,500 x 1,500-picks case
    python bench/scale.py --quick         # only the 1,500 case
Prints one JSON object per configuration, then a summary line.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import clustered, peak_rss_mib, run_child, timed

DIM = 384
TARGET_COMPONENTS = [3, 11, 19, 27, 35]


def one(pool_rows, target_rows, picks, method, naive):
    import jax
    import gio_core
    from gio_core._engines import KnnEngine
    weights = np.zeros(50)
    weights[TARGET_COMPONENTS] = [0.4, 0.25, 0.15, 0.1, 0.1]
    pool, pool_comp = clustered(pool_rows, DIM, seed=1)
    target, _ = clustered(target_rows, DIM, seed=2, weights=weights)
    if naive:
        accept = KnnEngine.accept
        KnnEngine.accept = lambda self, state, row: accept(self, state, row)._replace(gains=None)
    kw = dict(method=method, stop_criterion="none", max_iter=picks)
    if method == "gradient":
        kw["v_init"] = "jump"
    # Compile on a tiny problem of the same dimension first, so the timing is the work itself.
    gio_core.select(target[:50], pool[:300], **dict(kw, max_iter=8))
    result, seconds = timed(lambda: gio_core.select(target, pool, **kw))
    comps = pool_comp[result.indices]
    return {"pool": pool_rows, "target": target_rows, "dim": DIM, "picks": int(len(result.indices)),
            "method": method, "baseline_full_rescoring": naive, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "from_target_components": float(np.isin(comps, TARGET_COMPONENTS).mean()),
            "final_kl": float(result.kl[-1]), "device": str(jax.devices()[0].platform)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=5, metavar=("POOL", "TARGET", "PICKS", "METHOD", "NAIVE"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.one:
        p, t, k, method, naive = args.one
        print(json.dumps(one(int(p), int(t), int(k), method, naive == "1")))
        return
    configs = [(1500, 1500, 1500, "exact", "0"), (1500, 1500, 1500, "exact", "1"),
               (1500, 1500, 1500, "gradient", "0")]
    if not args.quick:
        for pool_rows in (1000, 10000, 100000):
            for target_rows in (1000, 10000):
                for method in ("exact", "gradient"):
                    configs.append((pool_rows, target_rows, 500, method, "0"))
        configs += [(1000, 1000, 500, "exact", "1"), (10000, 1000, 500, "exact", "1")]
    rows = []
    for cfg in configs:
        row = run_child(["bench/scale.py", "--one", *map(str, cfg)])
        rows.append(row)
        print(json.dumps(row), flush=True)
    fast = {(r["pool"], r["target"], r["picks"]): r["seconds"] for r in rows
            if r["method"] == "exact" and not r["baseline_full_rescoring"]}
    ratios = {f"{p}x{t}x{k}": round(r["seconds"] / fast[(p, t, k)], 1) for r in rows
              for (p, t, k) in [(r["pool"], r["target"], r["picks"])]
              if r["baseline_full_rescoring"] and (p, t, k) in fast}
    print(json.dumps({"summary": "full rescoring time / incremental exact time", **ratios}))


if __name__ == "__main__":
    sys.exit(main())
