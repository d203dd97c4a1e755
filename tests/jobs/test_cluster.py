"""A real Spark standalone cluster on 127.0.0.1: one master, two one-core workers, started from the
installed pyspark with the commands of jobs/tools/cluster.py (the ones docker-compose runs), and the
pipeline submitted to it with the code shipped as the --py-files zip. Its Delta output must equal a
local run's on the same data and seed. Every process the test starts is stopped, also on failure.

The workers run this machine's interpreter (spark.pyspark.python), where the project is also
installed, so this checks the cluster path and its commands, not that the zip alone suffices.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from pyspark.sql import functions as F

from jobs.tools import cluster
from jobs.common import faults
from jobs.io import tables
from jobs.tools.package import build_zip
from jobs.pipeline import run_pipeline
from tests.conftest import TEST_JVM_OPTS
from tests.jobs.test_pipeline import ROOT, clustered_vectors, vectors_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {seconds} s")


def alive_workers(webui_port) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as r:
        return int(json.load(r).get("aliveworkers", 0))


@pytest.fixture
def standalone(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"),
               SPARK_LOG_DIR=str(tmp_path / "logs"), PATH=bin_dir + os.pathsep + os.environ["PATH"])
    port, webui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    commands = [cluster.master_command("127.0.0.1", port, webui)]
    commands += [cluster.worker_command(url, "127.0.0.1", cores=1, memory="2g",
                                        webui_port=free_port()) for _ in range(2)]
    procs = []
    try:
        for i, cmd in enumerate(commands):
            log = open(tmp_path / f"daemon{i}.log", "w")
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            if i == 0:
                wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1), 90, "master")
        wait_for(lambda: alive_workers(webui) == 2, 90, "two workers")
        yield url, env, procs[1:]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def submit(url, tmp_path, local_cfg):
    """The spark-submit command line for ``local_cfg``'s data against the cluster at ``url``."""
    zip_path = build_zip(str(tmp_path / "dist"))
    # WARN: the driver's log shows the executor's loss (a quiet run under spark-submit logs at
    # ERROR only).
    overrides = ["spark.master=null", f"output.path={tmp_path / 'cluster'}", "spark.log_level=WARN"]
    for side in ("pool", "target"):
        src = getattr(local_cfg, side)
        overrides += [f"{side}.path={src.path}", f"{side}.format=parquet", f"{side}.id_column=id",
                      f"{side}.embedding_column=vec"]
    overrides += ["quantize.pool_k=30", "quantize.target_k=10", "select.k=3"]
    return cluster.submit_command(url, "conf/demo.yaml", overrides, py_files=zip_path, conf={
        "spark.pyspark.python": sys.executable, "spark.executor.memory": "1g",
        "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
        "spark.executor.extraJavaOptions": TEST_JVM_OPTS})


def selection(spark, out, run_id):
    return [(r["rank"], r["cluster_id"], round(r["kl_after"], 4)) for r in
            tables.read_table(spark, out, "selection").where(F.col("run_id") == run_id)
            .orderBy("rank").collect()]


def rows(spark, out, run_id):
    return sorted((r["id"], r["cluster_id"], r["rank"]) for r in
                  spark.read.format("delta").load(os.path.join(out, "selected_rows"))
                  .where(F.col("run_id") == run_id).collect())


def test_cluster_output_equals_local_with_a_worker_killed_during_quantize(spark, standalone,
                                                                         tmp_path):
    """The pipeline submitted to the two-worker cluster with the --py-files zip. The driver
    pauses once the pool's K-means input is cached on both executors; the test kills one worker
    (its process group: worker, executor and Python workers) with SIGKILL and lets the driver go
    on. Spark recomputes the lost cached blocks on the remaining executor, and the Delta output
    (selection and selected rows) equals a local[2] run's on the same data and seed."""
    url, env, workers = standalone
    pool, _, target = clustered_vectors(4)
    # driver_rows 1: the pool's K-means runs as Spark jobs on its cached rows (the 600 rows
    # would otherwise be fitted on the driver, nothing cached); the clusters are the same.
    local_cfg = vectors_config(tmp_path, pool, target, quantize__driver_rows=1)
    local_summary = run_pipeline(spark, local_cfg)
    env = dict(env, **{faults.ENV: "pause:cached:pool", faults.DIR_ENV: str(tmp_path)})
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(submit(url, tmp_path, local_cfg), cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (tmp_path / "paused").exists() or driver.poll() is not None, 300,
                     "the pause inside quantize")
            assert driver.poll() is None, open(log_path).read()[-3000:]
            os.killpg(workers[0].pid, signal.SIGKILL)
            workers[0].wait(timeout=30)
            time.sleep(3)                      # let the driver see its executor go
            (tmp_path / "resume").touch()
            code = driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
    output = open(log_path).read()
    assert code == 0, output[-3000:]
    assert "explode: run" in output
    assert "Lost executor" in output, output[-3000:]         # the driver saw the loss
    cluster_out = str(tmp_path / "cluster")
    run_id = local_summary["run_id"]
    assert selection(spark, cluster_out, run_id) == selection(spark, local_cfg.output.path, run_id)
    assert rows(spark, cluster_out, run_id) == rows(spark, local_cfg.output.path, run_id)
    assert len(rows(spark, cluster_out, run_id)) == local_summary["selected_rows"] > 0


def test_datamodels_work_on_the_cluster_with_main_shipped_by_py_files(spark, standalone,
                                                                      tmp_path):
    """`datamodels work` submitted to the two-worker cluster, the user's main a module file that
    only --py-files brings (it is on no path of this machine's interpreter): every index is
    trained once, by the executors, and committed with main's values; a second submit finds
    nothing to do."""
    from tests.jobs.test_datamodels import MAIN, SPEC, assert_values, calls_per_index, store_rows
    url, env, _ = standalone
    user = tmp_path / "user"
    user.mkdir()
    module = f"dm_cluster_main_{os.getpid()}"
    (user / f"{module}.py").write_text(MAIN)
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "cluster"
    overrides = ["spark.master=null", f"output.path={out}", "datamodels.num_models=16", *SPEC,
                 f"datamodels.main_import={module}", f"datamodels.args={{calls_dir: {calls}}}",
                 "datamodels.commit_every=8", "datamodels.indices_per_task=2"]
    zip_path = build_zip(str(tmp_path / "dist"))
    cmd = cluster.submit_command(url, "conf/datamodels.yaml", overrides,
                                 py_files=f"{zip_path},{user / (module + '.py')}",
                                 command=("datamodels", "work"), conf={
                                     "spark.pyspark.python": sys.executable,
                                     "spark.executor.memory": "1g",
                                     "spark.executor.extraJavaOptions": TEST_JVM_OPTS})
    for attempt in range(2):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        text = proc.stdout + proc.stderr
        said = "\n".join(line for line in text.splitlines() if " INFO " not in line and (
            line.startswith(("[gio-spark]", "gio-spark")) or "Error" in line))[-4000:]
        assert proc.returncode == 0, said
        if attempt == 0:
            assert "16 models trained" in text, said
            assert f"main {module}, " in text, said      # --py-files sent it: not twice
        else:
            assert "nothing to run" in text, said
    rows = store_rows(spark, str(out / "datamodels_store"))
    assert sorted(rows) == list(range(16))
    assert all(r["completed"] for r in rows.values())
    for row in rows.values():
        assert_values(row)
    assert calls_per_index(calls) == {i: 1 for i in range(16)}
    pids = {name.split("-")[1] for name in os.listdir(calls)}
    assert str(os.getpid()) not in pids and len(pids) >= 2      # executors' Python workers ran them
