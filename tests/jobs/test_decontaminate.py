"""Decontamination (quantize's step) on a real local Spark: pool rows planted as copies of target
and held-out rows are set aside, recorded, and never selected (that a run without the step
selects such rows is measured in bench/decontaminate.py)."""
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

import jobs
from gio_core.copies import all_pairs_copies
from jobs.io import tables
from jobs.state import stagelog
from tests.conftest import mixture

SETTINGS = {"quantize.pool_k": 30, "quantize.target_k": 6, "select.k": 3,
            "select.max_rows": 60, "decontaminate.threshold": 0.99}


def _plant(rng, pool, rows, count, exact):
    """``count`` rows of ``rows`` copied into ``pool`` at random free places, the first
    ``exact`` of them as they are, the rest moved by noise of 1% of their length."""
    at = rng.choice(np.flatnonzero(~np.isnan(pool[:, 0])), count, replace=False)
    of = rng.choice(len(rows), count, replace=False)
    copies = rows[of].copy()
    copies[exact:] += 0.01 * np.linalg.norm(copies[exact:], axis=1, keepdims=True) * \
        rng.normal(size=(count - exact, rows.shape[1])).astype(np.float32) / np.sqrt(8)
    return at, copies


@pytest.fixture(scope="module")
def planted(spark):
    """600 pool rows of 8-D vectors holding 15 exact and 15 near copies of the target's 80
    rows and 8 exact and 4 near copies of 60 held-out rows from the target's distribution."""
    rng = np.random.default_rng(11)
    pool, _, target, _, _ = mixture(rng, components=6, dim=8, pool_rows=600, target_rows=140)
    target, heldout = target[:80], target[80:]
    free = pool.copy()
    at_t, copies_t = _plant(rng, free, target, 30, 15)
    free[at_t] = np.nan
    at_h, copies_h = _plant(rng, free, heldout, 12, 8)
    pool[at_t], pool[at_h] = copies_t, copies_h

    def frame(x, prefix):
        return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(x))],
                             "vec": list(x.astype(float))})
    return (spark.createDataFrame(frame(pool, "p")), spark.createDataFrame(frame(target, "t")),
            frame(heldout, "h"), pool, target, heldout, at_t, at_h)


def test_copies_of_target_and_heldout_rows_are_set_aside_and_never_selected(spark, tmp_path,
                                                                           planted):
    pool_df, target_df, heldout_pdf, pool, target, heldout, at_t, at_h = planted
    threshold = SETTINGS["decontaminate.threshold"]
    want = {}
    for side, rows, prefix, at in (("target", target, "t", at_t),
                                   ("heldout", heldout, "h", at_h)):
        oracle = all_pairs_copies(rows, pool, threshold)
        assert set(at.tolist()) <= set(oracle.rows.tolist())   # the planted ones are copies
        for i, j, c in zip(oracle.rows.tolist(), oracle.refs.tolist(), oracle.cosine.tolist(),
                           strict=True):
            if c > want.get(f"p{i}", (None, None, -1.0))[2]:
                want[f"p{i}"] = (f"{prefix}{j}", side, c)
    assert {s for _, s, _ in want.values()} == {"target", "heldout"}

    heldout_pdf.to_parquet(tmp_path / "heldout.parquet")
    settings = dict(SETTINGS, **{"evaluate.heldout.path": str(tmp_path / "heldout.parquet"),
                                 "evaluate.heldout.format": "parquet",
                                 "evaluate.heldout.embedding_column": "vec",
                                 "evaluate.heldout.id_column": "id"})
    out = str(tmp_path / "out")
    args = dict(embedding_column="vec", id_column="id", settings=settings, output=out)
    quantized = jobs.run_stage("quantize", pool_df, target_df, **args)
    aside = {r["row_id"]: r for r in quantized["set_aside"].collect()}
    assert {k: (r["copy_of"], r["side"]) for k, r in aside.items()} == \
        {k: (ref, side) for k, (ref, side, _) in want.items()}   # every copy, with its row
    assert all(r["cosine"] >= threshold - 1e-5 for r in aside.values())
    assigned = {r["row_id"] for r in quantized["pool_assignments"].collect()}
    assert len(assigned) == 600 - len(want) and not assigned & set(want)
    centroids = quantized["centroids"]
    assert centroids.where(F.col("side") == "pool").agg(F.sum("size")).first()[0] == \
        600 - len(want)
    clustering = centroids.first()["clustering_id"]
    detail = json.loads(stagelog.latest(spark, out, "quantize", clustering)["detail"])
    assert detail["set_aside"] == len(want)
    assert detail["set_aside_by_side"] == {
        side: sum(s == side for _, s, _ in want.values()) for side in ("target", "heldout")}
    assert 0 < detail["compared_per_row"] < 140            # fewer than all 140 rows

    jobs.run_stage("select", pool_df, target_df, **args)
    chosen = {r["id"] for r in jobs.run_stage("explode", pool_df, target_df,
                                              **args)["selected_rows"].collect()}
    assert len(chosen) == 60 and not chosen & set(want)
    assert tables.read_table(spark, out, "set_aside").count() == len(want)

    # evaluate's baselines choose from the same decontaminated pool: the copies are not sampled
    settings.update({"evaluate.methods": ["random"], "evaluate.sample_rows": 1000})
    evaluated = jobs.run_stage("evaluate", pool_df, target_df, **args)["evaluations"]
    detail = json.loads(evaluated.first()["detail"])
    assert detail["sample_rows"] == 600 - len(want) and detail["heldout_in_pool"] == 0
