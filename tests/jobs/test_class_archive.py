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
    # In the archive's folder's parent: a JVM that crashed would leave its hs_err file there.
    cwd = os.path.dirname(str(folder))
    os.makedirs(cwd, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), json.dumps(conf or {})],
                          cwd=cwd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    assert proc.stdout.splitlines()[-1] == line      # the archive's lines go to stderr
    return json.loads(line[len("RESULT "):]), proc.stderr


def ours(found, folder):
    """The archives in ``folder`` the child's JVM mapped (the JDK's own is mapped as well)."""
    return [m for m in found["mapped"] if m.startswith(str(folder))]


def archives(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".jsa"))


def test_the_second_command_writes_the_archive_and_the_next_ones_map_it(tmp_path):
    folder = tmp_path / "jvm"
    first, err = child(folder)                   # the first only notes that it ran
    assert first["sum"] == 4950 and first["options"] is None and "saving" not in err
    assert archives(folder) == []
    second, err = child(folder)
    assert second["sum"] == 4950
    assert "-XX:ArchiveClassesAtExit=" in second["options"]
    assert "saved the JVM's classes" in err
    [name] = archives(folder)
    final = folder / name
    record = json.loads((folder / (name + ".json")).read_text())
    assert record["bytes"] == final.stat().st_size > 10 * 2 ** 20
    assert sorted(os.listdir(folder)) == [name, name + ".json"]     # no claim, no temp left
    third, err = child(folder)
    assert third["sum"] == 4950 and "sav" not in err
    assert third["options"] == f'-XX:+VerifySharedSpaces -XX:SharedArchiveFile="{final}"'
    assert ours(third, folder) == [str(final)]          # the JVM really mapped it

    # A truncated archive would crash the JVM that maps it: its size is not the one recorded,
    # so it is removed, the JVM starts without it, and a whole one is written again. (Cut in
    # a copy put in its place: a JVM still exiting maps the file it opened.)
    with open(final, "rb") as f, open(str(final) + ".cut", "wb") as cut:
        cut.write(f.read(record["bytes"] // 2))
    os.replace(str(final) + ".cut", final)
    fourth, err = child(folder)
    assert fourth["sum"] == 4950 and ours(fourth, folder) == []
    assert "-XX:ArchiveClassesAtExit=" in fourth["options"] and "saved" in err
    assert final.stat().st_size == json.loads((folder / (name + ".json")).read_text())["bytes"]

    # Another class path (here: one more jar) is another key: its first command only notes.
    jars = os.path.join(os.path.dirname(__import__("pyspark").__file__), "jars")
    jar = next(p for p in os.listdir(jars) if p.startswith("slf4j-api"))
    extra = str(tmp_path / jar)
    with open(os.path.join(jars, jar), "rb") as src, open(extra, "wb") as dst:
        dst.write(src.read())
    fifth, _ = child(folder, {"spark.driver.extraClassPath": extra})
    assert fifth["options"] is None and ours(fifth, folder) == []
    assert archives(folder) == [name] and len(os.listdir(folder)) == 3
    assert not [p for p in os.listdir(tmp_path) if p.startswith("hs_err")]   # no JVM crashed


def test_a_jvm_that_does_not_start_with_the_options_starts_without_them(tmp_path):
    # A spark-env.sh of the user's turns class sharing off: the checks before the start do
    # not read it, the JVM refuses to start with the options to write an archive, and the
    # command starts it again without them, and records it.
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "spark-env.sh").write_text('export SPARK_SUBMIT_OPTS="$SPARK_SUBMIT_OPTS '
                                       '-Xshare:off"\n')
    folder = tmp_path / "jvm"
    env = {"SPARK_CONF_DIR": str(conf)}
    child(folder, **env)                                 # the first only notes that it ran
    found, err = child(folder, **env)
    assert found["sum"] == 4950 and found["options"] == ""
    assert "did not start with its class archive's options" in err and "saving" not in err
    assert archives(folder) == [] and not [p for p in os.listdir(folder)
                                           if p.endswith((".tmp", ".lock"))]
    again, err = child(folder, **env)                    # not tried again for a while
    assert again["sum"] == 4950 and again["options"] is None and err.strip() == ""


def test_the_users_own_java_options_setting_is_left_alone(tmp_path):
    theirs = "-Dgio.test=1"
    found, _ = child(tmp_path / "jvm", {"spark.driver.defaultJavaOptions": theirs})
    assert found["options"] == theirs and ours(found, tmp_path) == []
    assert not (tmp_path / "jvm").exists()


def seen(folder, settings):
    """The record a first command leaves: the next command may write the archive."""
    final = os.path.join(folder, f"spark-{class_archive.archive_key(settings)}.jsa")
    os.makedirs(folder, exist_ok=True)
    class_archive._write_record(final, {"seen": "test"})
    return final


def test_an_archive_is_used_only_whole_and_one_run_writes_it_at_a_time(tmp_path):
    folder = str(tmp_path)
    settings = {"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.1"}
    key = class_archive.archive_key(settings)
    assert key == class_archive.archive_key(dict(settings))
    assert key != class_archive.archive_key({"spark.jars.packages": "a:b:1"})
    assert key == class_archive.archive_key({**settings, "spark.sql.shuffle.partitions": "3"})
    assert class_archive.java_options(folder, settings) is None     # the first: noted only
    found = class_archive.java_options(folder, settings)
    assert found.options.endswith(f'-XX:ArchiveClassesAtExit="{found.temp}"')
    assert os.path.exists(found.final + ".lock")         # claimed while this run goes on
    assert class_archive.java_options(folder, settings) is None
    with open(found.temp, "wb") as f:                    # as the JVM writes it at exit
        f.write(b"x" * 1000)
    class_archive._write_record(found.final, {"bytes": 1000})
    os.replace(found.temp, found.final)
    os.remove(found.final + ".lock")
    os.utime(found.final + ".json", (0, 0))
    again = class_archive.java_options(folder, settings)
    assert again.temp is None and again.options.endswith(f'SharedArchiveFile="{found.final}"')
    assert os.path.getmtime(found.final + ".json") > 0     # marked used
    with open(found.final, "ab") as f:                   # not the size recorded
        f.write(b"y")
    rebuilt = class_archive.java_options(folder, settings)
    assert rebuilt.temp is not None and not os.path.exists(found.final)
    # Unused archives and the claims and temporary files a killed run left are removed.
    old = os.path.join(folder, "spark-0000.jsa")
    for path in (old, old + ".json", old + ".9.tmp", old + ".lock"):
        open(path, "w").close()
        os.utime(path, (1, 1))
    class_archive.prune(folder)
    assert not [p for p in os.listdir(folder) if p.startswith("spark-0000")]
    assert os.path.exists(rebuilt.final + ".lock")         # a claim its process holds stays
    # A claim is taken over only from a process that is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = os.path.join(folder, "spark-1111.jsa.lock")
    with open(lock, "w") as f:
        f.write(str(gone.pid))
    assert class_archive._claim(lock) and class_archive._holder(lock) == os.getpid()
    with open(lock, "w") as f:
        f.write(str(os.getppid()))                       # a process that runs
    assert not class_archive._claim(lock)
    class_archive._release(lock)                         # not ours: kept
    assert os.path.exists(lock)


def test_an_archive_the_jvm_did_not_map_is_written_anew(tmp_path):
    import mmap
    final = str(tmp_path / "spark-2222.jsa")
    with open(final, "wb") as f:
        f.write(b"z" * 4096)
    class_archive._write_record(final, {"bytes": 4096})
    archive = class_archive.Archive("", final)
    with open(final, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
        assert class_archive.check_mapped(archive, os.getpid())    # mapped here: kept
    assert os.path.exists(final)
    assert not class_archive.check_mapped(archive, os.getpid())    # not mapped: written anew
    assert not os.path.exists(final) and "seen" in class_archive._read_record(final)


def test_no_archive_where_the_user_manages_class_sharing_or_the_jvm_cannot_write_one(
        tmp_path, monkeypatch):
    folder = tmp_path / "jvm"
    # Their own -Xshare:off (with which a JVM asked to write an archive does not start at all).
    env = {"SPARK_SUBMIT_OPTS": os.environ.get("SPARK_SUBMIT_OPTS", "") + " -Xshare:off"}
    found, err = child(folder, **env)
    assert found["sum"] == 4950 and found["options"] is None and err.strip() == ""
    assert not folder.exists() or os.listdir(folder) == []
    settings = {"spark.jars.packages": "x:y:1"}
    final = seen(folder, settings)
    for theirs in ("-Xshare:auto", "-XX:SharedArchiveFile=/x.jsa", "-XX:-UseSharedSpaces"):
        assert class_archive.java_options(str(folder), settings, theirs) is None
    # A JVM that does not start with the options to write one (here an option it does not
    # know stands for a JDK without its base archive): found by `java -version`, none added,
    # and not asked again for RETRY_DAYS days.
    assert class_archive.java_options(str(folder), settings, "-XX:+NoSuchOptionHere") is None
    assert sorted(os.listdir(folder)) == [os.path.basename(final) + ".json"]
    assert "failed" in class_archive._read_record(final)
    assert class_archive.java_options(str(folder), settings) is None
    os.utime(final + ".json", (0, 0))
    found = class_archive.java_options(str(folder), settings)
    assert "-XX:ArchiveClassesAtExit=" in found.options and found.final == final
    # A launch the user sets up themselves: none.
    os.remove(final + ".lock")
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--driver-memory 2g pyspark-shell")
    assert class_archive.java_options(str(folder), settings) is None


def test_the_folder_follows_the_setting_and_only_gio_sparks_own_process(monkeypatch, tmp_path):
    monkeypatch.setenv("GIO_SPARK_JVM_CACHE", str(tmp_path / "jvm"))
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jvm_cache_dir("auto") == str(tmp_path / "jvm")
    assert runtime.jvm_cache_dir("off") is None and runtime.jvm_cache_dir(False) is None
    assert runtime.jvm_cache_dir("rel") == os.path.abspath("rel")
    monkeypatch.setenv("GIO_SPARK_JVM_CACHE", "off")
    assert runtime.jvm_cache_dir("auto") is None
    assert runtime.jvm_cache_dir(str(tmp_path / "y")) == str(tmp_path / "y")
    monkeypatch.delenv("GIO_SPARK_JVM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.jvm_cache_dir("auto") == str(tmp_path / "xdg" / "gio-spark" / "jvm")
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    assert runtime.jvm_cache_dir("auto") is None
    assert runtime.jvm_cache_dir(str(tmp_path / "x")) is None    # the user's JVM is theirs
    assert load_config(None, [], "select").runtime.jvm_cache == "auto"
    off = load_config(None, ["runtime.jvm_cache=off"], "select").runtime.jvm_cache
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jvm_cache_dir(off) is None
    with pytest.raises(Exception, match="runtime.jvm_cache"):
        load_config(None, ["runtime.jvm_cache="], "select")
