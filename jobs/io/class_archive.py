"""A class-data-sharing archive of the driver JVM's classes (``runtime.jvm_cache``).

A JVM that starts Spark and Delta loads some 18,000 classes from their jars, parsing and
verifying each; that is most of the first seconds of every command. The JDK can write the
classes a JVM loaded into an archive when it exits (``-XX:ArchiveClassesAtExit``) and map
that archive in later JVMs (``-XX:SharedArchiveFile``), which then skip the parsing. Measured on
a small run (docs/benchmarks.md, *Small runs*): about 4 s less per command; the archive is
about 180 MB, written once, in about 10 s while a command's JVM exits. The first command with
a given JDK and class path only notes that it ran; the second writes the archive, so that a
machine that runs a single command (a container, a CI job) never pays for one. Its lines go
to stderr.

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

from jobs.common.log import took

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
class Archive:
    """The archive a driver JVM maps (``temp`` None) or writes when it exits (to ``temp``,
    renamed to ``final`` once whole), and the JVM ``options`` that say so."""
    options: str
    final: str
    temp: str | None = None


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
    home = os.path.realpath(os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__))
    # The JDK checks each class-path jar's size and time: a reinstall at the same place with the
    # same versions is another archive, not one the JVM refuses at every start.
    jars = [_stamp(p) for p in sorted(glob.glob(os.path.join(home, "jars", "*.jar")))]
    parts = [_stamp(java), [_stamp(p) for p in libjvm], home, jars,
             versions, {k: str(settings[k]) for k in CLASS_PATH_KEYS if k in settings},
             os.environ.get("SPARK_DIST_CLASSPATH", "")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _record(final: str) -> str:
    return final + ".json"


def _read_record(final: str) -> dict:
    try:
        with open(_record(final), encoding="utf-8") as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def usable(final: str) -> bool:
    """Whether ``final`` is an archive this module saved whole: its size is the one recorded
    when its JVM exited. Marks it used (the record's time) when it is."""
    try:
        whole = os.path.getsize(final) == _read_record(final).get("bytes")
    except OSError:
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


def _younger(path: str, seconds: float) -> bool:
    """Whether ``path`` was changed less than ``seconds`` ago (False where it is missing)."""
    try:
        return time.time() - os.path.getmtime(path) < seconds
    except OSError:
        return False


# JVM options by which the user manages class sharing themselves: then no archive is added.
THEIRS = re.compile(r"-Xshare|SharedArchiveFile|ArchiveClassesAtExit|SharedClassListFile|"
                    r"DumpLoadedClassList|AutoCreateSharedArchive|SharedSpaces|SharedBaseAddress|"
                    r"VMOptionsFile|-XX:Flags=")
# Where the JVM's options come from besides Spark's settings (the launcher's, the JVM's own).
OPTION_ENV = ("SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
# The JDK warns of every class it leaves out of an archive (some 1,600 lines for Spark's).
DUMP = "-XX:+VerifySharedSpaces -Xlog:cds*=off -XX:ArchiveClassesAtExit="
USE = "-XX:+VerifySharedSpaces -XX:SharedArchiveFile="


def _quoted(path: str) -> str:
    return f'"{path}"'                    # Spark's launcher splits options at spaces, not in quotes


def java_options(folder: str, settings: Mapping[str, str], extra_java_options: str = "",
                 memory: str | None = None) -> Archive | None:
    """The archive, and the options for it, of a driver JVM started with ``settings`` (the
    user's ``extra_java_options``, from wherever they are set, and ``memory``, its heap): one
    it maps, or one it writes at exit; None when none applies:

    * no java binary; a folder that cannot be written; ``PYSPARK_SUBMIT_ARGS`` set (the launch
      is the user's); options of the user's own about class sharing;
    * the first command with this key: it only notes that it ran, so that a machine that runs
      one command (a container) never pays for an archive; the second writes it;
    * a run writing this archive now, or a JVM that wrote none lately;
    * a JVM that cannot write one with the user's options: ``java -version`` with them, before
      writing only (the JVM refuses to start at all where it cannot, for example without the
      JDK's own base archive, or with ``-Xshare:off``)."""
    if os.environ.get("PYSPARK_SUBMIT_ARGS"):
        return None
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
        return Archive(USE + _quoted(final), final)
    lock = final + ".lock"
    if _held(lock):
        return None                              # another run is writing it now
    record = _read_record(final)
    if "failed" in record and _younger(_record(final), RETRY_DAYS * 86400):
        return None                              # this JVM could not write one lately
    if not record:                               # the first command with this key
        _remove(final)                           # a file without its record: never mapped
        _note(final, {"seen": "a command ran; the next one writes the archive"})
        return None
    if not _claim(lock):
        return None                              # other runs meanwhile start without it
    _remove(final)                               # not the size recorded: never mapped
    temp = f"{final}.{os.getpid()}.tmp"
    probe = f"{final}.{os.getpid()}.probe"
    starts = False
    try:
        starts = _starts(java, DUMP + _quoted(probe), extra_java_options, memory)
    finally:
        _remove(probe)
        if not starts:
            _release(lock)
    if not starts:
        _note(final, {"failed": "java -version did not start with the options"})
        return None
    return Archive(DUMP + _quoted(temp), final, temp)


def _claim(lock: str) -> bool:
    """Takes ``lock`` for this process (its pid inside), or False where another process holds
    it; one left by a process that is gone, or older than :data:`STALE_TEMP_S`, is taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _held(lock):
                return False
            _remove(lock)                        # stale: taken over once
            continue
        except OSError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _holder(lock: str) -> int | None:
    try:
        with open(lock, encoding="ascii") as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _held(lock: str) -> bool:
    """Whether ``lock`` is held: the process it names runs (and the lock is under a day old:
    a pid taken again after a restart), or it is so new that its pid is not written yet."""
    pid = _holder(lock)
    if pid is None:
        return _younger(lock, STALE_TEMP_S)
    if not _younger(lock, 86400):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                              # another user's process
    return True


def _release(lock: str) -> None:
    """Removes ``lock`` if this process holds it."""
    if _holder(lock) == os.getpid():
        _remove(lock)


def _starts(java: str, options: str, extra_java_options: str, memory: str | None) -> bool:
    """Whether ``java`` starts with ``options`` among the driver's (``java -version``)."""
    try:
        words = (shlex.split(os.environ.get("SPARK_SUBMIT_OPTS", "")) + shlex.split(options)
                 + shlex.split(extra_java_options or "")
                 + ([f"-Xmx{memory}"] if memory else []))
        return subprocess.run([java, *words, "-version"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


def _write_record(final: str, content: dict) -> None:
    record = _record(final)
    with open(record + f".{os.getpid()}.tmp", "w", encoding="utf-8") as f:
        json.dump({**content, "made": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    os.replace(record + f".{os.getpid()}.tmp", record)


def _note(final: str, content: dict) -> None:
    """:func:`_write_record` where a folder that cannot be written only costs the note."""
    try:
        _write_record(final, content)
    except OSError:
        pass


def abandon(archive: Archive) -> None:
    """The archive ``archive`` would have written is not written (the JVM did not start)."""
    atexit.unregister(save)
    if archive.temp is not None:
        _remove(archive.temp)
        _release(archive.final + ".lock")


def did_not_start(archive: Archive) -> None:
    """The JVM did not start with ``archive``'s options and did without them: recorded, so
    that commands start without an archive for :data:`RETRY_DAYS` days."""
    abandon(archive)
    _note(archive.final, {"failed": "the JVM did not start with its options"})
    _say(f"the JVM did not start with its class archive's options; started without them "
         f"(tried again after {RETRY_DAYS} days, or once {_record(archive.final)} is removed)")


def check_mapped(archive: Archive, pid: int) -> bool:
    """After a start that was to map ``archive``: whether the JVM ``pid`` did (its
    ``/proc/<pid>/maps``; True where that cannot be read). The JDK refuses an archive that no
    longer fits (a jar changed in place) with a warning in Spark's log only: then it is
    removed, and the next command writes a new one."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            mapped = any(line.rstrip().endswith(archive.final) for line in f)
    except OSError:
        return True
    if not mapped:
        _remove(archive.final)
        _note(archive.final, {"seen": "the JVM refused the archive; written anew"})
        _say(f"the JVM did not use its class archive {archive.final}; the next command writes "
             "a new one")
    return mapped


def _say(message: str) -> None:
    """A line on stderr: stdout may be a command's output (``plan --json``)."""
    print(f"[gio-spark] {message}", file=sys.stderr, flush=True)


def save_at_exit(archive: Archive) -> None:
    """Registers :func:`save` to run when this process exits."""
    atexit.register(save, archive)


def save(pending: Archive, timeout: float = EXIT_WAIT_S) -> bool:
    """Stops this process's JVM (its SparkContext first), waits while it writes the archive,
    and puts a whole one in place; True when it did. A JVM that fails, or takes longer than
    ``timeout`` seconds, leaves no archive, and that is recorded (commands start without one
    for :data:`RETRY_DAYS` days); an interrupt leaves none and records nothing."""
    from pyspark import SparkContext

    if pending.temp is None:
        return False
    lock = pending.final + ".lock"
    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None or proc.poll() is not None:
        _remove(pending.temp)
        _release(lock)
        return False
    saved = False
    try:
        active = SparkContext._active_spark_context
        if active is not None:
            active.stop()
        _say(f"saving the JVM's classes for later commands to start sooner (once, about 10 s):"
             f" {pending.final}")
        started = time.perf_counter()
        try:
            SparkContext._gateway.shutdown()
        except Exception:  # noqa: BLE001 - the JVM exits on its stdin's end all the same
            pass
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        if code == 0 and os.path.isfile(pending.temp) and os.path.getsize(pending.temp) > 0:
            size = os.path.getsize(pending.temp)
            _write_record(pending.final, {"bytes": size})
            os.replace(pending.temp, pending.final)
            saved = True
            _say(f"saved the JVM's classes ({size / 2 ** 20:.0f} MB) in "
                 f"{took(time.perf_counter() - started)}")
        else:
            why = (f"took longer than {timeout:.0f} s" if code is None
                   else f"exited with {code}" if code else "wrote none")
            _write_record(pending.final, {"failed": f"the JVM {why}"})
            _say(f"the JVM {why} while writing its class archive; commands start without one "
                 f"(tried again after {RETRY_DAYS} days, or once {_record(pending.final)} is "
                 "removed)")
        prune(os.path.dirname(pending.final), keep=pending.final)
    except BaseException:  # noqa: BLE001 - at exit: an interrupt leaves no archive
        if proc.poll() is None:
            proc.kill()
    finally:
        _release(lock)
        if not saved:
            _remove(pending.temp)
    return saved


def prune(folder: str, keep: str | None = None) -> None:
    """Removes archives not used for :data:`UNUSED_DAYS` days (by their record's time) and
    temporary files and claims older than :data:`STALE_TEMP_S` (left by a process that was
    killed)."""
    for path in glob.glob(os.path.join(folder, "spark-*.jsa")):
        if path != keep and not _younger(_record(path), UNUSED_DAYS * 86400) and \
                not _younger(path, UNUSED_DAYS * 86400):
            _remove(path, _record(path))
    for path in glob.glob(os.path.join(folder, "spark-*.jsa.json")):
        if not os.path.exists(path[:-len(".json")]) and not _younger(path, UNUSED_DAYS * 86400):
            _remove(path)                        # a record of a key no command uses now
    for temp in glob.glob(os.path.join(folder, "spark-*.tmp")) + \
            glob.glob(os.path.join(folder, "spark-*.probe")):
        if not _younger(temp, STALE_TEMP_S):
            _remove(temp)
    for lock in glob.glob(os.path.join(folder, "spark-*.lock")):
        if not _held(lock):
            _remove(lock)
