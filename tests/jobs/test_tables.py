"""How gio-spark's small tables are created and read again within a process: a new table made
with its first rows in one commit, rows a process wrote used again while the table has no newer
commit (and read again after any other commit), what an interrupted creation leaves, the stage
log of a new output, and the centroids select collects. Real Delta tables on a local session."""
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.common import faults
from jobs.common.errors import ConcurrentRunError
from jobs.config import load_config
from jobs.io import tables
from jobs.state import stagelog, stored


def commits(path) -> list:
    return sorted(n for n in os.listdir(os.path.join(path, "_delta_log")) if n.endswith(".json"))


def selection_rows(spark, run_id, picks):
    return spark.createDataFrame([(run_id, "fp", rank, cluster, 10 * cluster, 0.5 / rank)
                                  for rank, cluster in enumerate(picks, 1)], tables.SELECTION)


def test_a_new_table_is_created_with_its_first_rows_in_one_commit(spark, tmp_path):
    out = str(tmp_path)
    mine = tables.replace_key(spark, selection_rows(spark, "r1", [4, 2, 9]), out, "selection",
                              "r1", local=True)
    path = tables.table_path(out, "selection")
    assert commits(path) == [f"{0:020d}.json"]
    assert mine is not None and mine[0] == 0
    props = tables._properties(spark, path)
    assert props[tables.TABLE_PROPERTY] == "selection"
    assert props[tables.SCHEMA_PROPERTY] == tables.SCHEMA_VERSION
    assert spark.read.format("delta").load(path).inputFiles()
    detail = spark.sql(f"DESCRIBE DETAIL {tables.delta_ref(path)}").first()
    assert detail["partitionColumns"] == ["run_id"]
    # The next write replaces its key as in any table; a table made elsewhere is checked.
    tables.replace_key(spark, selection_rows(spark, "r2", [1]), out, "selection", "r2",
                       local=True)
    tables.replace_key(spark, selection_rows(spark, "r1", [7]), out, "selection", "r1",
                       local=True)
    assert len(commits(path)) == 3
    got = {(r["run_id"], r["cluster_id"]) for r in tables.read_table(spark, out, "selection")
           .collect()}
    assert got == {("r1", 7), ("r2", 1)}


def test_rows_a_process_wrote_are_read_again_only_after_another_commit(spark, tmp_path,
                                                                       monkeypatch):
    out = str(tmp_path)
    tables.replace_key(spark, selection_rows(spark, "r1", [3, 5]), out, "selection", "r1",
                       local=True, remember=True)
    reads = []
    real = tables.read_key
    monkeypatch.setattr(tables, "read_key", lambda *a: reads.append(a) or real(*a))
    assert [r["cluster_id"] for r in tables.key_rows(spark, out, "selection", "r1")] == [3, 5]
    assert reads == []
    # Another writer (here: Delta directly, as another process would) changes the key.
    path = tables.table_path(out, "selection")
    (tables.conform(selection_rows(spark, "r1", [8]), tables.SELECTION).write.format("delta")
     .mode("overwrite").option("replaceWhere", "run_id = 'r1'").save(path))
    assert [r["cluster_id"] for r in tables.key_rows(spark, out, "selection", "r1")] == [8]
    assert len(reads) == 1
    assert [r["cluster_id"] for r in tables.key_rows(spark, out, "selection", "r1")] == [8]
    assert len(reads) == 1                     # read once, then used while nothing else commits
    # A write that another commit follows is read again.
    tables.replace_key(spark, selection_rows(spark, "r2", [6]), out, "selection", "r2",
                       remember=True)
    tables.replace_key(spark, selection_rows(spark, "r3", [6]), out, "selection", "r3")
    assert [r["cluster_id"] for r in tables.key_rows(spark, out, "selection", "r2")] == [6]
    assert len(reads) == 2


def test_what_an_interrupted_creation_with_rows_leaves_is_removed_and_other_data_is_not(
        spark, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "CREATION_WAIT_S", 1.0)
    out = str(tmp_path)
    path = tables.table_path(out, "runs")
    os.makedirs(os.path.join(path, "_delta_log", "_staged_commits"))
    os.makedirs(os.path.join(path, "run_id=r1"))
    for name in ("part-00000-x.c000.snappy.parquet", ".part-00000-x.c000.snappy.parquet.crc"):
        open(os.path.join(path, "run_id=r1", name), "wb").close()
    assert tables._abandoned_creation(path)
    # Written a moment ago: waited for until unchanged for CREATION_WAIT_S, then removed.
    started = time.monotonic()
    assert not tables.check_existing(spark, out, "runs")      # removed: created anew
    assert time.monotonic() - started >= 1.0
    assert not os.path.exists(path)
    # Still changing after three times the wait: another run writing it; not removed.
    os.makedirs(os.path.join(path, "_delta_log"))
    part = os.path.join(path, "part-00000-y.c000.snappy.parquet")
    stop = threading.Event()

    def touch():
        while not stop.is_set():
            open(part, "wb").close()
            stop.wait(0.2)
    toucher = threading.Thread(target=touch)
    toucher.start()
    try:
        with pytest.raises(ConcurrentRunError, match="changed 0 s ago"):
            tables.check_existing(spark, out, "runs")
    finally:
        stop.set()
        toucher.join()
    assert os.path.exists(part)
    shutil.rmtree(path)
    # A folder with a file of anyone else's is never taken for one.
    os.makedirs(os.path.join(path, "_delta_log"))
    os.makedirs(os.path.join(path, "run_id=r1"))
    open(os.path.join(path, "run_id=r1", "notes.txt"), "w").close()
    assert not tables._abandoned_creation(path)
    with pytest.raises(Exception, match="not a Delta table written by gio-spark"):
        tables.check_existing(spark, out, "runs")
    assert os.path.exists(os.path.join(path, "run_id=r1", "notes.txt"))


def test_a_creation_that_fails_is_raised_and_one_another_run_made_first_is_written_into(
        spark, tmp_path):
    out = str(tmp_path)
    bad = selection_rows(spark, "r1", [1]).withColumn(
        "rank", F.raise_error(F.lit("no rank for you")).cast("int"))
    with pytest.raises(Exception, match="no rank for you"):
        tables.replace_key(spark, bad, out, "selection", "r1", local=True)
    assert not tables.exists(spark, tables.table_path(out, "selection"))
    # Another run creates the table between our look and our creation: written into it.
    other = str(tmp_path / "other")
    tables.replace_key(spark, selection_rows(spark, "r0", [2]), other, "selection", "r0")
    assert not tables._created_with(spark, tables.conform(selection_rows(spark, "r1", [3]),
                                                          tables.SELECTION),
                                    other, "selection", tables.SELECTION)
    tables.replace_key(spark, selection_rows(spark, "r1", [3]), other, "selection", "r1",
                       local=True)
    assert {(r["run_id"], r["cluster_id"]) for r in
            tables.read_table(spark, other, "selection").collect()} == {("r0", 2), ("r1", 3)}


def test_the_stage_log_of_a_new_output_is_not_read_back(spark, tmp_path, monkeypatch):
    out = str(tmp_path)
    stagelog.record(spark, out, "quantize", "c1", "fp1", "done", {"pool_clusters": 3})
    assert commits(tables.table_path(out, "stages")) == [f"{0:020d}.json"]
    monkeypatch.setattr(stagelog, "_read_log", lambda *a: pytest.fail("read the log back"))
    assert stagelog.is_done(spark, out, "quantize", "c1", "fp1")
    stagelog.record(spark, out, "select", "r1", "fp2", "done")
    assert stagelog.is_done(spark, out, "select", "r1", "fp2")
    assert not stagelog.is_done(spark, out, "select", "r1", "fp3")
    monkeypatch.undo()
    stagelog._LOG.clear()                     # as another process sees it
    assert stagelog.is_done(spark, out, "quantize", "c1", "fp1")
    assert json.loads(stagelog.latest(spark, out, "quantize", "c1")["detail"]) == {
        "pool_clusters": 3}


def test_a_batch_holds_quick_records_and_commits_them_with_the_first_late_one(spark, tmp_path):
    """Inside stagelog.batched: a done record within the bound is held (seen by this thread as
    committed, not by another); one after it goes in with the held ones in one commit; a
    started record is never held; what is held at the end is committed then, in the order and at
    the times recorded."""
    out = str(tmp_path)
    log_path = tables.table_path(out, "stages")
    with stagelog.batched(spark, out, within_s=0.5):
        stagelog.record(spark, out, "quantize", "c1", "fp1", "done", {"pool_clusters": 3})
        assert not os.path.exists(log_path)
        assert stagelog.is_done(spark, out, "quantize", "c1", "fp1")
        seen = []
        other = threading.Thread(target=lambda: seen.append(
            stagelog.latest(spark, out, "quantize", "c1")))
        other.start()
        other.join()
        assert seen == [None]                 # another thread's run does not see it
        time.sleep(0.6)
        stagelog.record(spark, out, "select", "r1", "fp2", "done")
        assert len(commits(log_path)) == 1    # both, in one commit
        stagelog.record(spark, out, "explode", "r1", "fp3", "done")
        stagelog.record(spark, out, "select", "r1", "fp4", "started")
        assert len(commits(log_path)) == 2    # the started one took the held done with it
        stagelog.record(spark, out, "explode", "r2", "fp5", "done")
        assert len(commits(log_path)) == 2
    assert len(commits(log_path)) == 3
    stagelog._LOG.clear()
    rows = tables.read_table(spark, out, "stages").orderBy("at_ns").collect()
    assert [(r["stage"], r["key"], r["status"]) for r in rows] == [
        ("quantize", "c1", "done"), ("select", "r1", "done"), ("explode", "r1", "done"),
        ("select", "r1", "started"), ("explode", "r2", "done")]
    assert json.loads(rows[0]["detail"]) == {"pool_clusters": 3}


def test_a_batch_that_cannot_write_its_records_raises_the_run_s_own_error(spark, tmp_path,
                                                                         monkeypatch, capsys):
    out = str(tmp_path)

    def full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(tables, "append", full)
    with pytest.raises(ValueError, match="the run's own"):
        with stagelog.batched(spark, out, within_s=60):
            stagelog.record(spark, out, "quantize", "c1", "fp1", "done")
            raise ValueError("the run's own")
    assert ("warning: the stage log's records of 1 finished stage could not be written "
            "(OSError); the next run computes them again.") in capsys.readouterr().out
    assert not os.path.exists(tables.table_path(out, "stages"))


def test_explode_counts_the_rows_and_clusters_it_writes_while_writing_them(spark, tmp_path):
    """The Observation explode writes through gives the counts a read-back gives, on a Delta
    write that replaces a key of a table with other keys, without reading the table."""
    from jobs.stages import explode
    path = str(tmp_path / "rows")
    spark.createDataFrame([("other", 1, 1)], "run_id string, cluster_id int, id long") \
        .write.format("delta").save(path)
    rows = spark.range(0, 1000).select(F.lit("r1").alias("run_id"),
                                       (F.col("id") % 37).cast("int").alias("cluster_id"),
                                       F.col("id"))
    out, counted = explode._counted(spark, rows.where(F.col("id") % 3 != 0))
    out.write.format("delta").mode("overwrite").option("replaceWhere", "run_id = 'r1'").save(path)
    got = explode._counts(counted)
    back = spark.read.format("delta").load(path).where(F.col("run_id") == "r1").agg(
        F.count("*").alias("rows"), F.countDistinct("cluster_id").alias("clusters")).first()
    assert got == {"rows": 666, "clusters": 37} == back.asDict()


def test_centroids_quantize_committed_are_collected_without_a_read_until_another_commit(
        spark, tmp_path, monkeypatch):
    cfg = load_config(None, [f"output.path={tmp_path}"], "select")
    rng = np.random.default_rng(0)
    rows = [(side, i, rng.normal(size=4).astype(np.float32).tolist(), 5 + i)
            for side, n in (("pool", 6), ("target", 3)) for i in range(n)]
    df = spark.createDataFrame([("c1", *r) for r in rows[::-1]], tables.CENTROIDS)
    mine = tables.replace_key(spark, df, cfg.output.path, "centroids", "c1", local=True)
    stored.remember_centroids(cfg, "c1", mine, rows[::-1])
    real = tables.read_key
    reads = []
    monkeypatch.setattr(tables, "read_key", lambda *a: reads.append(a) or real(*a))
    got = stored.collect_centroids(spark, cfg, "c1")
    assert reads == []
    assert got["pool"][0].tolist() == list(range(6)) and got["target"][2].tolist() == [5, 6, 7]
    np.testing.assert_array_equal(got["pool"][1], np.array([r[2] for r in rows[:6]], np.float32))
    got["pool"][1][:] = 0                      # a caller's change does not reach the next one
    assert stored.collect_centroids(spark, cfg, "c1")["pool"][1].any()
    assert stored.clustered_rows(spark, cfg, type("Plan", (), {"clustering_id": "c1"})) == 45
    # Another commit (one pool centroid deleted by hand): read again, and what is there now.
    path = tables.table_path(cfg.output.path, "centroids")
    spark.sql(f"DELETE FROM {tables.delta_ref(path)} WHERE side = 'pool' AND cluster_id = 5")
    again = stored.collect_centroids(spark, cfg, "c1")
    assert reads and again["pool"][0].tolist() == list(range(5))
    assert stored.centroid_counts(spark, cfg, "c1") == {"pool": 5, "target": 3}
    flat = (tables.read_key(spark, cfg.output.path, "centroids", "c1")
            .where(F.col("side") == "target").count())
    assert flat == 3


def test_writes_made_at_once_land_in_every_table_under_the_caller_s_job_group(spark, tmp_path):
    """tables.at_once: the calls run at the same time (each waits at a barrier for the others),
    each call's commit lands, the results come back in the calls' order, and the calls in
    threads of their own run under the caller's job group (a notebook's group or scheduler pool
    stays theirs)."""
    out = str(tmp_path)
    sc = spark.sparkContext
    together = threading.Barrier(3, timeout=60)
    sc.setJobGroup("gio-test-at-once", "a caller's own group")
    try:
        seen = []

        def write(name, rows):
            def call():
                together.wait()
                seen.append(sc.getLocalProperty("spark.jobGroup.id"))
                return tables.replace_key(spark, rows, out, name, "r1", local=True)
            return call

        def draw():
            together.wait()
            return "drawn"

        domains = spark.createDataFrame([("r1", 1, 11, "a", "nearest")],
                                        tables.SELECTION_DOMAINS)
        got = tables.at_once(spark, write("selection", selection_rows(spark, "r1", [3, 5])),
                             write("selection_domains", domains), draw)
        assert got[2] == "drawn" and got[0] is not None and got[1] is not None
        assert seen == ["gio-test-at-once"] * 2
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(key, None)
    assert sc.getLocalProperty("spark.jobGroup.id") is None
    assert [r["cluster_id"] for r in tables.read_table(spark, out, "selection_domains").collect()] \
        == [11]
    assert sorted(r["cluster_id"] for r in tables.read_table(spark, out, "selection").collect()) \
        == [3, 5]


def test_a_call_that_fails_at_once_is_raised_after_every_other_call_has_ended(spark, tmp_path):
    """The first failure in the calls' order is raised, a BaseException (a failure point's) too,
    once the other calls have ended: the slow write is committed."""
    out = str(tmp_path)
    ended = []

    def slow_write():
        time.sleep(0.5)
        tables.replace_key(spark, selection_rows(spark, "r1", [4]), out, "selection", "r1",
                           local=True)
        ended.append("write")

    def fails(error):
        def call():
            raise error
        return call

    with pytest.raises(ValueError, match="first"):
        tables.at_once(spark, fails(ValueError("first")), slow_write,
                       fails(ValueError("second")))
    assert ended == ["write"]
    with pytest.raises(faults.InjectedFailure):
        tables.at_once(spark, slow_write, fails(faults.InjectedFailure("after:runs")))
    assert ended == ["write", "write"]
    assert [r["cluster_id"] for r in tables.read_table(spark, out, "selection").collect()] == [4]
