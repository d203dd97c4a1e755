"""The train stage with real Spark and real Delta tables: the probe it stores is the one
gio_core.gaf trains on the same rows, it loads back and scores as recorded, it does not depend on
the source's row order, a probe on the selected rows beats one on random pool rows where the
selection matters, and a kill between its two tables leaves nothing half-done."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from gio_core import gaf
from jobs.state import stagelog
from jobs.io import tables
from jobs.cli import main
from jobs.stages.train import load_probe

CENTERS = np.array([[2.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0], [0, 0, 2.0, 0, 0, 0]])


def labelled(path, n, seed, order=None, files=1):
    """``n`` rows of 6-D vectors around three centres, labelled a/b/c by their centre."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (CENTERS[y] + rng.normal(0, 1.0, (n, 6))).astype(np.float32)
    df = pd.DataFrame({"id": [f"s{seed}-{i:04d}" for i in range(n)], "vec": list(x),
                       "label": np.array(["a", "b", "c"])[y]})
    if order is not None:
        df = df.iloc[order(len(df))]
    os.makedirs(path, exist_ok=True)
    for i, part in enumerate(np.array_split(df, files)):
        part.to_parquet(os.path.join(path, f"part-{i}.parquet"))
    return df


def config(tmp_path, out, source=None, pool=None, target=None, **train):
    vec = {"format": "parquet", "id_column": "id", "embedding_column": "vec"}
    section = {"validation": dict(vec, path=str(tmp_path / "val")), "label_column": "label"}
    if source is not None:
        section["source"] = dict(vec, path=source)
    section.update(train)
    data = {"spark": {"master": "local[2]"}, "train": section, "output": {"path": out}}
    if pool is not None:
        data.update(pool=dict(vec, path=pool), target=dict(vec, path=target),
                    quantize={"pool_k": 40, "target_k": 10}, select={"k": 3})
    path = tmp_path / f"train-{len(os.listdir(tmp_path))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


OPTS = dict(model="mlp", hidden=[16], batch_size=16, microbatches=2, epochs=6, seed=3,
            label_noise=0.3, cos_distance_thresh=0.97, learning_rate=0.05)


def hash_order(spark, ids, seed):
    """The ids in the stage's order: by the seeded 64-bit hash, then by id."""
    df = spark.createDataFrame([(i,) for i in ids], "row_id string")
    return [r[0] for r in df.withColumn("h", F.xxhash64(F.lit(seed), "row_id"))
            .orderBy("h", "row_id").select("row_id").collect()]


def expected_probe(spark, train_df, val_df, seed=3):
    """The probe trained here with gio_core.gaf alone, on the rows in the stage's order."""
    classes = ["a", "b", "c"]
    rows = train_df.set_index("id").loc[hash_order(spark, list(train_df["id"]), seed)]
    vrows = val_df.set_index("id").loc[hash_order(spark, list(val_df["id"]), seed)]
    x, xv = np.stack(rows["vec"]).astype(np.float32), np.stack(vrows["vec"]).astype(np.float32)
    y = np.array([classes.index(v) for v in rows["label"]])
    yv = np.array([classes.index(v) for v in vrows["label"]])
    y, flipped = gaf.flip_labels(y, 0.3, 3, seed)
    mean, scale = x.mean(0), x.std(0)
    params, apply_fn = gaf.mlp([6, 16, 3], seed=seed)
    params, records = gaf.train_gaf(
        gaf.classification_loss(apply_fn), params, gaf.make_optimizer("sgd", 0.05),
        {"x": (x - mean) / scale, "y": y.astype(np.int32)},
        {"x": (xv - mean) / scale, "y": yv.astype(np.int32)}, epochs=6, batch_size=16,
        num_batches_to_force_agreement=2, cos_distance_thresh=0.97, seed=seed, flipped=flipped)
    return params, records, xv, vrows["label"].to_numpy()


def versions(spark, out, name):
    return spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(out, name)}`").count()


def test_train_on_a_source_stores_the_probe_gio_core_trains(spark, tmp_path):
    train_df = labelled(str(tmp_path / "src"), 400, seed=1)
    val_df = labelled(str(tmp_path / "val"), 150, seed=2)
    out = str(tmp_path / "out")
    cfg = config(tmp_path, out, source=str(tmp_path / "src"), **OPTS)
    assert main(["train", "--config", cfg]) == 0        # no pool or target configured
    params, records, xv, yv = expected_probe(spark, train_df, val_df)
    run = tables.read_table(spark, out, "train_runs").first()
    assert (run["arm"], run["train_rows"], run["val_rows"]) == ("selection", 400, 150)
    assert list(run["classes"]) == ["a", "b", "c"] and run["method"] == "gaf"
    assert json.loads(run["rows_from"]) == {"kind": "source", "path": str(tmp_path / "src")}
    assert [h["epoch"] for h in run["history"]] == list(range(1, 7))
    np.testing.assert_allclose([h["val_accuracy"] for h in run["history"]],
                               [r["val_accuracy"] for r in records], atol=1e-6)
    np.testing.assert_allclose([h["memorised"] for h in run["history"]],
                               [r["memorised"] for r in records], atol=1e-6)
    assert [h["steps_taken"] for h in run["history"]] == [r["steps_taken"] for r in records]
    probe = load_probe(spark, out)
    for got, want in zip(probe.params, params, strict=True):
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-6)
    assert probe.classes == ("a", "b", "c")
    assert abs(probe.accuracy(xv, yv) - run["val_accuracy"]) < 1e-6
    assert run["val_accuracy"] > 0.6          # 3 separable classes, 30% of the labels flipped
    # Again: reused, nothing written.
    before = versions(spark, out, "models")
    assert main(["train", "--config", cfg]) == 0
    assert versions(spark, out, "models") == before
    # The same rows reversed, in three files: another source, the same probe.
    labelled(str(tmp_path / "rev"), 400, seed=1, order=lambda n: np.arange(n)[::-1], files=3)
    assert main(["train", "--config", config(tmp_path, out, source=str(tmp_path / "rev"),
                                             **OPTS)]) == 0
    ids = sorted(r[0] for r in tables.read_table(spark, out, "models").select("train_id")
                 .distinct().collect())
    assert len(ids) == 2
    other = load_probe(spark, out, [i for i in ids if i != run["train_id"]][0])
    for got, want in zip(other.params, probe.params, strict=True):
        np.testing.assert_array_equal(got["w"], want["w"])


def blobs(tmp_path):
    """A pool of two domains: in A (around 0) the label is the sign of x0, in B (around 3) the
    sign of x1; the target and the validation set are from A. A probe on rows like the
    target's learns x0; one on random pool rows (3/4 from B) mostly learns x1."""
    rng = np.random.default_rng(0)

    def blob(path, n, center, informative, start):
        x = rng.normal(center, 1.0, (n, 8)).astype(np.float32)
        pd.DataFrame({"id": [f"r{start + i}" for i in range(n)], "vec": list(x),
                      "label": np.where(x[:, informative] > center, "pos", "neg")}
                     ).to_parquet(path)
        return path

    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    blob(str(pool_dir / "a.parquet"), 300, 0.0, 0, 0)
    blob(str(pool_dir / "b.parquet"), 900, 3.0, 1, 1000)
    target = blob(str(tmp_path / "target.parquet"), 100, 0.0, 0, 5000)
    os.makedirs(tmp_path / "val")
    blob(str(tmp_path / "val" / "v.parquet"), 200, 0.0, 0, 6000)
    return str(pool_dir), target


def test_train_in_the_pipeline_beats_random_pool_rows(spark, tmp_path):
    pool, target = blobs(tmp_path)
    out = str(tmp_path / "out")
    cfg = config(tmp_path, out, pool=pool, target=target, baseline="random", epochs=30)
    assert main(["run", "--config", cfg]) == 0
    runs = {r["arm"]: r for r in tables.read_table(spark, out, "train_runs").collect()}
    selected = tables.read_table(spark, out, "selected_rows").count()
    assert runs["selection"]["train_rows"] == runs["random"]["train_rows"] == selected
    assert json.loads(runs["selection"]["rows_from"])["kind"] == "selection"
    assert json.loads(runs["random"]["rows_from"])["kind"] == "random"
    acc = {arm: r["val_accuracy"] for arm, r in runs.items()}
    assert acc["selection"] > acc["random"] + 0.15, acc
    assert load_probe(spark, out, arm="random").classes == ("neg", "pos")
    # The train command alone: the stage is reused; another method is another probe.
    before = versions(spark, out, "train_runs")
    assert main(["train", "--config", cfg]) == 0
    assert versions(spark, out, "train_runs") == before
    assert main(["train", "--config", cfg, "--set", "train.method=sgd"]) == 0
    assert tables.read_table(spark, out, "train_runs").select("train_id").distinct().count() == 2


@pytest.mark.slow
def test_train_killed_between_its_tables_resumes_to_the_clean_probe(spark, tmp_path):
    """A real SIGKILL after models is committed and before train_runs: the stage log has no
    `done` for the key, so the re-run trains and writes again, and the tables hold the clean
    run's rows once."""
    from tests.jobs.test_crash_safety import child_env
    from tests.jobs.test_pipeline import ROOT
    labelled(str(tmp_path / "src"), 200, seed=1)
    labelled(str(tmp_path / "val"), 60, seed=2)
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    cfg = config(tmp_path, killed, source=str(tmp_path / "src"), **OPTS)
    child = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--config", cfg],
                           cwd=ROOT, env=child_env("after:models"), capture_output=True,
                           timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    train_id = tables.read_table(spark, killed, "models").first()["train_id"]
    assert stagelog.latest(spark, killed, "train", train_id) is None
    assert tables.read_table(spark, killed, "models").count() == 1
    assert not os.path.exists(os.path.join(killed, "train_runs", "_delta_log"))
    assert main(["train", "--config", cfg]) == 0
    assert main(["train", "--config", config(tmp_path, clean, source=str(tmp_path / "src"),
                                             **OPTS)]) == 0
    got, want = load_probe(spark, killed), load_probe(spark, clean)
    for a, b in zip(got.params, want.params, strict=True):
        np.testing.assert_array_equal(a["w"], b["w"])
    assert tables.read_table(spark, killed, "models").count() == 1
    assert tables.read_table(spark, killed, "train_runs").count() == 1
