"""Crash and concurrency safety, with real processes killed and real Delta tables.

A *child* is the pipeline run as its own process (``python -m jobs.cli run ...``, its own JVM);
with ``GIO_SPARK_FAILPOINT`` set it kills itself with SIGKILL at a named point (see
:mod:`jobs.common.faults`). Re-runs and the clean references run in this process's Spark session. Every
outcome is compared row for row with a clean run of the same config on a fresh output path.
"""
import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from jobs import runner
from jobs.common import faults
from jobs.state import stagelog
from jobs.io import tables
from jobs.config import load_config
from jobs.common.errors import ConcurrentRunError
from jobs.pipeline import run_pipeline
from tests.jobs.test_pipeline import ROOT, clustered_vectors

pytestmark = pytest.mark.slow
DEMO = os.path.join(ROOT, "conf", "demo.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Pool and target vectors as Parquet (600 x 8 from six components; target from two)."""
    folder = tmp_path_factory.mktemp("crash_data")
    pool, _, target = clustered_vectors(5)
    pd.DataFrame({"id": range(len(pool)), "vec": list(pool)}).to_parquet(folder / "pool.parquet")
    pd.DataFrame({"id": range(len(target)), "vec": list(target)}).to_parquet(
        folder / "target.parquet")
    return folder


def vector_sets(data_dir, out, *extra) -> list[str]:
    sets = []
    for side in ("pool", "target"):
        sets += [f"{side}.path={data_dir / (side + '.parquet')}", f"{side}.format=parquet",
                 f"{side}.id_column=id", f"{side}.embedding_column=vec"]
    sets += ["quantize.pool_k=30", "quantize.target_k=10", "quantize.max_iter=8", "select.k=3",
             f"output.path={out}",
             "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=2",
             "spark.conf.spark.driver.memory=1g"]
    return sets + list(extra)


def child_env(failpoint=None) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    env.pop(faults.ENV, None)
    jars = sorted(glob.glob(os.path.expanduser("~/.ivy2.5.2/jars/*.jar")))
    if jars and "GIO_SPARK_JARS" not in env:
        env["GIO_SPARK_JARS"] = ",".join(jars)      # resolved by this session: no Ivy in children
    if failpoint:
        env[faults.ENV] = failpoint
    return env


def start_child(sets, failpoint=None, log_path=None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", DEMO]
    for item in sets:
        argv += ["--set", item]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(failpoint), stdout=log,
                            stderr=subprocess.STDOUT)


def run_child(sets, failpoint=None, log_path=None, timeout=600) -> int:
    proc = start_child(sets, failpoint, log_path)
    return proc.wait(timeout=timeout)


def run_here(spark, sets) -> dict:
    return run_pipeline(spark, load_config(DEMO, sets))


def outcome(spark, out, run_id):
    """A run's selection (rank, cluster, KL) and its selected rows (id, cluster, rank)."""
    selection = [(r["rank"], r["cluster_id"], round(r["kl_after"], 5)) for r in
                 tables.read_key(spark, str(out), "selection", run_id).orderBy("rank").collect()]
    rows = [(r["id"], r["cluster_id"], r["rank"]) for r in
            spark.read.format("delta").load(os.path.join(str(out), "selected_rows"))
            .where(F.col("run_id") == run_id).collect()]
    return selection, sorted(rows)


def assert_same_as_clean(spark, out, reference_out, run_id):
    got_sel, got_rows = outcome(spark, out, run_id)
    want_sel, want_rows = outcome(spark, reference_out, run_id)
    assert got_sel == want_sel
    assert got_rows == want_rows and len(got_rows) > 0
    assert len({r[0] for r in got_rows}) == len(got_rows)          # no row twice
    record = tables.read_key(spark, str(out), "runs", run_id).collect()
    assert len(record) == 1 and record[0]["picks"] == len(got_sel)


def has_table(out, name) -> bool:
    return os.path.isdir(os.path.join(str(out), name, "_delta_log"))


def last_status(spark, out, stage, key):
    last = stagelog.latest(spark, str(out), stage, key)
    return None if last is None else last["status"]


@pytest.fixture(scope="module")
def clean(spark, data_dir, tmp_path_factory):
    """Clean runs of the base config and of its variants, each on its own output path."""
    cache = {}

    def get(*extra):
        if extra not in cache:
            out = tmp_path_factory.mktemp("clean")
            summary = run_here(spark, vector_sets(data_dir, out, *extra))
            cache[extra] = (out, summary["run_id"])
        return cache[extra]
    return get


def test_killed_at_every_point_resumes_to_the_clean_result(spark, data_dir, clean, tmp_path):
    """SIGKILL at the end of quantize (its done record committed at once:
    runtime.stage_log_batch_s=0), inside select (its selection committed; its run record is
    committed at the same time, so it may or may not be there) and inside explode
    (rows committed; the stage log's records held, so select's done is lost with explode's),
    each time re-running the same config: the final tables equal a clean run's. (A kill inside
    quantize, between its two tables, is in the next test.)"""
    out = tmp_path / "out"
    sets = vector_sets(data_dir, out)
    ref_out, run_id = clean()

    rc = run_child(sets + ["runtime.stage_log_batch_s=0"], "done:quantize",
                   tmp_path / "kill1.log")
    assert rc == -9, open(tmp_path / "kill1.log").read()[-3000:]
    clustering = tables.read_table(spark, str(out), "centroids").first()["clustering_id"]
    assert last_status(spark, out, "quantize", clustering) == "done"
    assert has_table(out, "pool_assignments") and not has_table(out, "selection")

    rc = run_child(sets, "after:selection", tmp_path / "kill2.log")
    assert rc == -9, open(tmp_path / "kill2.log").read()[-3000:]
    assert "quantize: reusing clustering" in open(tmp_path / "kill2.log").read()
    assert has_table(out, "selection")
    assert last_status(spark, out, "select", run_id) is None      # a new key: never reusable

    # Every record held to the run's end (30 s, the default, could end the batch mid-run on a
    # slow machine): select's done dies with the process, although its tables were committed.
    rc = run_child(sets + ["runtime.stage_log_batch_s=3600"], "after:selected_rows",
                   tmp_path / "kill3.log")
    assert rc == -9, open(tmp_path / "kill3.log").read()[-3000:]
    log3 = open(tmp_path / "kill3.log").read()
    assert "quantize: reusing clustering" in log3 and "select: reusing" not in log3
    assert has_table(out, "runs") and has_table(out, "selected_rows")
    assert last_status(spark, out, "select", run_id) is None
    assert last_status(spark, out, "explode", run_id) is None

    summary = run_here(spark, sets)
    assert summary["run_id"] == run_id
    assert_same_as_clean(spark, out, ref_out, run_id)


def test_a_failed_run_commits_the_records_it_held(spark, data_dir, clean, tmp_path,
                                                   monkeypatch):
    """A run whose records are held (runtime.stage_log_batch_s) and that fails after explode's
    rows are committed: its end writes the records of the stages that finished (quantize,
    select) in one commit, explode's is not among them; the re-run reuses those two and equals
    a clean run."""
    out = tmp_path / "out"
    sets = vector_sets(data_dir, out, "runtime.stage_log_batch_s=3600")
    monkeypatch.setenv(faults.ENV, "raise:after:selected_rows")
    with pytest.raises(faults.InjectedFailure):
        run_here(spark, sets)
    monkeypatch.delenv(faults.ENV)
    ref_out, run_id = clean()
    log_dir = os.path.join(str(out), "stages", "_delta_log")
    assert len(glob.glob(os.path.join(log_dir, "*.json"))) == 1         # one commit, held ones
    assert last_status(spark, out, "select", run_id) == "done"
    assert last_status(spark, out, "explode", run_id) is None
    clustering = tables.read_table(spark, str(out), "centroids").first()["clustering_id"]
    assert last_status(spark, out, "quantize", clustering) == "done"
    before = tables.read_table(spark, str(out), "stages").count()
    assert run_here(spark, sets)["run_id"] == run_id
    done = tables.read_table(spark, str(out), "stages").where(F.col("status") == "done")
    assert {r["stage"] for r in done.collect()} >= {"quantize", "select", "explode"}
    assert tables.read_table(spark, str(out), "stages").count() == before + 1   # explode's only
    assert_same_as_clean(spark, out, ref_out, run_id)


@pytest.mark.e2e
def test_killed_inside_quantize_and_no_stale_reuse(spark, data_dir, clean, tmp_path):
    """The reviewer's case: run A; run B (other pool_k) and SIGKILL it after its centroids
    commit, before its assignments; then run A with select.k=4. Quantize must not be reused with
    B's centroids: the result equals a clean run of A with select.k=4. B, run again, resumes to
    its own clean result."""
    out = tmp_path / "out"
    run_here(spark, vector_sets(data_dir, out))
    b = vector_sets(data_dir, out, "quantize.pool_k=20")
    rc = run_child(b, "after:centroids", tmp_path / "b.log")
    assert rc == -9, open(tmp_path / "b.log").read()[-3000:]
    clusterings = {r["clustering_id"] for r in
                   tables.read_table(spark, str(out), "centroids").select("clustering_id")
                   .distinct().collect()}
    assert len(clusterings) == 2                      # A's, and B's without its assignments
    assert {r["clustering_id"] for r in tables.read_table(spark, str(out), "pool_assignments")
            .select("clustering_id").distinct().collect()} < clusterings
    ref_out, run_id = clean("select.k=4")
    summary = run_here(spark, vector_sets(data_dir, out, "select.k=4"))
    assert summary["run_id"] == run_id
    assert_same_as_clean(spark, out, ref_out, run_id)
    ref_b, run_b = clean("quantize.pool_k=20")
    assert run_here(spark, b)["run_id"] == run_b
    assert_same_as_clean(spark, out, ref_b, run_b)
    assignments = tables.read_table(spark, str(out), "pool_assignments")
    assert assignments.count() == assignments.select("clustering_id", "row_id").distinct().count()


@pytest.mark.e2e
def test_a_task_of_the_row_step_killed_in_spark_tasks(spark, data_dir, clean, tmp_path):
    """A row budget whose candidates are over select.max_candidates: the row step runs in Spark
    tasks. The Python worker of each task kills itself (SIGKILL; the failure point reaches the
    workers through the SparkContext's environment): the run fails naming the crashed task,
    explode writes nothing, and the re-run's selection and rows equal a clean run's, from the
    same tasks and second round."""
    extra = ("select.max_rows=60", "select.max_candidates=150")
    out = tmp_path / "out"
    sets = vector_sets(data_dir, out, *extra)
    environment = spark.sparkContext.environment
    environment[faults.ENV] = "row_step:part"
    try:
        with pytest.raises(Exception) as failed:
            run_here(spark, sets)
    finally:
        environment.pop(faults.ENV, None)
    said = runner._summary(failed.value)
    assert said.startswith("a Spark task failed (Task ") and said.endswith(
        "Python worker exited unexpectedly (crashed)"), said
    ref_out, run_id = clean(*extra)
    assert last_status(spark, out, "explode", run_id) != "done"
    assert last_status(spark, out, "select", run_id) == "done"
    assert not has_table(out, "selected_rows")
    assert run_here(spark, sets)["run_id"] == run_id
    assert_same_as_clean(spark, out, ref_out, run_id)
    figures = json.loads(stagelog.latest(spark, str(out), "explode", run_id)["detail"])
    assert figures["row_step"]["where"] == "tasks+driver", figures


@pytest.mark.parametrize("failpoint", ["after:selection", "after:selected_rows"])
def test_a_dead_run_with_the_same_run_id_is_not_reused(spark, data_dir, clean, tmp_path,
                                                       monkeypatch, failpoint):
    """Run A with run_id=shared; run B (select.k=4, same run_id) and stop it dead inside select
    or explode; re-running A gives A's clean result, not B's rows or a mix."""
    out = tmp_path / "out"
    run_here(spark, vector_sets(data_dir, out, "run_id=shared"))
    monkeypatch.setenv(faults.ENV, f"raise:{failpoint}")
    with pytest.raises(faults.InjectedFailure):
        run_here(spark, vector_sets(data_dir, out, "run_id=shared", "select.k=4"))
    monkeypatch.delenv(faults.ENV)
    ref_out, run_id = clean("run_id=shared")
    run_here(spark, vector_sets(data_dir, out, "run_id=shared"))
    assert_same_as_clean(spark, out, ref_out, "shared")


@pytest.mark.e2e
def test_three_runs_at_once_on_a_new_output_path(spark, data_dir, clean, tmp_path):
    """Three runs start together on an output path that does not exist yet: A in a child
    process, A again and B (another pool_k) in two threads of this driver. All create the tables
    at once and commit into the same tables. Each ends with success, or exit 75 / a
    ConcurrentRunError and then succeeds when run again; afterwards every run's rows are there
    once and equal a clean run's."""
    ref_a, run_a = clean()
    ref_b, run_b = clean("quantize.pool_k=20")
    out = tmp_path / "shared_out"
    a, b = vector_sets(data_dir, out), vector_sets(data_dir, out, "quantize.pool_k=20")
    child = start_child(a, log_path=tmp_path / "child.log")
    # The threads start once the child has planned its run, so that all three check and create
    # the tables at about the same time.
    deadline = time.monotonic() + 300
    while "[gio-spark] run " not in open(tmp_path / "child.log").read():
        assert time.monotonic() < deadline and child.poll() is None, \
            open(tmp_path / "child.log").read()[-3000:]
        time.sleep(0.2)
    outcomes = {}

    def run(name, sets):
        try:
            run_here(spark, sets)
            outcomes[name] = "ok"
        except ConcurrentRunError:
            outcomes[name] = "retry"
        except BaseException as err:            # noqa: BLE001 - reported by the assertion
            outcomes[name] = f"{type(err).__name__}: {str(err)[:2000]}"   # the message, too
    threads = [threading.Thread(target=run, args=(name, sets)) for name, sets in
               (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    code = child.wait(timeout=900)
    assert code in (0, 75), open(tmp_path / "child.log").read()[-3000:]
    assert set(outcomes.values()) <= {"ok", "retry"}, outcomes
    for name, sets in (("a", a), ("b", b)):
        if outcomes[name] == "retry":
            run_here(spark, sets)
    if code == 75:
        run_here(spark, a)
    assert run_a != run_b
    assert_same_as_clean(spark, out, ref_a, run_a)
    assert_same_as_clean(spark, out, ref_b, run_b)
    selected = spark.read.format("delta").load(os.path.join(str(out), "selected_rows"))
    assert {r["run_id"] for r in selected.select("run_id").distinct().collect()} == {run_a, run_b}
    for name in ("centroids", "pool_assignments"):
        ids = tables.read_table(spark, str(out), name).select("clustering_id").distinct()
        assert ids.count() == 2


def test_a_table_another_process_created_after_we_looked_is_seen(spark, tmp_path):
    """This JVM looks at a table folder while another process is creating it (its _delta_log is
    there, the first commit not yet), then the commit lands: the table is seen at once, not
    taken for someone else's data. (Delta's isDeltaTable alone keeps answering False from the
    log it cached at the first look; the three-runs test above failed on that once.)"""
    out, elsewhere = str(tmp_path / "out"), str(tmp_path / "elsewhere")
    os.makedirs(os.path.join(out, "selection", "_delta_log"))
    assert not tables.exists(spark, os.path.join(out, "selection"))
    assert not tables.check_existing(spark, out, "runs")
    made = tables.ensure_table(spark, elsewhere, "selection")
    for name in os.listdir(os.path.join(made, "_delta_log")):        # the other process's commit
        if name.endswith(".json"):
            with open(os.path.join(made, "_delta_log", name), "rb") as src, \
                    open(os.path.join(out, "selection", "_delta_log", name), "wb") as dst:
                dst.write(src.read())
    started = time.monotonic()
    assert tables.check_existing(spark, out, "selection")
    assert time.monotonic() - started < tables.CREATION_WAIT_S / 2
    assert tables.exists(spark, os.path.join(out, "selection"))


@pytest.fixture(scope="module")
def text_data(tmp_path_factory, docstrings):
    folder = tmp_path_factory.mktemp("crash_text")
    pool, target = docstrings
    pd.DataFrame(pool[::4]).to_parquet(folder / "pool.parquet")
    pd.DataFrame(target[:24]).to_parquet(folder / "target.parquet")
    return folder


def text_sets(folder, out, *extra):
    sets = []
    for side in ("pool", "target"):
        sets += [f"{side}.path={folder / (side + '.parquet')}", f"{side}.format=parquet",
                 f"{side}.id_column=doc_id"]
    sets += ["quantize.pool_k=12", "quantize.target_k=6", "quantize.max_iter=8", "select.k=3",
             f"output.path={out}",
             "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=2",
             "spark.conf.spark.driver.memory=1g"]
    return sets + list(extra)


@pytest.mark.e2e
def test_killed_inside_embed_and_stale_embeddings(spark, text_data, tmp_path, monkeypatch):
    """Text sides: a run killed between the pool's and the target's embeddings resumes to the
    clean result; a dead run with other embedding settings leaves nothing another config could
    take for its own."""
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    reference = run_here(spark, text_sets(text_data, ref_out))
    rc = run_child(text_sets(text_data, out), "after:pool_embeddings", tmp_path / "embed.log")
    assert rc == -9, open(tmp_path / "embed.log").read()[-3000:]
    assert has_table(out, "pool_embeddings") and not has_table(out, "target_embeddings")
    # A run with other settings dies inside embed too (in this process: same leftovers).
    monkeypatch.setenv(faults.ENV, "raise:after:pool_embeddings")
    with pytest.raises(faults.InjectedFailure):
        run_here(spark, text_sets(text_data, out, "embed.normalize=false"))
    monkeypatch.delenv(faults.ENV)
    summary = run_here(spark, text_sets(text_data, out))
    assert summary["run_id"] == reference["run_id"]
    selection = lambda o: [(r["rank"], r["cluster_id"]) for r in tables.read_key(
        spark, str(o), "selection", summary["run_id"]).orderBy("rank").collect()]
    assert selection(out) == selection(ref_out)
    rows = lambda o: sorted((r["doc_id"], r["rank"]) for r in spark.read.format("delta").load(
        os.path.join(str(o), "selected_rows")).where(F.col("run_id") == summary["run_id"])
        .collect())
    assert rows(out) == rows(ref_out) and len(rows(out)) > 0
    # The embeddings were replaced, not appended to: one row per pool row and key.
    emb = tables.read_table(spark, str(out), "pool_embeddings")
    per_key = {r["embeddings_id"]: r["count"] for r in emb.groupBy("embeddings_id").count()
               .collect()}
    assert summary["pool_rows"] in per_key.values()
    assert emb.count() == emb.select("embeddings_id", "row_id").distinct().count()
    vectors = np.array([r["embedding"] for r in tables.read_table(
        spark, str(ref_out), "pool_embeddings").orderBy("row_id").collect()])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
