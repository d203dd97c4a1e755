"""Spark Connect, for real: a child process makes the session a notebook on Databricks
serverless or a shared cluster would have, ``SparkSession.builder.remote("local[2]")`` (pyspark
starts a local Connect server, here with Delta's settings), and drives gio-spark through it:
the Python API, the GIO estimator and the command line. What it selects and embeds is
compared with what this process's classic session gives on the same data (see *Spark Connect*
in docs/python-api.md)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import jobs
from tests.conftest import mixture

pytestmark = pytest.mark.connect
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A row budget: the selection takes explode's row step (GIO on candidate rows) on both kinds
# of session, in Spark tasks (applyInPandas on the server's Python workers) and a second round
# on the driver: the candidate clusters hold more than the cap's 250 rows, their 200 picks fit.
SETTINGS = {"quantize.pool_k": 30, "quantize.target_k": 6, "select.k": 3, "select.max_rows": 100,
            "select.max_candidates": 250}
# Two target domains (the target's even and odd ids), half the budget each: whole clusters.
DOMAIN_SETTINGS = {"quantize.pool_k": 30, "quantize.target_k": 8, "select.k": 3,
                   "select.max_rows": 100}

SCRIPT = textwrap.dedent("""
    import json, os, sys, traceback
    import pandas as pd
    from pyspark.sql import SparkSession
    import jobs
    from jobs.cli import main
    from jobs.ml import GIOSelector, GIOSelectorModel

    def finish(code):
        # A Connect client can hang in its gRPC clean-up at exit: leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    sys.excepthook = lambda *exc: (traceback.print_exception(*exc), finish(1))
    work, settings = sys.argv[1], json.loads(sys.argv[2])
    DOMAIN_SETTINGS = json.loads(sys.argv[3])
    spark = (SparkSession.builder.remote("local[2]")
             .config("spark.jars.packages", "io.delta:delta-spark_2.13:4.0.1")
             .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
             .config("spark.sql.catalog.spark_catalog",
                     "org.apache.spark.sql.delta.catalog.DeltaCatalog")
             .config("spark.sql.shuffle.partitions", "4")
             # Plots go through the server: to its local file system only when it allows it.
             .config("spark.connect.copyFromLocalToFs.allowDestLocal", "true").getOrCreate())
    found = {"connect": type(spark).__module__}

    def say(**kw):
        found.update(kw)

    def picked(df, key="rank"):
        return sorted([r["id"], r["cluster_id"], r[key]] for r in df.collect())

    def commits(path):
        return spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()

    pool = spark.read.parquet(os.path.join(work, "pool.parquet"))
    target = spark.read.parquet(os.path.join(work, "target.parquet"))
    api = os.path.join(work, "api")
    chosen = jobs.select_rows(pool, target, embedding_column="vec", id_column="id",
                              settings=settings, output=api)
    say(api=picked(chosen), columns=chosen.columns,
        where=[json.loads(r["detail"])["row_step"]["where"] for r in
               spark.read.format("delta").load(os.path.join(api, "stages"))
               .where("stage = 'explode' AND status = 'done'").collect()])
    before = commits(os.path.join(api, "runs")), commits(os.path.join(api, "stages"))
    again = jobs.select_rows(pool.orderBy("vec"), target, embedding_column="vec",
                             id_column="id", settings=settings, output=api)
    say(again=picked(again), rewritten=[before != (commits(os.path.join(api, "runs")),
                                                   commits(os.path.join(api, "stages")))],
        runs=[r["run_id"] for r in jobs.runs(api).collect()],
        latest=picked(jobs.selection(api)), plots=sorted(os.listdir(os.path.join(api, "plots"))))

    # The command line joins the active session, as it would a notebook's.
    cli = os.path.join(work, "cli")
    sets = [f"pool.path={work}/pool.parquet", "pool.format=parquet", "pool.id_column=id",
            "pool.embedding_column=vec", f"target.path={work}/target.parquet",
            "target.format=parquet", "target.id_column=id", "target.embedding_column=vec",
            f"output.path={cli}"] + [f"{k}={v}" for k, v in settings.items()]
    say(cli_exit=main(["run"] + [a for s in sets for a in ("--set", s)]),
        cli=picked(jobs.selection(cli)))

    # Several targets, given as {domain: DataFrame}, each with its share of the budget.
    even = "cast(substr(id, 2) as int) % 2 = 0"
    domains = os.path.join(work, "domains")
    shared = jobs.select_rows(pool, {"even": target.where(even), "odd": target.where(f"NOT ({even})")},
                              embedding_column="vec", id_column="id", settings=DOMAIN_SETTINGS,
                              shares={"even": 0.5, "odd": 0.5}, output=domains)
    say(domains=picked(shared), served=sorted(
        [r["rank"], r["domain"], r["how"]] for r in
        spark.read.format("delta").load(os.path.join(domains, "selection_domains")).collect()))

    # Text: the embed stage encodes on the server's Python workers.
    texts = os.path.join(work, "texts")
    emb = jobs.run_stage("embed", spark.read.parquet(os.path.join(work, "text_pool.parquet")),
                         spark.read.parquet(os.path.join(work, "text_target.parquet")),
                         text_column="text", id_column="id", output=texts)["pool_embeddings"]
    say(embeddings=sorted([r["row_id"], list(r["embedding"])] for r in emb.collect()))

    # The Spark ML estimator, saved (write().overwrite() is pyspark's, classic only) and
    # loaded back. (A Pipeline with MLlib's own stages hangs in pyspark 4.0.1's Connect client.)
    model = GIOSelector(featuresCol="vec", idCol="id", k=3, settings=settings).fit(target)
    model.write().save(os.path.join(work, "model"))
    loaded = GIOSelectorModel.load(os.path.join(work, "model"))
    say(estimator=sorted([r["id"], r["gio_rank"]] for r in loaded.transform(pool).collect()
                         if r["selected"]))

    # What still needs a classic session says so in one line, before any work.
    weights = os.path.join(work, "weights")
    try:
        jobs.learn_weights(pool, b_columns="vec", embedding_column="vec", output=weights)
        say(learn_weights="no error")
    except jobs.InputError as err:
        say(learn_weights=str(err), weights_written=os.path.exists(weights))
    # A store this server has no file system for: exit 2, naming the package.
    try:
        jobs.select_rows(pool, target, embedding_column="vec", id_column="id",
                         settings=settings, output="s3a://no-bucket/out")
        say(s3a="no error")
    except jobs.InputError as err:
        say(s3a=str(err))
    spark.stop()
    print("RESULT " + json.dumps(found))
    finish(0)
""")


def test_spark_connect_end_to_end(spark, tmp_path, docstrings):
    """One test, so that one pytest worker runs it: a local Connect server binds port 15002,
    and the shell run below starts another after the child's has stopped."""
    data = _run_the_child(tmp_path, docstrings)
    _check_the_api_the_command_line_and_the_estimator(spark, data)
    _check_embed_gives_the_classic_sessions_vectors(spark, tmp_path, data)
    _check_what_needs_a_classic_session_is_refused(data)
    _check_gio_spark_run_from_a_shell_with_spark_remote(data)


def _run_the_child(work, docstrings):
    """The same data, as parquet files for the child and as frames for this process; the
    child's findings."""
    pool, _, target, _, _ = mixture(np.random.default_rng(4), components=6, dim=8,
                                    pool_rows=600, target_rows=80)
    frames = {}
    for name, x, prefix in (("pool", pool, "p"), ("target", target, "t")):
        frames[name] = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(x))],
                                     "vec": list(x.astype(float))})
        frames[name].to_parquet(work / f"{name}.parquet")
    texts_pool, texts_target = docstrings
    for name, rows in (("text_pool", texts_pool[::24]), ("text_target", texts_target[::4])):
        frames[name] = pd.DataFrame({"id": [r["doc_id"] for r in rows],
                                     "text": [r["text"] for r in rows]})
        frames[name].to_parquet(work / f"{name}.parquet")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(work), json.dumps(SETTINGS),
                          json.dumps(DOMAIN_SETTINGS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1",
                              "PYSPARK_PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return work, frames, json.loads(line[len("RESULT "):]), run


def _check_the_api_the_command_line_and_the_estimator(spark, data):
    work, frames, found, _ = data
    assert found["connect"].startswith("pyspark.sql.connect")
    rows = found["api"]
    assert len(rows) == 100 and found["columns"] == ["id", "vec", "cluster_id", "rank", "run_id"]
    assert sorted(r[2] for r in rows) == list(range(1, 101))      # ranked by the row step
    assert found["where"] == ["tasks+driver"]                      # in the server's tasks
    # The rows a classic session selects from the same data with the same settings.
    classic = jobs.select_rows(spark.createDataFrame(frames["pool"]),
                               spark.createDataFrame(frames["target"]), embedding_column="vec",
                               id_column="id", settings=SETTINGS)
    assert sorted([r["id"], r["cluster_id"], r["rank"]] for r in classic.collect()) == rows
    # Re-run in another row order: reused, nothing written; read back; the plot written.
    assert found["again"] == rows and found["rewritten"] == [False]
    assert len(found["runs"]) == 1 and found["latest"] == rows
    assert found["plots"] == [f"{found['runs'][0]}_kl_curve.png"]
    # gio-spark run on the same session and data, from files.
    assert found["cli_exit"] == 0 and found["cli"] == rows
    # The estimator, saved and loaded back: the same rows, in the same order.
    assert found["estimator"] == sorted([i, rank] for i, _, rank in rows)
    # Several targets with shares: the classic session's rows, and each pick's domain.
    target = spark.createDataFrame(frames["target"])
    even = "cast(substr(id, 2) as int) % 2 = 0"
    shared = jobs.select_rows(spark.createDataFrame(frames["pool"]),
                              {"even": target.where(even), "odd": target.where(f"NOT ({even})")},
                              embedding_column="vec", id_column="id", settings=DOMAIN_SETTINGS,
                              shares={"even": 0.5, "odd": 0.5})
    assert sorted([r["id"], r["cluster_id"], r["rank"]] for r in shared.collect()) == \
        found["domains"]
    assert len(found["domains"]) == 100
    assert {how for _, _, how in found["served"]} == {"share"}
    assert {domain for _, domain, _ in found["served"]} == {"even", "odd"}


def _check_embed_gives_the_classic_sessions_vectors(spark, tmp_path, data):
    _, frames, found, _ = data
    mine = jobs.run_stage("embed", spark.createDataFrame(frames["text_pool"]),
                          spark.createDataFrame(frames["text_target"]), text_column="text",
                          id_column="id", output=str(tmp_path / "classic-texts"))["pool_embeddings"]
    here = sorted([r["row_id"], list(r["embedding"])] for r in mine.collect())
    there = found["embeddings"]
    assert [r[0] for r in there] == [r[0] for r in here] and len(here) == len(frames["text_pool"])
    assert len(there[0][1]) == 384
    np.testing.assert_allclose(np.array([r[1] for r in there]), np.array([r[1] for r in here]),
                               atol=1e-5)


def _check_what_needs_a_classic_session_is_refused(data):
    _, _, found, _ = data
    assert found["learn_weights"].startswith(
        "learn_weights needs a classic SparkSession (it uses the SparkContext or the JVM), and "
        "this one is a Spark Connect client. On Spark Connect gio-spark runs select_rows,")
    assert found["weights_written"] is False
    assert found["s3a"].startswith("output.path 's3a://no-bucket/out' is on s3a://, which the "
                                   "Spark Connect server cannot read or write; add the package "
                                   "org.apache.hadoop:hadoop-aws")


def _check_gio_spark_run_from_a_shell_with_spark_remote(data):
    """``SPARK_REMOTE=local[2] gio-spark run ...``: the command starts a local Connect server
    itself (Delta's settings and its local defaults on it). On the files and output of the
    child's ``gio-spark run`` it reuses every stage (checked on the server) and writes nothing."""
    work, _, found, _ = data
    out = work / "cli"
    before = sorted(p.name for p in (out / "runs" / "_delta_log").glob("*.json"))
    sets = [f"pool.path={work}/pool.parquet", "pool.format=parquet", "pool.id_column=id",
            "pool.embedding_column=vec", f"target.path={work}/target.parquet",
            "target.format=parquet", "target.id_column=id", "target.embedding_column=vec",
            f"output.path={out}"] + [f"{k}={v}" for k, v in SETTINGS.items()]
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "run"]
                         + [a for s in sets for a in ("--set", s)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SPARK_REMOTE": "local[2]", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "select: reusing the selection of run run-" in run.stdout
    assert "explode: reusing the selected rows" in run.stdout
    assert "ivy" not in run.stderr.lower()          # the server's start went to the log file
    assert sorted(p.name for p in (out / "runs" / "_delta_log").glob("*.json")) == before
    rows = pd.read_parquet(out / "selected_rows")
    got = zip(rows["id"], rows["cluster_id"], rows["rank"], strict=True)
    assert sorted([i, int(c), int(r)] for i, c, r in got) == found["api"]
    assert len(list((out / "plots").glob("*_kl_curve.png"))) == 1
