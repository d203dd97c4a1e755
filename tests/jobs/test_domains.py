"""Several targets: a target whose rows carry a domain column, each domain with a share of the
row budget (``select.shares``) or credited by GIO's own choice; ``selection_domains`` records
which domain each pick serves.

The pool is a mixture of three well-separated blobs; the target holds rows of two of them, each
labelled with its blob's name. The blob a selected row came from is known, so the shares can be
checked on what was selected, not only on the labels the run wrote.
"""
import json
import os

import numpy as np
import pandas as pd
import pytest

import jobs
from jobs.common.errors import InputError
from jobs.io import tables
from jobs.state import stagelog

VECTORS = {"quantize.pool_k": 60, "quantize.target_k": 24, "select.k": 3}
BUDGET = 300
HELDOUT: dict = {}       # the evaluate section's settings, set by the fixture


@pytest.fixture(scope="module")
def blobs(spark, tmp_path_factory):
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(3, 8)) * 12
    pool = np.concatenate([c + rng.normal(size=(400, 8)) for c in centres])
    blob = np.repeat(["code", "math", "chat"], 400)
    target = np.concatenate([centres[0] + rng.normal(size=(120, 8)),
                             centres[1] + rng.normal(size=(120, 8))])
    domain = np.repeat(["code", "math"], 120)
    pool_df = spark.createDataFrame(pd.DataFrame(
        {"id": [f"p{i}" for i in range(len(pool))], "blob": blob, "vec": list(pool)}))
    target_df = spark.createDataFrame(pd.DataFrame(
        {"id": [f"t{i}" for i in range(len(target))], "domain": domain, "vec": list(target)}))
    held = np.concatenate([centres[0] + rng.normal(size=(60, 8)),
                           centres[1] + rng.normal(size=(60, 8))])
    path = str(tmp_path_factory.mktemp("heldout") / "heldout.parquet")
    pd.DataFrame({"id": [f"h{i}" for i in range(len(held))],
                  "domain": np.repeat(["code", "math"], 60), "vec": list(held)}).to_parquet(path)
    HELDOUT.update({"evaluate.heldout.path": path, "evaluate.heldout.format": "parquet",
                    "evaluate.heldout.embedding_column": "vec", "evaluate.heldout.id_column": "id",
                    "evaluate.methods": ["random"], "evaluate.sample_rows": 1200})
    return pool_df, target_df


def blob_rows(chosen) -> dict:
    return {r["blob"]: r["count"] for r in chosen.groupBy("blob").count().collect()}


def served(spark, out, run_id) -> list:
    return [(r["rank"], r["domain"], r["how"]) for r in tables.read_key(
        spark, out, "selection_domains", run_id).orderBy("rank").collect()]


def test_shares_come_out_as_asked_and_each_pick_records_its_domain(spark, tmp_path, blobs):
    pool_df, target_df = blobs
    out = str(tmp_path / "out")
    args = dict(embedding_column="vec", id_column="id", output=out, max_rows=BUDGET,
                domain_column="domain", settings=VECTORS)
    # The plan says, before the run, how the domains share the target's clusters and the budget.
    plan = jobs.plan(pool_df, target_df, shares={"code": 0.7, "math": 0.3}, measure=False,
                     **{**args, "settings": {**VECTORS, **HELDOUT}})
    assert plan.domains["each"] == {
        "code": {"rows": 120, "target_k": 12, "share": 0.7, "budget": 210},
        "math": {"rows": 120, "target_k": 12, "share": 0.3, "budget": 90}}
    assert plan.warnings == []
    chosen = jobs.select_rows(pool_df, target_df, shares={"code": 0.7, "math": 0.3},
                              **{**args, "settings": {**VECTORS, **HELDOUT}})
    got = blob_rows(chosen)
    run_id = chosen.first()["run_id"]
    record = jobs.runs(out).where(f"run_id = '{run_id}'").first()
    sizes = [r["cluster_size"] for r in tables.read_key(spark, out, "selection", run_id).collect()]
    # Whole clusters are selected, so a domain may be off by a part of one cluster.
    tolerance = max(sizes)
    assert sum(got.values()) == BUDGET
    assert abs(got.get("code", 0) - 0.7 * BUDGET) <= tolerance
    assert abs(got.get("math", 0) - 0.3 * BUDGET) <= tolerance
    assert "chat" not in got                      # no domain asked for the third blob
    assert record["stop_reason"] == "shares"
    quantized = json.loads(stagelog.latest(spark, out, "quantize", record["clustering_id"])[
        "detail"])["target_domains"]
    assert {d: len(ids) for d, ids in quantized.items()} == {"code": 12, "math": 12}

    # selection_domains: one row per pick, the domain it served, in the selection's order;
    # a pick for code is a cluster of the code blob.
    picks = served(spark, out, run_id)
    assert [rank for rank, _, _ in picks] == list(range(1, len(picks) + 1))
    assert {how for _, _, how in picks} == {"share"}
    by_rank = {rank: domain for rank, domain, _ in picks}
    for row in chosen.collect():
        assert by_rank[row["rank"]] == row["blob"]
    # The larger share chooses first.
    assert [d for _, d, _ in picks] == sorted((d for _, d, _ in picks), key=lambda d: d != "code")

    # Evaluate reports per domain: the sample holds the whole pool, so the rows and shares are
    # the selection's, and each domain's rows are nearer its held-out rows than random rows are.
    evaluation = tables.read_table(spark, out, "evaluations").where(
        f"run_id = '{run_id}'").first()
    per_domain = json.loads(evaluation["detail"])["per_domain"]
    assert set(per_domain) == {"code", "math"}
    for name in ("code", "math"):
        assert per_domain[name]["rows"] == got[name]
        assert per_domain[name]["asked"] == {"code": 0.7, "math": 0.3}[name]
        assert per_domain[name]["mmd"] < per_domain[name]["random_mmd"]

    # The other way round, on the same clustering (reused: only select runs again).
    flipped = jobs.select_rows(pool_df, target_df, shares={"code": 0.25, "math": 0.75}, **args)
    got = blob_rows(flipped)
    assert abs(got.get("code", 0) - 0.25 * BUDGET) <= tolerance
    assert abs(got.get("math", 0) - 0.75 * BUDGET) <= tolerance
    quantized = tables.read_table(spark, out, "stages").where(
        "stage = 'quantize' and status = 'done'").count()
    assert quantized == 1

    # GIO's own choice: no shares; each pick credited to its nearest target centroid's domain.
    own = jobs.select_rows(pool_df, target_df, **args)
    own_id = own.first()["run_id"]
    picks = served(spark, out, own_id)
    assert {how for _, _, how in picks} == {"nearest"}
    clusters = {r["cluster_id"]: r["blob"] for r in own.select("cluster_id", "blob").collect()}
    ranked = {r["rank"]: r["cluster_id"] for r in tables.read_key(
        spark, out, "selection", own_id).collect()}
    for rank, domain, _ in picks:
        if ranked[rank] in clusters:
            assert clusters[ranked[rank]] == domain
    diagnostics = jobs.runs(out).where(f"run_id = '{own_id}'").first()["diagnostics"]
    assert '"domains"' in diagnostics


def test_a_target_given_by_domain_and_shares_that_do_not_fit_it(spark, tmp_path, blobs):
    pool_df, target_df = blobs
    code = target_df.where("domain = 'code'").drop("domain")
    math = target_df.where("domain = 'math'").drop("domain")
    out = str(tmp_path / "out")
    args = dict(embedding_column="vec", id_column="id", output=out, max_rows=BUDGET,
                settings=VECTORS)
    with pytest.raises(InputError, match=r"select.shares names 'poetry', which "
                       r"target.domain_column 'domain' does not hold \(it holds 'code', 'math'\)"):
        jobs.select_rows(pool_df, {"code": code, "math": math},
                         shares={"code": 0.5, "poetry": 0.5}, **args)
    with pytest.raises(InputError, match=r"select.shares gives no share to the target's domain "
                       r"'math'"):
        jobs.select_rows(pool_df, {"code": code, "math": math}, shares={"code": 1.0}, **args)
    assert not os.path.exists(os.path.join(out, "selection"))
    # the plan names the same problem as a warning, and plans the rest
    plan = jobs.plan(pool_df, {"code": code, "math": math}, shares={"code": 0.5, "poetry": 0.5},
                     measure=False, **args)
    assert [w for w in plan.warnings if "input checks" in w] == [
        "the run would stop at its input checks: select.shares names 'poetry', which "
        "target.domain_column 'domain' does not hold (it holds 'code', 'math'); name the "
        "target's domains as they are written in that column."]
    assert plan.domains["each"]["math"]["budget"] is None       # no share for it
    with pytest.raises(InputError, match=r"target\['code'\] already has a column 'domain'"):
        jobs.select_rows(pool_df, {"code": target_df}, **args)

    # The same run given as {domain: DataFrame} selects what the labelled frame selects.
    by_domain = jobs.select_rows(pool_df, {"code": code, "math": math},
                                 shares={"code": 0.5, "math": 0.5}, **args)
    labelled = jobs.select_rows(pool_df, target_df, domain_column="domain",
                                shares={"code": 0.5, "math": 0.5}, **args)
    assert sorted(r["id"] for r in by_domain.collect()) == sorted(r["id"] for r in labelled.collect())
