import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def spark_logs(tmp_path_factory):
    """Quiet runs started by the tests (child processes) write Spark's log under the session's
    temporary folder, not /tmp/gio-spark-logs."""
    os.environ.setdefault("GIO_SPARK_LOG_DIR", str(tmp_path_factory.mktemp("spark-logs")))


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession with Delta for the whole test session."""
    from jobs.io.session import build_session
    session = build_session("gio-spark-tests", "local[2]", {
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "2g",
    })
    yield session
    session.stop()


@pytest.fixture(scope="session")
def docstrings():
    """A small fixed slice of the demo data: 360 pool docstrings, 40 target ones."""
    from jobs.io.demo_data import TARGET_PACKAGES, stdlib_docstrings
    rows = stdlib_docstrings()
    target_side = [r for r in rows if r["package"] in TARGET_PACKAGES]
    other = [r for r in rows if r["package"] not in TARGET_PACKAGES]
    pool = other[::20][:300] + target_side[1::4][:60]
    target = target_side[0::6][:40]
    return pool, target
