"""The Python API as a notebook uses it: the user's own SparkSession, DataFrames, catalog tables
and paths in, DataFrames out, the same rows as the command line."""
import os

import numpy as np
import pandas as pd
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

import jobs
from jobs.cli import main
from tests.conftest import mixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "conf", "demo.yaml")
SMALL = {"quantize.pool_k": 40, "quantize.target_k": 8, "select.k": 3}
VECTORS = {"quantize.pool_k": 30, "quantize.target_k": 6, "select.k": 3}


def picked(df, key):
    return sorted((r[key], r["cluster_id"], r["rank"]) for r in df.collect())


def commits(spark, out, name):
    return DeltaTable.forPath(spark, os.path.join(out, name)).history().count()


@pytest.fixture(scope="module")
def frames(spark):
    """Pool and target of vectors, as a user's DataFrames: ids and an array column."""
    pool, _, target, _, _ = mixture(np.random.default_rng(4), components=6, dim=8,
                                    pool_rows=600, target_rows=80)
    def frame(x, prefix):
        return spark.createDataFrame(pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(x))],
                                                   "vec": list(x.astype(float))}))
    return frame(pool, "p"), frame(target, "t")


def test_select_rows_gives_the_rows_the_command_line_gives(spark, tmp_path, docstrings):
    pool, target = docstrings
    pool_df = spark.createDataFrame(pd.DataFrame(pool))
    target_df = spark.createDataFrame(pd.DataFrame(target))
    api_out = str(tmp_path / "api")
    chosen = jobs.select_rows(pool_df, target_df, config=DEMO, settings=SMALL, output=api_out)
    assert chosen.columns == ["doc_id", "module", "package", "text", "cluster_id", "rank",
                              "run_id"]
    rows = picked(chosen, "doc_id")
    assert 0 < len(rows) < len(pool)

    # The same rows through the command line, from files holding the same data.
    pd.DataFrame(pool).to_parquet(tmp_path / "pool.parquet")
    pd.DataFrame(target).to_parquet(tmp_path / "target.parquet")
    cli_out = str(tmp_path / "cli")
    sets = [f"pool.path={tmp_path / 'pool.parquet'}", "pool.format=parquet",
            f"target.path={tmp_path / 'target.parquet'}", "target.format=parquet",
            f"output.path={cli_out}"] + [f"{k}={v}" for k, v in SMALL.items()]
    assert main(["run", "--config", DEMO] + [a for s in sets for a in ("--set", s)]) == 0
    assert picked(jobs.selection(cli_out), "doc_id") == rows

    # Read back: the latest run, the runs table.
    run_id = chosen.first()["run_id"]
    assert picked(jobs.selection(api_out), "doc_id") == rows
    assert [r["run_id"] for r in jobs.runs(api_out).collect()] == [run_id]

    # The same rows in another order are the same input: the run is reused, nothing written.
    before = commits(spark, api_out, "runs"), commits(spark, api_out, "stages")
    again = jobs.select_rows(pool_df.orderBy(F.rand(5)), target_df.repartition(3), config=DEMO,
                             settings=SMALL, output=api_out)
    assert again.first()["run_id"] == run_id and picked(again, "doc_id") == rows
    assert (commits(spark, api_out, "runs"), commits(spark, api_out, "stages")) == before


def test_tables_and_frames_select_alike_and_a_changed_table_is_not_reused(spark, tmp_path, frames):
    pool_df, target_df = frames
    spark.sql(f"CREATE DATABASE IF NOT EXISTS gio_api LOCATION '{tmp_path / 'warehouse'}'")
    try:
        pool_df.write.format("delta").saveAsTable("gio_api.pool")
        target_df.createOrReplaceTempView("gio_api_target")
        out = str(tmp_path / "tables")
        by_name = jobs.select_rows("gio_api.pool", "gio_api_target", embedding_column="vec",
                                   id_column="id", settings=VECTORS, output=out,
                                   table="gio_api.selected")
        by_frame = jobs.select_rows(pool_df, target_df, embedding_column="vec", id_column="id",
                                    settings=VECTORS, output=str(tmp_path / "frames"))
        rows = picked(by_name, "id")
        assert rows and rows == picked(by_frame, "id")
        assert by_name.columns == ["id", "vec", "cluster_id", "rank", "run_id"]
        first = by_name.first()["run_id"]

        # The rows also went into the catalog table the call named.
        assert picked(spark.table("gio_api.selected"), "id") == rows

        # The Delta table is identified by its version: a re-run reuses, a changed table not.
        stages = commits(spark, out, "stages")
        written = spark.sql("DESCRIBE HISTORY gio_api.selected").count()
        assert jobs.select_rows("gio_api.pool", "gio_api_target", embedding_column="vec",
                                id_column="id", settings=VECTORS, output=out,
                                table="gio_api.selected").first()["run_id"] == first
        assert commits(spark, out, "stages") == stages
        assert spark.sql("DESCRIBE HISTORY gio_api.selected").count() == written
        spark.sql("DELETE FROM gio_api.pool WHERE id = 'p0'")
        changed = jobs.select_rows("gio_api.pool", "gio_api_target", embedding_column="vec",
                                   id_column="id", settings=VECTORS, output=out,
                                   table="gio_api.selected")
        assert changed.first()["run_id"] != first
        assert "p0" not in {r["id"] for r in changed.collect()}
        assert jobs.runs(out).count() == 2
        # Each run's rows, side by side in the user's table.
        by_run = {r["run_id"]: r["n"] for r in spark.table("gio_api.selected").groupBy("run_id")
                  .agg(F.count("*").alias("n")).collect()}
        assert by_run == {first: len(rows), changed.first()["run_id"]: changed.count()}
        # A table of other columns is refused before anything is written.
        spark.sql("CREATE TABLE gio_api.other (x INT) USING delta")
        with pytest.raises(jobs.InputError) as err:
            jobs.select_rows(pool_df, target_df, embedding_column="vec", id_column="id",
                             settings=VECTORS, output=str(tmp_path / "other"),
                             table="gio_api.other")
        assert str(err.value).startswith("output.table 'gio_api.other' has the columns x, not "
                                         "the selected rows' id, vec, cluster_id, rank, run_id;")
        assert spark.table("gio_api.other").count() == 0
    finally:
        spark.sql("DROP DATABASE IF EXISTS gio_api CASCADE")
        spark.catalog.dropTempView("gio_api_target")


def test_without_an_output_the_run_lives_in_a_temporary_folder(spark, frames):
    pool_df, target_df = frames
    chosen = jobs.select_rows(pool_df, target_df, embedding_column="vec", id_column="id",
                              settings=VECTORS, max_rows=120)
    rows = chosen.collect()
    assert 0 < len(rows)
    # The budget: the picked clusters hold at most 120 rows (or the first cluster alone).
    assert len(rows) <= 120 or len({r["cluster_id"] for r in rows}) == 1
    files = chosen.inputFiles()
    assert files and all("gio-spark-api-" in f for f in files)


def test_bad_input_raises_one_message_and_writes_nothing(spark, tmp_path, frames):
    pool_df, target_df = frames
    out = tmp_path / "bad"
    with pytest.raises(jobs.InputError) as err:
        jobs.select_rows(pool_df, target_df, text_column="body", output=str(out))
    assert str(err.value) == ("pool.text_column 'body' is not a column of the DataFrame; "
                              "its columns are: id, vec.")
    with pytest.raises(jobs.InputError) as err:
        jobs.select_rows(pool_df, target_df, embedding_column="vec", settings={"select.k": 0},
                         output=str(out))
    assert str(err.value) == "select.k must be a positive integer; got 0."
    with pytest.raises(jobs.InputError) as err:
        jobs.select_rows(42, target_df, output=str(out))
    assert str(err.value) == "pool must be a DataFrame, a table name or a path; got int 42."
    with pytest.raises(jobs.InputError) as err:
        jobs.select_rows("no_such_db.docs", target_df, embedding_column="vec", output=str(out))
    assert "pool.path 'no_such_db.docs' is not a table or view of the session's catalog" \
        in str(err.value)
    assert not out.exists()
    with pytest.raises(jobs.InputError) as err:
        jobs.selection(str(tmp_path / "nothing"))
    assert "table 'runs' does not exist under" in str(err.value)


def test_stages_one_by_one_return_their_tables_and_end_where_select_rows_does(spark, tmp_path,
                                                                                frames):
    pool_df, target_df = frames
    out = str(tmp_path / "stages")
    args = dict(embedding_column="vec", id_column="id", settings=VECTORS, output=out)
    with pytest.raises(jobs.InputError) as err:
        jobs.run_stage("select", pool_df, target_df, **args)
    assert "there is no clustering" in str(err.value) and "run quantize" in str(err.value)
    quantized = jobs.run_stage("quantize", pool_df, target_df, **args)
    assert set(quantized) == {"centroids", "pool_assignments"}
    assert quantized["pool_assignments"].count() == 600
    sides = {r["side"]: r["n"] for r in quantized["centroids"].groupBy("side")
             .agg(F.count("*").alias("n")).collect()}
    assert 0 < sides["target"] <= 6 and 0 < sides["pool"] <= 30
    selected = jobs.run_stage("select", pool_df, target_df, **args)
    picks = selected["runs"].first()["picks"]
    assert selected["selection"].count() == picks > 0
    rows = jobs.run_stage("explode", pool_df, target_df, **args)["selected_rows"]
    # The whole pipeline on the same output reuses all three: the same rows, no commit.
    before = commits(spark, out, "stages")
    assert picked(jobs.select_rows(pool_df, target_df, **args), "id") == picked(rows, "id")
    assert commits(spark, out, "stages") == before
    with pytest.raises(jobs.InputError) as err:
        jobs.run_stage("cluster", pool_df, target_df, **args)
    assert str(err.value) == ("stage 'cluster' is not one run_stage runs; choose one of weigh, "
                              "embed, quantize, select, explode, train, evaluate.")


def test_a_target_of_identical_vectors_is_refused_before_anything_is_written(spark, tmp_path,
                                                                              frames):
    pool_df, _ = frames
    same = spark.createDataFrame([(f"t{i}", [1.0] * 8) for i in range(40)],
                                 "id string, vec array<double>")
    out = tmp_path / "same"
    with pytest.raises(jobs.InputError) as err:
        jobs.select_rows(pool_df, same, embedding_column="vec", id_column="id",
                         settings=VECTORS, output=str(out))
    assert str(err.value) == (
        "the target's 40 usable rows hold 1 distinct vectors, so K-means can make at most 1 "
        "target clusters; select.k=3 needs more than 3. Lower select.k or give a target sample "
        "with more distinct rows.")
    assert not out.exists()


def test_a_clustering_deleted_by_hand_is_computed_again(spark, tmp_path, frames):
    """The committed centroids of a clustering deleted behind gio-spark's back: the next run
    that needs them computes them again, with a warning, instead of refusing for good."""
    pool_df, target_df = frames
    out = str(tmp_path / "tampered")
    args = dict(embedding_column="vec", id_column="id", output=out)
    jobs.select_rows(pool_df, target_df, settings=VECTORS, **args)
    key = jobs.runs(out).first()["clustering_id"]
    DeltaTable.forPath(spark, os.path.join(out, "centroids")).delete(F.col("clustering_id") == key)
    other = {**VECTORS, "select.k": 2}                 # a new run on the same clustering
    again = jobs.select_rows(pool_df, target_df, settings=other, **args)
    clean = jobs.select_rows(pool_df, target_df, settings=other, embedding_column="vec",
                             id_column="id", output=str(tmp_path / "clean"))
    assert picked(again, "id") == picked(clean, "id")
    assert spark.read.format("delta").load(os.path.join(out, "centroids")) \
        .where(F.col("clustering_id") == key).count() > 0
