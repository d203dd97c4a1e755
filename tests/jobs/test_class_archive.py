"""``runtime.jvm_cache``: the driver JVM's class-data-sharing archive, made by the first command
and mapped by the later ones. Real JVMs in child processes: the archive is written when the
first one exits, and a second one maps it (its ``/proc/<pid>/maps`` names the file)."""
import json
import os
import subprocess
import sys

import pytest

from jobs.common import runtime
from jobs.config import load_config
from jobs.io import class_archive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A command's process: the session built as run_main builds it, one Spark job, then exit.
CHILD = """
import json, os, sys
from pyspark import SparkContext
from jobs.io.session import build_session
conf = json.loads(sys.argv[2])
spark = build_session("archive-test", "local[1]", conf, quiet=True, jvm_cache=sys.argv[1])
rows = spark.range(100).selectExpr("sum(id) AS s").collect()[0]["s"]
pid = SparkContext._gateway.proc.pid
with open(f"/proc/{pid}/maps") as f:
    mapped = sorted({line.split()[-1] for line in f if line.rstrip().endswith(".jsa")})
print("RESULT " + json.dumps({"sum": rows, "mapped": mapped,
      "options": spark.sparkContext.getConf().get("spark.driver.defaultJavaOptions", None)}),
      flush=True)
spark.stop()
"""


def child(folder, conf=None, **env):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), json.dumps(conf or {})],
                          cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), proc.stdout


def ours(found, folder):
    """The archives in ``folder`` the child's JVM mapped (the JDK's own is mapped as well)."""
    return [m for m in found["mapped"] if m.startswith(str(folder))]


def archives(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".jsa"))


def test_the_first_command_writes_the_archive_and_the_next_one_maps_it(tmp_path):
    folder = tmp_path / "jvm"
    first, out = child(folder)
    assert first["sum"] == 4950
    assert "-XX:ArchiveClassesAtExit=" in first["options"]
    assert "saved the JVM's classes" in out
    [name] = archives(folder)
    final = folder / name
    record = json.loads((folder / (name + ".json")).read_text())
    assert record["bytes"] == final.stat().st_size > 10 * 2 ** 20
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]
    second, out = child(folder)
    assert second["sum"] == 4950 and "saved" not in out
    assert second["options"] == f"-XX:+VerifySharedSpaces -XX:SharedArchiveFile={final}"
    assert ours(second, folder) == [str(final)]          # the JVM really mapped it

    # A truncated archive would crash the JVM that maps it: its size is not the one recorded,
    # so it is removed, the JVM starts without it, and a whole one is written again.
    with open(final, "r+b") as f:
        f.truncate(record["bytes"] // 2)
    third, out = child(folder)
    assert third["sum"] == 4950 and ours(third, folder) == []
    assert "-XX:ArchiveClassesAtExit=" in third["options"] and "saved" in out
    assert final.stat().st_size == json.loads((folder / (name + ".json")).read_text())["bytes"]

    # Another class path (here: one more jar) gets an archive of its own.
    jar = next(p for p in os.listdir(os.path.join(os.path.dirname(
        __import__("pyspark").__file__), "jars")) if p.startswith("slf4j-api"))
    extra = str(tmp_path / jar)
    with open(os.path.join(os.path.dirname(__import__("pyspark").__file__), "jars", jar),
              "rb") as src, open(extra, "wb") as dst:
        dst.write(src.read())
    fourth, _ = child(folder, {"spark.driver.extraClassPath": extra})
    assert ours(fourth, folder) == [] and len(archives(folder)) == 2


def test_the_users_own_java_options_setting_is_left_alone(tmp_path):
    theirs = "-Dgio.test=1"
    found, _ = child(tmp_path / "jvm", {"spark.driver.defaultJavaOptions": theirs})
    assert found["options"] == theirs and ours(found, tmp_path) == []
    assert not (tmp_path / "jvm").exists()


def test_an_archive_is_used_only_whole_and_one_run_writes_it_at_a_time(tmp_path):
    folder = str(tmp_path)
    settings = {"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.1"}
    key = class_archive.archive_key(settings)
    assert key == class_archive.archive_key(dict(settings))
    assert key != class_archive.archive_key({"spark.jars.packages": "a:b:1"})
    assert key == class_archive.archive_key({**settings, "spark.sql.shuffle.partitions": "3"})
    options, pending = class_archive.java_options(folder, settings)
    assert options.endswith(f"-XX:ArchiveClassesAtExit={pending.temp}")
    assert os.path.exists(pending.temp)                  # claimed while this run goes on
    assert class_archive.java_options(folder, settings) is None
    with open(pending.temp, "wb") as f:                  # as the JVM writes it at exit
        f.write(b"x" * 1000)
    with open(pending.final + ".json", "w") as f:
        json.dump({"bytes": 1000}, f)
    os.replace(pending.temp, pending.final)
    os.utime(pending.final + ".json", (0, 0))
    options, again = class_archive.java_options(folder, settings)
    assert again is None and options.endswith(f"-XX:SharedArchiveFile={pending.final}")
    assert os.path.getmtime(pending.final + ".json") > 0     # marked used
    with open(pending.final, "ab") as f:                 # not the size recorded
        f.write(b"y")
    options, pending2 = class_archive.java_options(folder, settings)
    assert pending2 is not None and not os.path.exists(pending2.final)
    # Unused archives and temporary files a killed run left are removed when one is saved.
    old = os.path.join(folder, "spark-0000.jsa")
    for path in (old, old + ".json", old + ".9.tmp"):
        open(path, "w").close()
        os.utime(path, (1, 1))
    class_archive.prune(folder)
    assert not os.path.exists(old) and not os.path.exists(old + ".9.tmp")
    assert os.path.exists(pending2.temp)                 # a fresh claim stays


def test_the_folder_follows_the_setting_and_only_gio_sparks_own_process(monkeypatch, tmp_path):
    monkeypatch.setenv("GIO_SPARK_JVM_CACHE", str(tmp_path / "jvm"))
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jvm_cache_dir("auto") == str(tmp_path / "jvm")
    assert runtime.jvm_cache_dir("off") is None and runtime.jvm_cache_dir(False) is None
    assert runtime.jvm_cache_dir("rel") == os.path.abspath("rel")
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    assert runtime.jvm_cache_dir("auto") is None
    assert runtime.jvm_cache_dir(str(tmp_path / "x")) is None    # the user's JVM is theirs
    assert load_config(None, [], "select").runtime.jvm_cache == "auto"
    off = load_config(None, ["runtime.jvm_cache=off"], "select").runtime.jvm_cache
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jvm_cache_dir(off) is None
    with pytest.raises(Exception, match="runtime.jvm_cache"):
        load_config(None, ["runtime.jvm_cache="], "select")


def test_no_archive_where_the_user_manages_class_sharing_or_the_jvm_cannot_write_one(tmp_path):
    folder = tmp_path / "jvm"
    # Their own -Xshare:off (with which a JVM asked to write an archive does not start at all).
    env = {"SPARK_SUBMIT_OPTS": os.environ.get("SPARK_SUBMIT_OPTS", "") + " -Xshare:off"}
    found, out = child(folder, **env)
    assert found["sum"] == 4950 and found["options"] is None and "saved" not in out
    assert not folder.exists() or os.listdir(folder) == []
    settings = {"spark.jars.packages": "x:y:1"}
    for theirs in ("-Xshare:auto", "-XX:SharedArchiveFile=/x.jsa", "-XX:ArchiveClassesAtExit=y"):
        assert class_archive.java_options(str(folder), settings, theirs) is None
    # A JVM that does not start with the options to write one (here an option it does not
    # know stands for a JDK without its base archive): found by `java -version`, none added.
    assert class_archive.java_options(str(folder), settings, "-XX:+NoSuchOptionHere") is None
    assert os.listdir(folder) == []
    # A JVM that exited cleanly and wrote none: not asked again for RETRY_DAYS days.
    final = os.path.join(folder, f"spark-{class_archive.archive_key(settings)}.jsa")
    class_archive._write_record(final, {"failed": "test"})
    assert class_archive.java_options(str(folder), settings) is None
    os.utime(final + ".json", (0, 0))
    options, pending = class_archive.java_options(str(folder), settings)
    assert "-XX:ArchiveClassesAtExit=" in options and pending.final == final
