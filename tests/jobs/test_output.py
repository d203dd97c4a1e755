"""What a run prints: by default the project's own lines on stdout and its progress bars on
stderr, nothing of Spark's (that goes to a log file); --verbose brings Spark's log and the
per-pick lines back. Real child processes, each with its own JVM."""
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from jobs.common import log as jlog
from tests.jobs.test_crash_safety import DEMO, ROOT, child_env, vector_sets
from tests.jobs.test_pipeline import clustered_vectors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("output_data")
    pool, _, target = clustered_vectors(6)
    pd.DataFrame({"id": range(len(pool)), "vec": list(pool)}).to_parquet(folder / "pool.parquet")
    pd.DataFrame({"id": range(len(target)), "vec": list(target)}).to_parquet(
        folder / "target.parquet")
    return folder


def run_cli(sets, tmp_path, *flags, **env):
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", DEMO, *flags]
    for item in sets:
        argv += ["--set", item]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(child_env(), GIO_SPARK_LOG_DIR=str(tmp_path / "logs"), **env))


def pieces(stderr: str) -> list[str]:
    """What a terminal would show of stderr: the frames between carriage returns and newlines,
    ANSI cursor moves removed, blank frames (a closed bar clearing its line) dropped."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr)
    return [p.strip() for p in re.split(r"[\r\n]", text) if p.strip()]


def test_a_default_run_prints_the_projects_lines_and_bars_only(vectors, tmp_path):
    run = run_cli(vector_sets(vectors, tmp_path / "out"), tmp_path, GIO_SPARK_PROGRESS="1")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("[gio-spark] ") for line in lines), run.stdout
    said = "\n".join(lines)
    assert re.search(r"quantize: \d+ pool clusters \(\d+ iterations\), \d+ target clusters "
                     r"\(\d+ iterations\) in \d+\.\d s", said), said
    assert re.search(r"select: \d+ clusters chosen .* in \d+\.\d s", said), said
    assert re.search(r"run run-\w+: done in ", said), said
    assert "select: pick " not in said                       # detail lines: verbose only
    frames = pieces(run.stderr)
    assert frames and all(f.startswith("[gio-spark] ") for f in frames), frames[:20]
    assert any(f.startswith("[gio-spark] quantize pool: K-means, k=30 on 600 rows") for f in frames)
    assert any(re.match(r"\[gio-spark\] select: .*\d+/\d+ .*pick", f) for f in frames), frames
    logs = os.listdir(tmp_path / "logs")
    assert len(logs) == 1 and logs[0].startswith("gio-spark-demo-")
    spark_said = open(tmp_path / "logs" / logs[0]).read()
    assert "Spark" in spark_said and "log4j" in spark_said    # the JVM's console went there


def test_verbose_brings_back_sparks_log_and_the_picks(vectors, tmp_path):
    run = run_cli(vector_sets(vectors, tmp_path / "out"), tmp_path, "--verbose")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "select: pick " in run.stdout
    assert "log4j" in run.stderr                             # Spark's own console output
    assert not os.path.exists(tmp_path / "logs") or not os.listdir(tmp_path / "logs")


def test_spark_bar_counts_what_the_tasks_report(spark, monkeypatch, capsys):
    """The rows bar follows an accumulator the tasks add their rows to (4 partitions of 250
    rows, a second each): it moves in steps of finished tasks, only forwards, up to 1,000."""
    monkeypatch.setenv("GIO_SPARK_PROGRESS", "1")
    counter = spark.sparkContext.accumulator(0)

    def slow(batches):
        for batch in batches:
            time.sleep(1.0)
            counter.add(len(batch))
            yield batch
    frame = spark.range(0, 1000, numPartitions=4).mapInPandas(slow, "id long")
    with jlog.spark_bar(spark, "test rows", total=1000, unit="rows",
                        done=lambda: counter.value, poll_s=0.1):
        assert frame.count() == 1000
    shown = [int(m) for m in re.findall(r"\[gio-spark\] test rows:.*?(\d+)/1000",
                                        capsys.readouterr().err)]
    assert shown and set(shown) <= {0, 250, 500, 750, 1000}, shown
    assert shown == sorted(shown) and max(shown) >= 500, shown


JOBS_BAR = """
import time
from jobs.common import log as jlog
from jobs.io.session import build_session
spark = build_session("bar-test", "local[2]", {"spark.ui.enabled": "false"}, quiet=True)
with jlog.spark_bar(spark, "test jobs", total=3, poll_s=0.05):
    for _ in range(3):
        spark.range(10).count()
        time.sleep(0.3)
assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None
"""


def test_spark_bar_counts_jobs_of_its_own_group(tmp_path):
    """The bar without ``done`` counts the finished jobs of the block's own job group. Run in a
    process of its own: in make test's long-lived worker JVMs the status tracker twice reported
    none of the group's three finished jobs (never reproduced in a fresh JVM; the cause is not
    known, see the README's note on the K-means bar)."""
    run = subprocess.run([sys.executable, "-c", JOBS_BAR], cwd=ROOT, capture_output=True,
                         text=True, timeout=300,
                         env=dict(child_env(), GIO_SPARK_PROGRESS="1",
                                  GIO_SPARK_LOG_DIR=str(tmp_path)))
    assert run.returncode == 0, run.stderr[-3000:]
    shown = [int(m) for m in re.findall(r"\[gio-spark\] test jobs:.*?(\d)/3", run.stderr)]
    # the last count is drawn before the bar is cleared, however fast the jobs came
    assert shown and shown == sorted(shown) and shown[-1] == 3, (shown, run.stderr[-2000:])


def test_took_reads_like_a_person_would_say_it():
    assert jlog.took(0.42) == "0.4 s" and jlog.took(59.9) == "59.9 s"
    assert jlog.took(125) == "2 min 05 s" and jlog.took(3720) == "1 h 02 min"
