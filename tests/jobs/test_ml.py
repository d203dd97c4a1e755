"""The Spark ML estimators inside a pyspark.ml Pipeline: fit, transform, save and load."""
import os

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array

import jobs
from jobs.ml import DIIWeigher, DIIWeigherModel, GIOSelector
from tests.conftest import mixture

X = [f"x{i}" for i in range(8)]
SMALL = {"quantize.pool_k": 30, "quantize.target_k": 6}


@pytest.fixture(scope="module")
def columns(spark):
    """Pool and target with one numeric column per feature, as a VectorAssembler wants."""
    pool, _, target, _, _ = mixture(np.random.default_rng(4), components=6, dim=8,
                                    pool_rows=600, target_rows=80)

    def frame(x, prefix):
        df = pd.DataFrame(x.astype(float), columns=X)
        df.insert(0, "id", [f"{prefix}{i}" for i in range(len(x))])
        return spark.createDataFrame(df)
    return frame(pool, "p"), frame(target, "t")


def test_gio_selector_in_a_pipeline_selects_what_select_rows_selects(spark, tmp_path, columns):
    pool, target = columns
    selector = GIOSelector(featuresCol="features", idCol="id", k=3, settings=SMALL)
    assert "idCol: column identifying a row" in selector.explainParams()
    pipe = Pipeline(stages=[VectorAssembler(inputCols=X, outputCol="features"), selector])
    model = pipe.fit(target)
    out = model.transform(pool)
    assert out.columns == ["id", *X, "features", "selected", "gio_rank"]
    rows = out.collect()
    assert len(rows) == 600
    picked = sorted((r["id"], r["gio_rank"]) for r in rows if r["selected"])
    assert picked and all(r["gio_rank"] is None for r in rows if not r["selected"])

    # The same rows as the Python API on the same vectors.
    assembler = VectorAssembler(inputCols=X, outputCol="features")
    direct = jobs.select_rows(assembler.transform(pool), assembler.transform(target),
                              embedding_column="features", id_column="id",
                              settings={**SMALL, "select.k": 3})
    assert picked == sorted((r["id"], r["rank"]) for r in direct.collect())

    # Saved and loaded back inside the PipelineModel: the same selection, also as rows alone.
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    again = loaded.transform(pool)
    assert sorted((r["id"], r["gio_rank"]) for r in again.collect() if r["selected"]) == picked
    only = loaded.stages[-1].setOnlySelected(True).transform(assembler.transform(pool))
    assert sorted((r["id"], r["gio_rank"]) for r in only.collect()) == picked
    # The estimator itself, unfitted, round-trips its params.
    selector.write().overwrite().save(str(tmp_path / "selector"))
    back = GIOSelector.load(str(tmp_path / "selector"))
    assert back.getIdCol() == "id" and back.getOrDefault(back.k) == 3
    assert back.getSettings() == SMALL


def test_gio_selector_names_a_missing_column(columns):
    pool, target = columns
    with pytest.raises(jobs.InputError) as err:
        GIOSelector(featuresCol="vec").fit(target)
    assert str(err.value) == ("featuresCol 'vec' is not a column of the target; its columns "
                              "are: id, x0, x1, x2, x3, x4, x5, x6, x7.")


def test_dii_weigher_finds_the_features_that_matter_and_survives_save_and_load(spark, tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 5))
    b = np.stack([a[:, 0], 0.5 * a[:, 1]], axis=1)          # B depends on x0 and x1 only
    df = pd.DataFrame(a, columns=X[:5])
    df["b0"], df["b1"] = b[:, 0], b[:, 1]
    df.insert(0, "id", [f"r{i}" for i in range(len(df))])
    data = spark.createDataFrame(df)
    weigher = DIIWeigher(featuresCol="features", targetCols=["b0", "b1"], idCol="id",
                         settings={"weigh.num_points": 300, "weigh.num_epochs": 60,
                                   "weigh.learning_rate": 0.05})
    model = Pipeline(stages=[VectorAssembler(inputCols=X[:5], outputCol="features"),
                             weigher]).fit(data)
    dii = model.stages[-1]
    assert dii.featureNames == [f"features[{i}]" for i in range(5)]
    scaled = dii.scaledWeights
    assert scaled.max() == 1.0 and min(scaled[0], scaled[1]) > 2 * max(scaled[2:])
    out = model.transform(data).select("features", "weighted_features").limit(5).collect()
    for r in out:
        np.testing.assert_allclose(r["weighted_features"].toArray(),
                                   r["features"].toArray() * scaled)
    path = str(tmp_path / "weigher")
    model.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    assert isinstance(loaded.stages[-1], DIIWeigherModel)
    np.testing.assert_array_equal(loaded.stages[-1].scaledWeights, scaled)
    assert loaded.stages[-1].weightsId == dii.weightsId
    got = loaded.transform(data).select(vector_to_array("weighted_features").alias("w")).first()
    np.testing.assert_allclose(got["w"], out[0]["weighted_features"].toArray())
    # Numeric columns straight in, without an assembler: the same weights.
    direct = DIIWeigher(inputCols=X[:5], targetCols=["b0", "b1"], idCol="id",
                        settings=weigher.getSettings()).fit(data)
    np.testing.assert_allclose(direct.scaledWeights, scaled, rtol=1e-6)
    assert os.path.basename(direct.weightsId).startswith("weights-")


def test_gio_selector_without_ids_on_a_column_named_embedding(spark, columns):
    """Rows identified by their content, and a vector column with gio-spark's own name."""
    pool, target = columns
    assembler = VectorAssembler(inputCols=X, outputCol="embedding")
    pool, target = assembler.transform(pool).drop("id"), assembler.transform(target).drop("id")
    model = GIOSelector(featuresCol="embedding", k=3, settings=SMALL).fit(target)
    flagged = model.transform(pool)
    assert flagged.columns == [*X, "embedding", "selected", "gio_rank"]
    marked = sorted((tuple(r[c] for c in X), r["gio_rank"]) for r in flagged.collect()
                    if r["selected"])
    only = model.setOnlySelected(True).transform(pool)
    assert "gio_row_id" not in only.columns
    assert marked and marked == sorted((tuple(r[c] for c in X), r["gio_rank"])
                                       for r in only.collect())
