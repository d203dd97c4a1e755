"""The evaluate stage with real Spark and real Delta tables: every method chooses as many rows
from the same hash-sampled pool rows as the selection holds there, the selection's scores are
the ones gio_core computes on those rows, the pipeline's selection beats random rows where the
target is a part of the pool, the stage is reused, and another method list is a new evaluation
with the same sample."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from gio_core import median_bandwidth, mmd_rbf
from jobs.io import tables
from jobs.cli import main

DIM, COMPONENTS = 8, 8


def mixture(path, n, components, seed, prefix):
    """``n`` 8-D rows from Gaussian components (``domain`` says which), as parquet."""
    centres = np.random.default_rng(0).normal(size=(COMPONENTS, DIM)) * 3
    rng = np.random.default_rng(seed)
    comp = rng.choice(components, size=n)
    x = (centres[comp] + rng.normal(size=(n, DIM))).astype(np.float32)
    df = pd.DataFrame({"id": [f"{prefix}{i:05d}" for i in range(n)], "vec": list(x),
                       "domain": [f"c{c}" for c in comp]})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    df.to_parquet(path)
    return df


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = {
        "pool": mixture(str(root / "pool.parquet"), 1200, list(range(COMPONENTS)), 1, "p"),
        "target": mixture(str(root / "target.parquet"), 150, [0, 1, 2], 2, "t"),
        "heldout": mixture(str(root / "heldout.parquet"), 300, [0, 1, 2], 3, "h"),
    }
    vec = {"format": "parquet", "id_column": "id", "embedding_column": "vec"}
    cfg = {"spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "2"}},
           "pool": dict(vec, path=str(root / "pool.parquet")),
           "target": dict(vec, path=str(root / "target.parquet")),
           "quantize": {"pool_k": 60, "target_k": 15},
           "select": {"k": 3},
           "evaluate": {"heldout": dict(vec, path=str(root / "heldout.parquet")),
                        "sample_rows": 1000, "domain_column": "domain",
                        "label_column": "domain"},
           "output": {"path": str(root / "out")}}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"root": root, "config": str(path), "out": str(root / "out"), **data}


def sampled_ids(spark, ids, n, seed=0):
    """The ``n`` ids with the smallest seeded 64-bit hash (the stage's sample)."""
    df = spark.createDataFrame([(i,) for i in ids], "row_id string")
    return [r[0] for r in df.withColumn("h", F.xxhash64(F.lit(seed), "row_id"))
            .orderBy("h", "row_id").limit(n).collect()]


def results(spark, out, eval_id=None):
    df = tables.read_table(spark, out, "evaluations")
    if eval_id is not None:
        df = df.where(F.col("eval_id") == eval_id)
    return {r["method"]: r.asDict() for r in df.collect()}


def test_run_evaluates_the_selection_against_the_baselines_on_one_sample(spark, case, capsys):
    assert main(["run", "--config", case["config"]]) == 0
    got = results(spark, case["out"])
    # the selection is the row step's (sized by density: select.own_size: auto), so whole
    # clusters are scored beside it
    assert list(got) and set(got) == {"selection", "gio_rows", "random", "k_center",
                                      "nn_round_robin", "whole_clusters"}
    pool, held = case["pool"].set_index("id"), case["heldout"]
    sample = sampled_ids(spark, list(pool.index), 1000)
    selected = set(r["id"] for r in tables.read_table(spark, case["out"], "selected_rows")
                   .select("id").collect())
    mine = [i for i in sample if i in selected]
    assert 0 < len(mine) < len(selected)                # the sample holds part of the selection
    assert {r["rows"] for m, r in got.items() if m != "whole_clusters"} == {len(mine)}
    # whole clusters: the sampled rows of select's chosen clusters (at most as many; 159 here)
    assert 0 < got["whole_clusters"]["rows"] <= len(mine)
    assert got["whole_clusters"]["share"] > 0.8
    # The selection's scores, recomputed here from the files alone.
    hx = np.stack(held["vec"]).astype(np.float32)
    sx = np.stack(pool.loc[mine, "vec"]).astype(np.float32)
    want = mmd_rbf(hx, sx, bandwidth=median_bandwidth(hx))
    assert got["selection"]["mmd"] == pytest.approx(want, rel=1e-4)
    domains = pool.loc[mine, "domain"]
    share = float(domains.isin(["c0", "c1", "c2"]).mean())
    assert got["selection"]["share"] == pytest.approx(share)
    in_sample = int(pool.loc[sample, "domain"].isin(["c0", "c1", "c2"]).sum())
    assert got["selection"]["recall"] == pytest.approx(share * len(mine) / in_sample)
    # The target is 3 of the pool's 8 components: GIO (clusters or rows) and the nearest
    # neighbours take mostly those, random rows about 3/8 of them.
    assert got["random"]["share"] < 0.55
    for method in ("selection", "gio_rows", "nn_round_robin"):
        assert got[method]["share"] > 0.8, (method, got[method])
        assert got[method]["mmd"] < got["random"]["mmd"], (method, got[method])
        assert got[method]["accuracy"] > 0.8
    assert got["selection"]["wall_s"] is None and got["gio_rows"]["wall_s"] > 0
    detail = json.loads(got["selection"]["detail"])
    assert detail["sample_rows"] == 1000 and detail["heldout_rows"] == 300
    assert detail["heldout_in_pool"] == 0
    assert detail["target_domains"] == ["c0", "c1", "c2"]
    assert detail["clustering_cost"] == pytest.approx(got["selection"]["mmd"]
                                                      / got["gio_rows"]["mmd"])
    eval_id = got["selection"]["eval_id"]
    report = os.path.join(case["out"], "reports", f"{eval_id}_evaluation.md")
    assert "| selection | " in open(report).read()
    assert os.path.getsize(os.path.join(case["out"], "plots", f"{eval_id}_evaluation.png")) > 0
    assert "evaluate: the selection's MMD² is" in capsys.readouterr().out

    # Run again, as the command alone: the evaluation is reused, nothing is rewritten.
    version = tables.read_table(spark, case["out"], "evaluations").inputFiles()
    assert main(["evaluate", "--config", case["config"]]) == 0
    assert f"evaluate: reusing {eval_id}" in capsys.readouterr().out
    assert tables.read_table(spark, case["out"], "evaluations").inputFiles() == version

    # Other methods are another evaluation of the same rows: same sample, same selection scores.
    assert main(["evaluate", "--config", case["config"], "--set",
                 "evaluate.methods=[random]"]) == 0
    ids = {r[0] for r in tables.read_table(spark, case["out"], "evaluations")
           .select("eval_id").distinct().collect()}
    assert len(ids) == 2
    other = results(spark, case["out"], (ids - {eval_id}).pop())
    assert set(other) == {"selection", "random", "whole_clusters"}
    for key in ("rows", "mmd", "knn_kl", "share", "recall", "accuracy"):
        assert other["selection"][key] == got["selection"][key]
        assert other["random"][key] == got["random"][key]

    # With a row budget explode's row step picks the rows, and what whole clusters give for the
    # same cluster picks (select.refine: clusters) is scored beside it, at most as many rows.
    capsys.readouterr()
    assert main(["run", "--config", case["config"], "--set", "select.max_rows=150",
                 "--set", "evaluate.methods=[random]"]) == 0
    said = capsys.readouterr().out
    budgeted = tables.read_table(spark, case["out"], "evaluations").where(
        ~F.col("eval_id").isin(list(ids)))
    by = {r["method"]: r for r in budgeted.collect()}
    assert set(by) == {"selection", "random", "whole_clusters"}
    assert by["selection"]["rows"] < 150
    assert 0.5 * by["selection"]["rows"] <= by["whole_clusters"]["rows"] <= by["selection"]["rows"]
    assert by["whole_clusters"]["share"] > 0.8
    assert by["selection"]["mmd"] < by["whole_clusters"]["mmd"], (by["selection"]["mmd"],
                                                                   by["whole_clusters"]["mmd"])
    assert "evaluate: whole clusters " in said


@pytest.mark.e2e
def test_text_sides_embed_the_heldout_rows_and_run_dsir(spark, tmp_path, docstrings):
    """Docstrings: the held-out rows are texts embedded by the stage (those that are pool rows
    too are left out of the sample); DSIR resamples the pool's texts; every method is scored by
    the share of rows from the target's packages."""
    from jobs.io.demo_data import TARGET_PACKAGES, stdlib_docstrings
    pool, target = docstrings
    used = {r["doc_id"] for r in pool + target}
    left = [r for r in stdlib_docstrings() if r["package"] in TARGET_PACKAGES
            and r["doc_id"] not in used]
    held = left[::len(left) // 80][:80]
    shared = [r for r in pool if r["package"] in TARGET_PACKAGES][:10]    # in the pool too
    held += shared
    paths = {}
    for name, rows in (("pool", pool), ("target", target), ("heldout", held)):
        paths[name] = str(tmp_path / f"{name}.parquet")
        pd.DataFrame(rows).to_parquet(paths[name])
    text = {"format": "parquet", "id_column": "doc_id", "text_column": "text"}
    cfg = {"spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "2"}},
           "pool": dict(text, path=paths["pool"]), "target": dict(text, path=paths["target"]),
           "quantize": {"pool_k": 40, "target_k": 8}, "select": {"k": 3},
           "evaluate": {"heldout": dict(text, path=paths["heldout"]),
                        "methods": ["random", "dsir"], "domain_column": "package"},
           "output": {"path": str(tmp_path / "out")}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(path)]) == 0
    got = results(spark, str(tmp_path / "out"))
    assert set(got) == {"selection", "random", "dsir", "whole_clusters"}   # the row step's
    assert len({r["rows"] for m, r in got.items() if m != "whole_clusters"}) == 1
    detail = json.loads(got["selection"]["detail"])
    # The held-out rows that are pool rows too are no method's to pick.
    assert detail["heldout_rows"] == len(held) and detail["heldout_in_pool"] == len(shared)
    assert detail["sample_rows"] == len(pool) - len(shared)
    assert detail["target_domains"] == sorted(TARGET_PACKAGES)
    # 60 of the pool's 327 docstrings are the target packages' (measured: random 0.21, whole
    # clusters 0.37, the selection, the row step's, 0.56).
    assert got["random"]["share"] < 0.3
    assert got["dsir"]["share"] > got["random"]["share"]
    # 2.7x with the row step (whole clusters: 1.8x)
    assert got["selection"]["share"] >= 1.8 * got["random"]["share"]
    assert got["selection"]["share"] > got["whole_clusters"]["share"]
    assert got["selection"]["mmd"] < got["random"]["mmd"]


def test_gaf_probe_is_the_train_stages_trainer_on_each_selection(spark, case):
    """evaluate.probe gaf: each method's accuracy is the train stage's probe (fit_probe, with
    the train section's settings) trained on its rows in the stage's order."""
    from jobs.config import load_config
    from jobs.stages.train import fit_probe
    sets = ["evaluate.probe=gaf", "evaluate.methods=[random]", "train.epochs=4",
            "train.model=logistic"]
    argv = ["evaluate", "--config", case["config"]]
    for item in sets:
        argv += ["--set", item]
    assert main(["run", "--config", case["config"]]) == 0       # reused if the test above ran
    assert main(argv) == 0
    cfg = load_config(case["config"], sets)
    got = {}
    for r in tables.read_table(spark, case["out"], "evaluations").collect():
        if '"probe": "gaf"' in r["params"]:
            got[r["method"]] = r
    assert set(got) == {"selection", "random", "whole_clusters"}
    pool, held = case["pool"].set_index("id"), case["heldout"].set_index("id")
    sample = sampled_ids(spark, list(pool.index), 1000)
    selected = set(r["id"] for r in tables.read_table(spark, case["out"], "selected_rows")
                   .where(F.col("run_id") == got["selection"]["run_id"]).select("id").collect())
    mine = [i for i in sample if i in selected]
    held_ids = sampled_ids(spark, list(held.index), 5000)
    classes = sorted(set(pool.loc[sample, "domain"]) | set(held["domain"]))
    from gio_core.quality import random_rows
    drawn = list(np.array(sample)[random_rows(len(sample), len(mine), 0)])
    for method, ids in (("selection", mine), ("random", drawn)):
        _, records = fit_probe(cfg, np.stack(pool.loc[ids, "vec"]).astype(np.float32),
                               pool.loc[ids, "domain"].to_numpy(),
                               np.stack(held.loc[held_ids, "vec"]).astype(np.float32),
                               held.loc[held_ids, "domain"].to_numpy(), classes)
        assert got[method]["accuracy"] == pytest.approx(records[-1]["val_accuracy"]), method
        assert 0 < got[method]["accuracy"] <= 1
