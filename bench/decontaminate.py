"""Decontamination: the scale of the search through the target's clusters against all pairs,
what it finds, and what a run selects without it.

``search`` (gio_core alone, one process): a pool of unit-length 384-D rows around 50 directions
(``--pool`` rows, like sentence embeddings) and a target of ``--target`` rows from the same
directions, clustered as quantize clusters it (k-means++ then Lloyd, ``target_k`` clusters).
Planted in the pool: 300 exact copies of target rows and 300 near ones at each of three
distances (cosine about 0.99, 0.97 and 0.96 to the row they copy). For ``probes`` 1, 3 and 10:
target rows compared per pool row, the share of all pairs that is, the seconds, and the copies
found, against :func:`gio_core.copies.all_pairs_copies` on the same rows, in the same process
and on the same cores (threshold 0.95; each time the better of two calls, after a warm-up).

``pipeline`` (Spark, the bundled model): the demo (``conf/demo.yaml``), whose pool holds every
docstring of the standard library, and so every one of the target's, run through
``jobs.select_rows`` without the step, with ``decontaminate.threshold``, and with
``decontaminate.duplicates`` too, on one output path; for each run, how many of the selected
rows copy a target row (cosine at or above the threshold with one, by all pairs on the stored
embeddings) and how many pairs of selected rows are that close to each other, and how many
rows were set aside (the copies compared with what all pairs finds).

    python bench/decontaminate.py [--part search|pipeline|both] [--pool 100000]
                                  [--target 20000] [--out bench/results/decontaminate_cpu_2cores.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import clustered, emit  # noqa: E402

THRESHOLD = 0.95
COSINES = (0.99, 0.97, 0.96)      # the near copies' cosines to the rows they copy


def _near(rng, rows: np.ndarray, cosine: float) -> np.ndarray:
    """``rows`` (unit length) moved in a random direction by as much as leaves about
    ``cosine`` between a row and where it went (random directions in 384-D are near
    orthogonal to the row)."""
    noise = rng.normal(size=rows.shape).astype(np.float32)
    noise *= np.sqrt(1 / cosine ** 2 - 1) / np.linalg.norm(noise, axis=1, keepdims=True)
    return rows + noise


def best_of(times: int, fn):
    """``(fn(), the least of its wall times over times calls)``."""
    best, out = float("inf"), None
    for _ in range(times):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def search(pool_rows: int, target_rows: int, target_k: int, out: str | None) -> None:
    from gio_core.copies import all_pairs_copies, copy_index, near_copies
    from gio_core.kmeans import lloyd, normalise, seed_centres

    rng = np.random.default_rng(0)
    # spread 0.7: rows of one direction at a cosine of about 0.67, as unrelated sentences are
    pool, _ = clustered(pool_rows, 384, seed=1, spread=0.7)
    target, _ = clustered(target_rows, 384, seed=2, spread=0.7)
    at = rng.choice(pool_rows, 1200, replace=False)
    of = rng.choice(target_rows, 1200, replace=False)
    kinds = {"exact": slice(0, 300)}
    pool[at[:300]] = target[of[:300]]
    for i, cosine in enumerate(COSINES):
        part = slice(300 * (i + 1), 300 * (i + 2))
        pool[at[part]] = _near(rng, target[of[part]], cosine)
        kinds[f"near {cosine:g}"] = part
    t0 = time.perf_counter()
    fit = lloyd(target, seed_centres(target[:20_000], target_k, 0), 20, 1e-4)
    cluster_s = time.perf_counter() - t0
    near_copies(copy_index(target, fit.centres), pool[:2000], THRESHOLD, 3)     # warm-up
    oracle, all_s = best_of(2, lambda: all_pairs_copies(target, pool, THRESHOLD))
    cos = np.einsum("ij,ij->i", normalise(pool[at]), normalise(target[of]))
    truth = set(oracle.rows.tolist())
    for probes in (1, 3, 10):
        index = copy_index(target, fit.centres)
        found, took = best_of(2, lambda i=index, p=probes: near_copies(i, pool, THRESHOLD, p))
        got = set(found.rows.tolist())
        row = {"bench": "decontaminate", "part": "search", "pool_rows": pool_rows,
               "target_rows": target_rows, "target_k": target_k, "dim": 384,
               "threshold": THRESHOLD, "probes": probes,
               "compared_per_row": round(found.compared / pool_rows, 1),
               "share_of_pairs": round(found.compared / oracle.compared, 5),
               "seconds": round(took, 2), "all_pairs_seconds": round(all_s, 2),
               "target_clustering_seconds": round(cluster_s, 2),
               "found": len(got), "all_pairs_found": len(truth),
               "recall_vs_all_pairs": round(len(got & truth) / max(len(truth), 1), 4),
               "false_finds": len(got - truth)}
        for name, part in kinds.items():
            planted = at[part].tolist()
            row[f"planted {name}"] = {"rows": len(planted),
                                      "median_cosine": round(float(np.median(cos[part])), 4),
                                      "found": sum(p in got for p in planted),
                                      "all_pairs": sum(p in truth for p in planted)}
        emit(row, out)


def pipeline(out: str | None) -> None:
    import jobs
    from gio_core.copies import all_pairs_copies
    from jobs.io import tables
    from jobs.io.session import build_session
    from pyspark.sql import functions as F

    spark = build_session("bench-decontaminate", "local[2]", {}, quiet=True)
    work = tempfile.mkdtemp(prefix="gio-decontaminate-")
    config = str(ROOT / "conf" / "demo.yaml")
    runs = {}
    for name, settings in (("without", {}), ("with", {"decontaminate.threshold": THRESHOLD}),
                           ("with_duplicates", {"decontaminate.threshold": THRESHOLD,
                                                "decontaminate.duplicates": THRESHOLD})):
        t0 = time.perf_counter()
        chosen = jobs.select_rows(None, None, config=config, output=work, settings=settings)
        ids = {r["doc_id"] for r in chosen.select("doc_id").collect()}
        runs[name] = (ids, round(time.perf_counter() - t0, 1))
    emb = {side: tables.read_table(spark, work, f"{side}_embeddings")
           .select("row_id", F.col("embedding").cast("array<float>").alias("v"))
           .orderBy("row_id").toPandas() for side in ("pool", "target")}
    x = {side: np.stack(emb[side]["v"].to_numpy()).astype(np.float32) for side in emb}
    ids = [str(v) for v in emb["pool"]["row_id"]]
    oracle = all_pairs_copies(x["target"], x["pool"], THRESHOLD)
    copies = {ids[i] for i in oracle.rows}
    exact = {ids[i] for i in all_pairs_copies(x["target"], x["pool"], 1.0).rows}
    at = {rid: i for i, rid in enumerate(ids)}

    def near_pairs(chosen: set) -> int:
        """Pairs of the chosen rows at a cosine of THRESHOLD or more (all pairs)."""
        rows = x["pool"][[at[r] for r in sorted(chosen)]]
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        sims = unit @ unit.T
        return int((np.triu(sims, 1) >= THRESHOLD - 1e-5).sum())

    # the copies are found before the pool is clustered: the same in both runs that look
    aside = {(r["row_id"], r["side"]) for r in tables.read_table(spark, work, "set_aside")
             .collect()}
    quantize = [json.loads(r["detail"]) for r in tables.read_table(spark, work, "stages")
                .where((F.col("stage") == "quantize") & (F.col("status") == "done")).collect()]
    with_copies = next(d for d in quantize if "set_aside" in d
                       and "duplicates_compared_per_row" not in d)
    with_dups = next(d for d in quantize if "duplicates_compared_per_row" in d)
    row = {"bench": "decontaminate", "part": "pipeline", "data": "demo (conf/demo.yaml)",
           "pool_rows": len(x["pool"]), "target_rows": len(x["target"]),
           "threshold": THRESHOLD, "pool_rows_copying_target": len(copies),
           "of_which_exact": len(exact),
           "set_aside_is_all_pairs": {r for r, s in aside if s == "target"} == copies,
           "compared_per_row": with_copies["compared_per_row"],
           "duplicates_set_aside": with_dups["set_aside_by_side"].get("pool", 0),
           "duplicates_compared_per_row": with_dups["duplicates_compared_per_row"]}
    for name, (chosen, seconds) in runs.items():
        row[name] = {"selected": len(chosen), "copies_selected": len(chosen & copies),
                     "near_duplicate_pairs": near_pairs(chosen), "seconds": seconds}
    row["with"]["set_aside"] = with_copies["set_aside"]
    row["with_duplicates"]["set_aside"] = with_dups["set_aside"]
    emit(row, out)
    spark.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("search", "pipeline", "both"), default="both")
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--target", type=int, default=20_000)
    ap.add_argument("--target-k", type=int, default=1500)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.part in ("search", "both"):
        search(a.pool, a.target, a.target_k, a.out)
    if a.part in ("pipeline", "both"):
        pipeline(a.out)


if __name__ == "__main__":
    main()
