"""The weigh stage with real Spark and real Delta tables: the weights it learns are those of
gio_core.dii on the same rows, they do not depend on the source's row order, and clustering in
the weighted space picks better rows when the embedding has distracting coordinates."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from gio_core.dii import DiffImbalance
from jobs.io import tables
from jobs.cli import main
from jobs.config import load_config
from jobs.pipeline import run_pipeline

SCALES = np.array([10, 3, 1, 30, 7.3])


def tutorial(path, order=None, files=1):
    """The DADApy tutorial's 5-D case as a Parquet source (x0..x4 -> y0..y4 = x * SCALES)."""
    np.random.seed(0)
    a = np.random.normal(size=(500, 5))
    b = a * SCALES
    df = pd.DataFrame({f"x{i}": a[:, i] for i in range(5)} | {f"y{i}": b[:, i] for i in range(5)})
    df["id"] = [f"r{i:03d}" for i in range(500)]
    df["band"] = np.digitize(b[:, 3], [-20, 20])          # a 3-label view of the strongest y
    if order is not None:
        df = df.iloc[order]
    os.makedirs(path, exist_ok=True)
    for i, part in enumerate(np.array_split(df, files)):
        part.to_parquet(os.path.join(path, f"part-{i}.parquet"))
    return a, b, df


def weigh_config(tmp_path, source, out, **weigh):
    section = {"source": {"format": "parquet", "path": source, "id_column": "id"},
               "a_columns": [f"x{i}" for i in range(5)], "b_columns": [f"y{i}" for i in range(5)]}
    section.update(weigh)
    path = tmp_path / f"weigh-{len(os.listdir(tmp_path))}.yaml"
    path.write_text(yaml.safe_dump({"spark": {"master": "local[2]"}, "weigh": section,
                                    "output": {"path": out}}))
    return str(path)


def weights_of(spark, out):
    df = spark.read.format("delta").load(tables.table_path(out, "feature_weights"))
    return df.orderBy("weights_id", "feature").toPandas()


def sample_ids(spark, frame, n, seed):
    from jobs.common.frames import seeded_sample
    return [r["row_id"] for r in seeded_sample(spark.createDataFrame(frame).withColumnRenamed(
        "id", "row_id"), n, seed).select("row_id").collect()]


def test_weigh_learns_the_tutorial_weights_as_gio_core_does(spark, tmp_path):
    a, b, frame = tutorial(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    cfg = weigh_config(tmp_path, str(tmp_path / "src"), out, num_points=500, num_epochs=500)
    assert main(["weigh", "--config", cfg]) == 0          # no pool or target configured
    got = weights_of(spark, out)
    assert list(got["feature"]) == [0, 1, 2, 3, 4] and list(got["name"]) == [f"x{i}" for i in range(5)]
    np.testing.assert_allclose(got["scaled"] * 30, [9.99, 2.95, 0.89, 30, 7.31], atol=0.3)
    # The same rows in the stage's order (every row; the seeded hash orders them), trained here.
    order = [int(i[1:]) for i in sample_ids(spark, frame, 500, 0)]
    dii = DiffImbalance(a[order], b[order], num_epochs=500, rank_ties="average")
    params, imbs = dii.train(progress=False)
    final, error = dii.return_final_dii()
    np.testing.assert_allclose(got["weight"], params[-1], rtol=1e-4)
    run = spark.read.format("delta").load(tables.table_path(out, "weight_runs")).first()
    assert run["points"] == 500 and run["features"] == 5
    assert len(run["dii_curve"]) == 501 and np.array(run["weights_curve"]).shape == (501, 5)
    np.testing.assert_allclose(run["dii_curve"], imbs, rtol=1e-4)
    assert run["dii_curve"][-1] < run["dii_curve"][0] / 5
    np.testing.assert_allclose([run["dii_final"], run["dii_error"]], [final, error], rtol=1e-4)
    assert json.loads(run["space_b"])["kind"] == "features"
    # Run again: reused, nothing written.
    version = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(out, 'feature_weights')}`") \
        .count()
    assert main(["weigh", "--config", cfg]) == 0
    assert spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(out, 'feature_weights')}`") \
        .count() == version
    stages = spark.read.format("delta").load(tables.table_path(out, "stages"))
    assert stages.where((F.col("stage") == "weigh") & (F.col("status") == "done")).count() == 1


def test_weights_do_not_depend_on_the_source_row_order(spark, tmp_path):
    """120 of 500 rows sampled, labels as B (ties), mini-batches: the same weights from the
    source in its order and shuffled across three files."""
    tutorial(str(tmp_path / "a"))
    tutorial(str(tmp_path / "b"), order=np.random.default_rng(3).permutation(500), files=3)
    results = []
    for name in ("a", "b"):
        out = str(tmp_path / f"out-{name}")
        cfg = weigh_config(tmp_path, str(tmp_path / name), out, b_columns=["band"],
                           num_points=120, num_epochs=30, batches_per_epoch=4, seed=5,
                           optimizer_name="adam", learning_rate=0.05)
        assert main(["weigh", "--config", cfg]) == 0
        results.append(weights_of(spark, out))
        run = spark.read.format("delta").load(tables.table_path(out, "weight_runs")).first()
        assert json.loads(run["space_b"]) == {"kind": "labels", "columns": ["band"],
                                              "features": 3, "labels": ["0", "1", "2"]}
        assert run["points"] == 120
    np.testing.assert_array_equal(results[0]["weight"], results[1]["weight"])
    # The label follows x3 alone: its weight is the largest.
    assert results[0]["scaled"].idxmax() == 3


def mixture(n, comps, rng, noise=4.0):
    """8-D points: coordinates 0-1 a 4-component mixture, 2-7 loud noise that K-means follows."""
    centres = np.array([[3, 3], [-3, 3], [3, -3], [-3, -3]], float)
    comp = rng.choice(comps, n)
    x = np.concatenate([centres[comp] + rng.normal(0, 0.7, (n, 2)),
                        rng.normal(0, noise, (n, 6))], 1)
    return comp, x.astype(np.float32)


@pytest.fixture(scope="module")
def weighted_case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weighted")
    rng = np.random.default_rng(0)
    comp, x = mixture(600, [0, 1, 2, 3], rng)
    _, tx = mixture(80, [0, 1], rng)
    pd.DataFrame({"id": np.arange(600), "vec": list(x), "label": comp}).to_parquet(tmp / "pool.parquet")
    pd.DataFrame({"id": np.arange(80), "vec": list(tx)}).to_parquet(tmp / "target.parquet")
    return tmp, comp


def pipeline_sets(tmp, out, weigh=True):
    sets = ["spark.master=local[2]", "quantize.pool_k=30", "quantize.target_k=8", "select.k=3",
            f"output.path={out}"]
    for side in ("pool", "target"):
        sets += [f"{side}.format=parquet", f"{side}.path={tmp / (side + '.parquet')}",
                 f"{side}.id_column=id", f"{side}.embedding_column=vec", f"{side}.text_column=null"]
    if weigh:
        sets += ["weigh.source.format=parquet", f"weigh.source.path={tmp / 'pool.parquet'}",
                 "weigh.source.id_column=id", "weigh.source.embedding_column=vec",
                 "weigh.b_columns=[label]", "weigh.num_points=400", "weigh.num_epochs=100",
                 "weigh.learning_rate=0.1"]
    return sets


def selected(spark, summary):
    rows = spark.read.format("delta").load(summary["table"]).where(
        F.col("run_id") == summary["run_id"]).select("id").toPandas()
    return np.sort(rows["id"].to_numpy())


def clustering_of(spark, out, run_id):
    return spark.read.format("delta").load(tables.table_path(out, "runs")).where(
        F.col("run_id") == run_id).first()["clustering_id"]


def test_clustering_in_the_weighted_space_selects_the_target_better(spark, weighted_case):
    tmp, comp = weighted_case
    plain = run_pipeline(spark, load_config(None, pipeline_sets(tmp, str(tmp / "plain"), False)))
    out = str(tmp / "weighted")
    weighted = run_pipeline(spark, load_config(None, pipeline_sets(tmp, out)))
    w = weights_of(spark, out)
    assert w["scaled"][:2].min() > 2 * w["scaled"][2:].max()      # the informative coordinates
    share = {name: np.isin(comp[selected(spark, s)], [0, 1]).mean()
             for name, s in (("plain", plain), ("weighted", weighted))}
    assert share["weighted"] > 0.9 and share["weighted"] > share["plain"] + 0.1, share
    assert clustering_of(spark, out, weighted["run_id"]) != clustering_of(
        spark, str(tmp / "plain"), plain["run_id"])
    # Another job names the stored weights by path: it plans the same clustering (so it would
    # reuse it in the same output folder) and scales by the same factors.
    from jobs.state import reuse
    from jobs.state.stored import load_weights
    own_cfg = load_config(None, pipeline_sets(tmp, out))
    other_cfg = load_config(None, pipeline_sets(tmp, str(tmp / "other"), False)
                            + [f"weights.path={out}"])
    own, other = reuse.make_plan(spark, own_cfg), reuse.make_plan(spark, other_cfg)
    assert other.weights_id == own.weights_id and other.weights == own.weights
    assert other.clustering_id == own.clustering_id == clustering_of(spark, out,
                                                                     weighted["run_id"])
    np.testing.assert_array_equal(load_weights(spark, other_cfg, other.weights_id, other.weights),
                                  w["scaled"])


@pytest.mark.slow
def test_weigh_killed_between_its_tables_resumes_to_the_clean_weights(spark, tmp_path):
    """A real SIGKILL after feature_weights is committed and before weight_runs: the stage log's
    latest record is `started`, so the re-run learns and writes again, and the tables hold the
    clean run's rows once."""
    import subprocess
    import sys

    from tests.jobs.test_crash_safety import child_env
    from tests.jobs.test_pipeline import ROOT
    tutorial(str(tmp_path / "src"))
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    opts = dict(num_points=200, num_epochs=40)
    cfg = weigh_config(tmp_path, str(tmp_path / "src"), killed, **opts)
    child = subprocess.run([sys.executable, "-m", "jobs.cli", "weigh", "--config", cfg], cwd=ROOT,
                           env=child_env("after:feature_weights"), capture_output=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    stages = spark.read.format("delta").load(tables.table_path(killed, "stages"))
    weigh_records = stages.where(F.col("stage") == "weigh").select("status").collect()
    assert weigh_records == []
    assert not os.path.exists(os.path.join(killed, "weight_runs", "_delta_log"))
    assert main(["weigh", "--config", cfg]) == 0
    assert main(["weigh", "--config", weigh_config(tmp_path, str(tmp_path / "src"), clean,
                                                   **opts)]) == 0
    got, want = weights_of(spark, killed), weights_of(spark, clean)
    assert len(got) == 5
    np.testing.assert_array_equal(got[["feature", "weight", "scaled"]],
                                  want[["feature", "weight", "scaled"]])
    runs = spark.read.format("delta").load(tables.table_path(killed, "weight_runs"))
    assert runs.count() == 1
