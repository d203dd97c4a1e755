"""Decontamination (quantize's step) on a real local Spark: pool rows planted as copies of target
rows are set aside, recorded, and never selected (that a run without the step selects them is
measured in bench/decontaminate.py)."""
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


@pytest.fixture(scope="module")
def planted(spark):
    """600 pool rows of 8-D vectors with 15 exact and 15 near copies (1% noise) of target rows
    put in at random places; the target's 80 rows."""
    rng = np.random.default_rng(11)
    pool, _, target, _, _ = mixture(rng, components=6, dim=8, pool_rows=600, target_rows=80)
    at = rng.choice(len(pool), 30, replace=False)
    of = rng.choice(len(target), 30, replace=False)
    pool[at] = target[of]
    pool[at[15:]] += 0.01 * np.linalg.norm(target[of[15:]], axis=1, keepdims=True) * \
        rng.normal(size=(15, 8)).astype(np.float32) / np.sqrt(8)

    def frame(x, prefix):
        return spark.createDataFrame(pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(x))],
                                                   "vec": list(x.astype(float))}))
    return frame(pool, "p"), frame(target, "t"), pool, target, at, of


def test_copies_of_target_rows_are_set_aside_and_never_selected(spark, tmp_path, planted):
    pool_df, target_df, pool, target, at, of = planted
    oracle = all_pairs_copies(target, pool, SETTINGS["decontaminate.threshold"])
    assert set(at.tolist()) <= set(oracle.rows.tolist())      # the planted ones are copies
    want = {f"p{i}": f"t{j}" for i, j in zip(oracle.rows.tolist(), oracle.refs.tolist(), strict=True)}

    out = str(tmp_path / "out")
    chosen = {r["id"] for r in jobs.select_rows(pool_df, target_df, embedding_column="vec",
                                                id_column="id", settings=SETTINGS,
                                                output=out).collect()}
    assert len(chosen) == 60 and not chosen & set(want)

    aside = {r["row_id"]: r for r in tables.read_table(spark, out, "set_aside").collect()}
    assert {k: r["copy_of"] for k, r in aside.items()} == want   # every copy, with its row
    assert all(r["side"] == "target" and r["cosine"] >= 0.99 for r in aside.values())
    assigned = {r["row_id"] for r in tables.read_table(spark, out, "pool_assignments").collect()}
    assert len(assigned) == 600 - len(want) and not assigned & set(want)
    centroids = tables.read_table(spark, out, "centroids")
    assert centroids.where(F.col("side") == "pool").agg(F.sum("size")).first()[0] == \
        600 - len(want)
    clustering = centroids.first()["clustering_id"]
    assert {r["clustering_id"] for r in aside.values()} == {clustering}
    detail = json.loads(stagelog.latest(spark, out, "quantize", clustering)["detail"])
    assert detail["set_aside"] == len(want)
    assert 0 < detail["compared_per_row"] < 80             # fewer than all 80 target rows
