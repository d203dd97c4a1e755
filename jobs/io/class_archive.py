"""A class-data-sharing archive of the driver JVM's classes (``runtime.jvm_cache``).

A JVM that starts Spark and Delta loads some 18,000 classes from their jars, parsing and
verifying each; that is most of the first seconds of every command. The JDK can write the
classes a JVM loaded into an archive when it exits (``-XX:ArchiveClassesAtExit``) and map
that archive in later JVMs (``-XX:SharedArchiveFile``), which then skip the parsing. Measured on
a small run (docs/benchmarks.md, *Small runs*): about 4 s less per command; the archive is
about 180 MB, written once, in about 10 s while the first command's JVM exits.

How it is kept safe:

* Only where gio-spark starts the driver JVM itself, in a process of its own (its commands; see
  :func:`jobs.common.runtime.jvm_cache_dir`). The flags go into
  ``spark.driver.defaultJavaOptions``, which Spark puts before ``spark.driver.extraJavaOptions``;
  where that setting is set already (the config's ``spark.conf``, ``spark-defaults.conf``)
  nothing is added, nor where the user's own JVM options (``spark.driver.extraJavaOptions``,
  ``SPARK_SUBMIT_OPTS``, ``JAVA_TOOL_OPTIONS``...) say anything about class sharing.
* Before the first archive, ``java -version`` with the options to write one and the user's
  own: a JVM that cannot write one does not start at all (no base archive in the JDK,
  ``-Xshare:off``), so where that probe fails no archive is asked for.
* One archive per JVM and class path (:func:`archive_key`: the java binary, pyspark, delta-spark
  and the settings that change the class path). The JVM checks the rest itself: an archive
  made for another JDK or class path is refused with a warning and the run goes on without it.
* The archive is written under a temporary name and renamed into place only after its JVM
  exited cleanly, with its size recorded beside it (``.json``). A JVM crashes on a truncated
  archive, so one whose size differs from the record is deleted and made again, never mapped.
  Archives are written and read with ``-XX:+VerifySharedSpaces``: a damaged one is refused by
  its checksums (about 0.2 s at each start).
* Archives not used for :data:`UNUSED_DAYS` days, and temporary ones left by a killed process,
  are removed when a new one is saved. A JVM that exits cleanly without writing one (a JDK
  without its own base archive) is recorded, and runs start without one for
  :data:`RETRY_DAYS` days instead of trying at every start.
"""
from __future__ import annotations

import atexit
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Mapping

from jobs.common.log import log, took

# The Spark setting the archive's flags go into: Spark adds it before
# spark.driver.extraJavaOptions, so a user's own JVM options still apply (and win).
OPTION_KEY = "spark.driver.defaultJavaOptions"
# Settings that change the driver's class path, and so the archive that fits it.
CLASS_PATH_KEYS = ("spark.jars", "spark.jars.packages", "spark.jars.repositories",
                   "spark.jars.excludes", "spark.jars.ivySettings",
                   "spark.driver.extraClassPath", "spark.driver.userClassPathFirst")
UNUSED_DAYS = 30
RETRY_DAYS = 7
STALE_TEMP_S = 3600.0
EXIT_WAIT_S = 300.0


@dataclass
class Pending:
    """An archive this process's JVM writes when it exits: ``temp`` until it is complete."""
    temp: str
    final: str


def _java() -> str | None:
    """The java binary Spark's launcher runs: ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    path = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(path) if path and os.path.exists(path) else None


def _stamp(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def archive_key(settings: Mapping[str, str], java: str | None = None) -> str | None:
    """The name part of the archive that fits a JVM started with ``settings``: a hash of the
    java binary (and its ``libjvm.so``), the pyspark and delta-spark installs, and the settings
    in :data:`CLASS_PATH_KEYS`; None where no java binary is found."""
    java = java or _java()
    if java is None:
        return None
    import pyspark

    libjvm = glob.glob(os.path.join(os.path.dirname(os.path.dirname(java)), "lib", "server",
                                    "libjvm.so"))
    versions = {}
    for name in ("pyspark", "delta-spark"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    parts = [_stamp(java), [_stamp(p) for p in libjvm],
             os.path.realpath(os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)),
             versions, {k: str(settings[k]) for k in CLASS_PATH_KEYS if k in settings},
             os.environ.get("SPARK_DIST_CLASSPATH", "")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _record(final: str) -> str:
    return final + ".json"


def usable(final: str) -> bool:
    """Whether ``final`` is an archive this module saved whole: its size is the one recorded
    when its JVM exited. Marks it used (the record's time) when it is."""
    try:
        with open(_record(final), encoding="utf-8") as f:
            recorded = json.load(f).get("bytes")
        whole = os.path.getsize(final) == recorded
    except (OSError, ValueError, AttributeError):
        whole = False
    if whole:
        try:
            os.utime(_record(final))
        except OSError:
            pass
    return whole


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


# JVM options by which the user manages class sharing themselves: then no archive is added.
THEIRS = re.compile(r"-Xshare|SharedArchiveFile|ArchiveClassesAtExit|SharedClassListFile|"
                    r"DumpLoadedClassList|AutoCreateSharedArchive")
# Where the JVM's options come from besides Spark's settings (the launcher's, the JVM's own).
OPTION_ENV = ("SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")


def java_options(folder: str, settings: Mapping[str, str],
                 extra_java_options: str = "") -> tuple[str, Pending | None] | None:
    """The JVM options for a driver JVM started with ``settings`` (and the user's
    ``extra_java_options``, from wherever they are set), and the archive it will write at exit
    (None when it maps one already made); None when no archive applies: no java binary, a
    folder that cannot be written, a run writing this archive now, options of the user's own
    about class sharing, or a JVM that cannot write one with the user's options (a quick
    ``java -version`` with them, before the first archive only: the JVM refuses to start at
    all where it cannot, for example without the JDK's own base archive)."""
    own = " ".join([extra_java_options or ""] + [os.environ.get(v, "") for v in OPTION_ENV])
    if THEIRS.search(own):
        return None
    java = _java()
    key = archive_key(settings, java)
    if key is None or java is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    final = os.path.join(folder, f"spark-{key}.jsa")
    if usable(final):
        return f"-XX:+VerifySharedSpaces -XX:SharedArchiveFile={final}", None
    if _failed_lately(final):
        return None          # this JVM could not write one (no base archive of the JDK's?)
    if os.path.exists(final) or os.path.exists(_record(final)):
        _remove(final, _record(final))           # not the size recorded: never mapped
    now = time.time()
    for temp in glob.glob(final + ".*.tmp"):
        try:
            if now - os.path.getmtime(temp) < STALE_TEMP_S:
                return None                      # another run is writing it now
        except OSError:
            pass
    pending = Pending(temp=f"{final}.{os.getpid()}.tmp", final=final)
    try:                  # claimed: other runs meanwhile start without it (the JVM replaces it)
        open(pending.temp, "w").close()
    except OSError:
        return None
    # The JDK warns of every class it leaves out (some 1,600 lines for Spark's): not shown.
    dump = "-XX:+VerifySharedSpaces -Xlog:cds*=off -XX:ArchiveClassesAtExit="
    if not _starts(java, f"{dump}{pending.temp}.probe", extra_java_options):
        _remove(pending.temp)
        return None
    return dump + pending.temp, pending


def _starts(java: str, options: str, extra_java_options: str) -> bool:
    """Whether ``java`` starts with ``options`` among the driver's (``java -version``)."""
    words = (shlex.split(os.environ.get("SPARK_SUBMIT_OPTS", "")) + shlex.split(options)
             + shlex.split(extra_java_options or ""))
    try:
        code = subprocess.run([java, *words, "-version"], capture_output=True,
                              timeout=60).returncode
    except (OSError, subprocess.SubprocessError, ValueError):
        code = -1
    _remove(options.rsplit("=", 1)[-1])
    return code == 0


def _failed_lately(final: str) -> bool:
    """Whether a JVM that exited cleanly wrote no archive for ``final`` in the last
    :data:`RETRY_DAYS` days (then runs start without one, not trying again each time)."""
    try:
        with open(_record(final), encoding="utf-8") as f:
            failed = "failed" in json.load(f)
        return failed and time.time() - os.path.getmtime(_record(final)) < RETRY_DAYS * 86400
    except (OSError, ValueError, TypeError):
        return False


def _write_record(final: str, content: dict) -> None:
    record = _record(final)
    with open(record + f".{os.getpid()}.tmp", "w", encoding="utf-8") as f:
        json.dump({**content, "made": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    os.replace(record + f".{os.getpid()}.tmp", record)


def save_at_exit(pending: Pending) -> None:
    """Registers :func:`save` to run when this process exits."""
    atexit.register(save, pending)


def save(pending: Pending, timeout: float = EXIT_WAIT_S) -> bool:
    """Stops this process's JVM (its SparkContext first), waits while it writes the archive,
    and puts a whole one in place; True when it did. A JVM that fails, or takes longer than
    ``timeout`` seconds, leaves no archive."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None or proc.poll() is not None:
        _remove(pending.temp)
        return False
    saved = False
    try:
        active = SparkContext._active_spark_context
        if active is not None:
            active.stop()
        log(f"saving the JVM's classes for later commands to start sooner (once, about 10 s): "
            f"{pending.final}")
        started = time.perf_counter()
        try:
            SparkContext._gateway.shutdown()
        except Exception:  # noqa: BLE001 - the JVM exits on its stdin's end all the same
            pass
        if proc.stdin is not None:
            proc.stdin.close()
        code = proc.wait(timeout=timeout)
        if code == 0 and os.path.isfile(pending.temp) and os.path.getsize(pending.temp) > 0:
            size = os.path.getsize(pending.temp)
            _write_record(pending.final, {"bytes": size})
            os.replace(pending.temp, pending.final)
            saved = True
            log(f"saved the JVM's classes ({size / 2 ** 20:.0f} MB) in "
                f"{took(time.perf_counter() - started)}")
        elif code == 0:
            _write_record(pending.final, {"failed": "the JVM exited and wrote no archive"})
            log(f"the JVM wrote no class archive; commands start without one (tried again "
                f"after {RETRY_DAYS} days, or when {_record(pending.final)} is removed)")
        prune(os.path.dirname(pending.final), keep=pending.final)
    except BaseException:  # noqa: BLE001 - at exit: an interrupt or a failure leaves no archive
        if proc.poll() is None:
            proc.kill()
    finally:
        if not saved:
            _remove(pending.temp)
        sys.stdout.flush()
    return saved


def prune(folder: str, keep: str | None = None) -> None:
    """Removes archives not used for :data:`UNUSED_DAYS` days (by their record's time) and
    temporary files older than :data:`STALE_TEMP_S` (left by a process that was killed)."""
    now = time.time()
    for path in glob.glob(os.path.join(folder, "spark-*.jsa")):
        if path == keep:
            continue
        try:
            used = os.path.getmtime(_record(path))
        except OSError:
            used = os.path.getmtime(path) if os.path.exists(path) else now
        if now - used > UNUSED_DAYS * 86400:
            _remove(path, _record(path))
    for temp in glob.glob(os.path.join(folder, "spark-*.tmp")):
        try:
            if now - os.path.getmtime(temp) > STALE_TEMP_S:
                _remove(temp)
        except OSError:
            pass
