"""Spark Connect, for real: pyspark starts a local Connect server (``remote("local[2]")``) in a
child process. gio-spark needs a classic session (see *Spark Connect* in docs/python-api.md); on a Connect
session the API and the command line say so in one line, before any work, and write nothing."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import os, sys
    from pyspark.sql import SparkSession
    import jobs
    from jobs.cli import main
    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    pool = spark.createDataFrame([(i, [float(i), 1.0]) for i in range(20)], "id int, vec array<double>")
    try:
        jobs.select_rows(pool, pool, embedding_column="vec", output=sys.argv[1])
        print("API: no error")
    except jobs.InputError as err:
        print("API:", err)
    print("exists:", os.path.exists(sys.argv[1]))
    # The command line joins the active session as it would a notebook's.
    code = main(["run", "--set", "pool.format=demo", "--set", "pool.path=pool", "--set",
                 "target.format=demo", "--set", "target.path=target", "--set",
                 "output.path=" + sys.argv[1]])
    print("CLI exit:", code)
    spark.stop()
""")


def test_a_spark_connect_session_is_refused_in_one_line_before_work(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    message = ("this SparkSession is a Spark Connect client, and gio-spark needs a classic one: "
               "its stages use the SparkContext (an accumulator, a broadcast, job groups), "
               "Hadoop's FileSystem and Delta's DeltaTable API through the JVM. Run it on a "
               "classic session (a single-user or dedicated cluster, or "
               "SparkSession.builder.master(...) without remote(...) or SPARK_REMOTE).")
    assert f"API: {message}" in lines
    assert "exists: False" in lines and "CLI exit: 2" in lines
    assert f"gio-spark: error: {message}" in run.stderr
    assert not out.exists()
