"""gio-spark is a good citizen of a Spark it did not start: it takes the running session as it
is, and never changes what spark-submit, spark-defaults.conf or the session's owner set."""
import json
import os
import subprocess
import sys

from jobs.io.session import LOCAL_DEFAULTS, build_session
from tests.jobs.test_pipeline import ROOT

PROBE = """
import json, sys
sys.path.insert(0, {root!r})
from jobs.io.session import build_session
spark = build_session("probe", None, {{"spark.sql.shuffle.partitions": "8",
                                       "spark.gio.probe": "set-by-gio"}}, quiet=True)
keys = ("spark.sql.shuffle.partitions", "spark.ui.enabled", "spark.gio.probe",
        "spark.driver.memory")
print("PROBE " + json.dumps({{k: spark.conf.get(k, None) for k in keys}}))
spark.stop()
"""


def test_a_running_session_keeps_its_settings(spark):
    """The tests' own session set 2 shuffle partitions; gio-spark's defaults (8) and a config's
    value for a key the session set do not replace it; a key nobody set is applied; another
    master (a config's local[*]) leaves the session's as it was. A quiet command on it (the
    command line run in a notebook) leaves its log level alone."""
    assert LOCAL_DEFAULTS["spark.sql.shuffle.partitions"] != "2"
    root = spark._jvm.org.apache.logging.log4j.LogManager.getRootLogger()
    level = str(root.getLevel().toString())
    assert level != "ERROR"
    master = spark.conf.get("spark.master")
    assert master == "local[2]"
    again = build_session("joined", "local[*]", {"spark.sql.shuffle.partitions": "64",
                                                 "spark.gio.joined": "yes"}, quiet=True)
    try:
        assert again is spark
        assert spark.conf.get("spark.master") == master
        assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
        assert spark.conf.get("spark.gio.joined") == "yes"
        assert str(root.getLevel().toString()) == level
    finally:
        spark.conf.unset("spark.gio.joined")


def test_spark_submit_settings_win_over_gio_spark_and_its_config(tmp_path):
    """spark-submit --conf shuffle partitions 2000 and the UI on: the session gio-spark gets
    still says 2000 and true, although the config asks for 8 and the local defaults say 8 and
    false; what neither set is applied."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT))
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"],
               SPARK_LOCAL_IP="127.0.0.1")
    cmd = ["spark-submit", "--master", "local[1]", "--properties-file",
           os.path.join(ROOT, "conf", "spark-defaults.conf"),
           "--conf", "spark.sql.shuffle.partitions=2000", "--conf", "spark.ui.enabled=true",
           str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("PROBE "):])
    assert got["spark.sql.shuffle.partitions"] == "2000"
    assert got["spark.ui.enabled"] == "true"
    assert got["spark.gio.probe"] == "set-by-gio"
    assert got["spark.driver.memory"] is None            # no local default on a joined Spark


WORKER_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
from jobs.io.session import build_session
spark = build_session("probe", None, quiet=True)
workers = spark.range(2, numPartitions=2).rdd.map(lambda _: __import__("sys").executable)
print("PROBE " + json.dumps({{"workers": sorted(set(workers.collect())),
                             "master": spark.sparkContext.master,
                             "ui": spark.conf.get("spark.ui.enabled", None)}}))
spark.stop()
"""


def test_without_a_master_the_local_workers_run_this_python(tmp_path):
    """``gio-spark run`` with no ``spark.master`` and no spark-submit starts Spark's default,
    local[*]: its Python workers run the interpreter gio-spark runs in (not the python3 first
    on PATH, which may lack the project's libraries), and the local defaults apply."""
    script = tmp_path / "probe.py"
    script.write_text(WORKER_PROBE.format(root=ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "SPARK_CONF_DIR")}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("PROBE "):])
    assert got == {"workers": [sys.executable], "master": "local[*]", "ui": "false"}


def test_python_workers_read_a_zip_again_only_when_it_changed(spark):
    """CPython 3.10 to 3.12 re-read every zip on the path before each Spark task (gh-103200);
    once a task imports jobs, its worker re-reads a zip only when the file changed. The
    driver's importers are left as they are."""
    import zipimport

    def probe(rows):
        import importlib
        import zipimport

        import jobs  # noqa: F401 - a task that imports jobs, as every gio-spark task does
        before = zipimport._read_directory
        reads = []

        def counted(path):
            reads.append(path)
            return before(path)

        zipimport._read_directory = counted
        try:
            importlib.invalidate_caches()
            again = len(reads)
            importlib.invalidate_caches()
        finally:
            zipimport._read_directory = before
        importers = [v for v in __import__("sys").path_importer_cache.values()
                     if isinstance(v, zipimport.zipimporter)]
        yield (again, len(reads) - again, len(importers),
               getattr(zipimport.zipimporter.invalidate_caches, "gio_spark", False),
               hasattr(zipimport.zipimporter, "_get_files"))

    (again, second, importers, patched, lazy), = spark.sparkContext.parallelize([0], 1) \
        .mapPartitions(probe).collect()
    assert importers > 0, "the worker imported from Spark's zips"
    if lazy:                        # CPython 3.13+: reads again only when used; nothing to fix
        assert not patched
    else:
        assert patched and second == 0, (again, second)
    assert not getattr(zipimport.zipimporter.invalidate_caches, "gio_spark", False)


def test_the_cheaper_invalidation_still_sees_a_changed_zip(tmp_path):
    """In a process where the fix is in (forced here), a zip changed on disk after its
    importer last read it is read again: a module added to it imports after
    importlib.invalidate_caches()."""
    script = f"""
import importlib, sys, zipfile
sys.path.insert(0, {str(ROOT)!r})
import jobs
assert jobs._settle_worker(force=True)
path = {str(tmp_path / "lib.zip")!r}
with zipfile.ZipFile(path, "w") as z:
    z.writestr("first_mod.py", "X = 1")
sys.path.insert(0, path)
import first_mod
importlib.invalidate_caches()           # the importer read it: its stamp is kept
with zipfile.ZipFile(path, "a") as z:
    z.writestr("second_mod.py", "Y = 2")
importlib.invalidate_caches()
import second_mod
print("OK", first_mod.X, second_mod.Y)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "OK 1 2", out.stderr[-2000:]
