"""Selection at scale: wall time and peak memory of gio_core.select, both methods.

Each configuration runs in its own process (so peak RSS is its own) on unit-norm clustered
embeddings with d = 384; the target is drawn from 5 of the pool's 50 components. The baseline,
run in the same invocation, is the exact method with its incremental rescoring switched off
(every pick rescores every pool row against every target), on the configurations where it
finishes in reasonable time.

    python bench/scale.py                 # the grid, then the 1,500 x 1,500 x 1,500-picks case
    python bench/scale.py --quick         # only the 1,500 case
    python bench/scale.py --weighted      # weighted pools (cluster sizes) and bounded memory

``--weighted`` runs the exact method with pool weights drawn from 1 to 200 (as the pipeline's
cluster sizes are): against the general rescoring (each candidate inserted into every changed
list and the list rescored; what weighted pools got before the closed form), against unit
weights, and at 100,000 x 10,000 with ``cache_bytes`` at 4 GiB (the whole distance matrix kept)
and at 1 GiB (the rows inside each target's radius kept instead).
Prints one JSON object per configuration, then a summary line.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import clustered, emit, peak_rss_mib, run_child, timed

DIM = 384
TARGET_COMPONENTS = [3, 11, 19, 27, 35]


def one(pool_rows, target_rows, picks, method, naive, weighted=False, cache_bytes=2 ** 32):
    import jax
    import gio_core
    from gio_core._engines import KnnEngine
    pool_w = (np.random.default_rng(3).integers(1, 201, pool_rows).astype(np.float64)
              if weighted else None)
    weights = np.zeros(50)
    weights[TARGET_COMPONENTS] = [0.4, 0.25, 0.15, 0.1, 0.1]
    pool, pool_comp = clustered(pool_rows, DIM, seed=1)
    target, _ = clustered(target_rows, DIM, seed=2, weights=weights)
    if naive == "general":
        init = KnnEngine.__init__
        KnnEngine.__init__ = lambda self, *a, **o: init(self, *a, **dict(o, closed_form=False))
    elif naive:
        accept = KnnEngine.accept
        KnnEngine.accept = lambda self, state, row: accept(self, state, row)._replace(gains=None)
    kw = dict(method=method, stop_criterion="none", max_iter=picks, cache_bytes=cache_bytes,
              pool_weights=pool_w)
    if method == "gradient":
        kw["v_init"] = "jump"
    # Compile on a tiny problem of the same dimension first, so the timing is the work itself.
    gio_core.select(target[:50], pool[:300], **dict(kw, max_iter=8, pool_weights=None if pool_w
                                                    is None else pool_w[:300]))
    result, seconds = timed(lambda: gio_core.select(target, pool, **kw))
    comps = pool_comp[result.indices]
    return {"pool": pool_rows, "target": target_rows, "dim": DIM, "picks": int(len(result.indices)),
            "method": method, "baseline_full_rescoring": naive is True,
            "baseline_general_rescoring": naive == "general", "weighted": weighted,
            "cache_bytes": cache_bytes, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "from_target_components": float(np.isin(comps, TARGET_COMPONENTS).mean()),
            "final_kl": float(result.kl[-1]), "device": str(jax.devices()[0].platform)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=7, metavar=("POOL", "TARGET", "PICKS", "METHOD", "NAIVE",
                                                   "WEIGHTED", "CACHE_BYTES"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--weighted", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.one:
        p, t, k, method, naive, weighted, cache = args.one
        naive = {"0": False, "1": True, "general": "general"}[naive]
        print(json.dumps(one(int(p), int(t), int(k), method, naive, weighted == "1", int(cache))))
        return
    if args.weighted:
        return weighted_grid(args.out)
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
        row = run_child(["bench/scale.py", "--one", *map(str, cfg), "0", str(2 ** 32)])
        rows.append(row)
        print(json.dumps(row), flush=True)
    fast = {(r["pool"], r["target"], r["picks"]): r["seconds"] for r in rows
            if r["method"] == "exact" and not r["baseline_full_rescoring"]}
    ratios = {f"{p}x{t}x{k}": round(r["seconds"] / fast[(p, t, k)], 1) for r in rows
              for (p, t, k) in [(r["pool"], r["target"], r["picks"])]
              if r["baseline_full_rescoring"] and (p, t, k) in fast}
    print(json.dumps({"summary": "full rescoring time / incremental exact time", **ratios}))


def weighted_grid(out):
    big, small = 2 ** 32, 2 ** 30
    configs = [(10000, 1000, 500, "exact", "0", "0", big),
               (10000, 1000, 500, "exact", "0", "1", big),
               (10000, 1000, 500, "exact", "general", "1", big),
               (100000, 10000, 500, "exact", "0", "0", big),
               (100000, 10000, 500, "exact", "0", "1", big),
               (100000, 10000, 500, "exact", "0", "0", small),
               (100000, 10000, 500, "exact", "0", "1", small)]
    rows = []
    for cfg in configs:
        row = run_child(["bench/scale.py", "--one", *map(str, cfg)])
        rows.append(row)
        emit(row, out)
    t = {(r["pool"], r["weighted"], r["baseline_general_rescoring"], r["cache_bytes"]):
         r["seconds"] for r in rows}
    emit({"summary": "seconds ratios",
          "10000x1000 weighted: general / closed form": round(
              t[(10000, True, True, big)] / t[(10000, True, False, big)], 2),
          "10000x1000: weighted / unit": round(
              t[(10000, True, False, big)] / t[(10000, False, False, big)], 2),
          "100000x10000: weighted / unit": round(
              t[(100000, True, False, big)] / t[(100000, False, False, big)], 2),
          "100000x10000 unit: 1 GiB / 4 GiB cache_bytes": round(
              t[(100000, False, False, small)] / t[(100000, False, False, big)], 2),
          "100000x10000 weighted: 1 GiB / 4 GiB cache_bytes": round(
              t[(100000, True, False, small)] / t[(100000, True, False, big)], 2)}, out)


if __name__ == "__main__":
    sys.exit(main())
