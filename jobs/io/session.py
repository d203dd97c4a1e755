"""The one place where SparkSessions are built, with Delta Lake configured.

Delta's JVM jars come one of three ways:

* by default, delta-spark's ``configure_spark_with_delta_pip`` adds the Maven coordinates of the
  installed delta-spark release to ``spark.jars.packages`` and Ivy resolves them from Maven
  Central once; Ivy's cache (``~/.ivy2.5.2``, or ``$GIO_SPARK_IVY_DIR``) keeps them, so later
  sessions and test runs start without downloading;
* under ``spark-submit`` the JVM starts before this code runs, so the jars must come from the
  command line: ``spark-submit --properties-file conf/spark-defaults.conf ...`` (or
  ``--packages io.delta:delta-spark_2.13:4.0.1``); a session without them is refused with a
  message saying so;
* where Ivy cannot reach a repository, set ``spark.jars`` (in the config's ``spark.conf`` or with
  ``$GIO_SPARK_JARS``) to a comma-separated list of pre-downloaded jars, for example the output
  of ``mvn dependency:copy-dependencies`` on ``io.delta:delta-spark_2.13:4.0.1``.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import sys
import tempfile
from typing import Callable, Mapping

from jobs.common.errors import InputError
from jobs.common.log import QUIET_ENV
from jobs.io import class_archive

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Quiet, small-machine defaults for a local Spark that gio-spark starts itself; every key can be
# overridden by the config's spark.conf. Never applied to a Spark that runs already (spark-submit,
# a notebook's session) nor to a cluster's: their settings are their owners'.
LOCAL_DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.rpc.message.maxSize": "512",
    "spark.databricks.delta.snapshotPartitions": "2",
}


# netlib's BLAS on the JVM: Spark 4 starts its JVMs with the JDK's vector API
# (--add-modules=jdk.incubator.vector), so the level-1 routines MLlib's K-means spends its time in
# run vectorised ("VectorBLAS"); a native BLAS for the level-2 and level-3 ones is loaded where one
# is installed as libblas.so.3 (Debian: libopenblas0-pthread; make setup installs it where it
# may). Without one Spark logs "Failed to load implementation from ...JNIBLAS" and falls back.


def native_blas() -> str | None:
    """The native BLAS netlib will load (``libblas.so.3``), or None where none is installed."""
    import ctypes.util
    return ctypes.util.find_library("blas")


def spark_log_path(app_name: str) -> str:
    """Where a quiet run's JVM writes its console output: ``$GIO_SPARK_LOG_DIR`` (default
    ``<temp dir>/gio-spark-logs``), one file per run."""
    folder = os.environ.get("GIO_SPARK_LOG_DIR") or os.path.join(tempfile.gettempdir(),
                                                                 "gio-spark-logs")
    os.makedirs(folder, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in app_name)
    return os.path.join(folder, f"{safe}-{stamp}-{os.getpid()}.log")


_LOG = {"path": None}


def current_log() -> str | None:
    """The log file this process's JVM writes to (a quiet run's), or None."""
    return _LOG["path"]


def _get_quietly(builder, log_path: str):
    """``builder.getOrCreate()`` with this process's stdout and stderr pointed at ``log_path``
    while the JVM starts: the JVM (and the Python workers it starts later) keep writing there,
    this process gets its terminal back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        return builder.getOrCreate()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _spark_running() -> bool:
    """Whether this process has a Spark to join: a SparkContext, or spark-submit's JVM."""
    from pyspark import SparkContext
    return SparkContext._active_spark_context is not None or "PYSPARK_GATEWAY_PORT" in os.environ


def _defaults(key: str) -> str | None:
    """``key``'s value in the ``spark-defaults.conf`` a new JVM reads (``$SPARK_CONF_DIR``, else
    ``$SPARK_HOME/conf``, else pyspark's own folder's), or None. Its lines are ``key value``
    (or ``key=value``, ``key: value``), as Java's properties files have them."""
    import pyspark
    folders = [os.environ.get("SPARK_CONF_DIR"),
               os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME")
               else None, os.path.join(os.path.dirname(pyspark.__file__), "conf")]
    for folder in folders:
        path = os.path.join(folder, "spark-defaults.conf") if folder else None
        if path and os.path.isfile(path):
            value = None                         # as in Java's properties, the last one wins
            with open(path, encoding="utf-8") as f:
                for line in f:
                    found = re.match(r"\s*([^\s=:#!]+)\s*[=:\s]\s*(.*?)\s*$", line)
                    if found and found.group(1) == key:
                        value = found.group(2) or None
            return value
    return None


def _already_set() -> Callable[[str], bool] | None:
    """For a Spark that runs already in this process (a session a notebook or a test made, or
    the JVM spark-submit started before this code): whether a setting is set there, by
    spark-submit, ``spark-defaults.conf``, the session's builder or ``spark.conf.set``. None when
    no Spark runs yet."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:
        conf = SparkContext._active_spark_context.getConf()
    elif "PYSPARK_GATEWAY_PORT" in os.environ:
        SparkContext._ensure_initialized()     # joins spark-submit's JVM: its spark.* properties
        conf = SparkConf()
    else:
        return None
    active = SparkSession.getActiveSession()

    def is_set(key: str) -> bool:
        return conf.contains(key) or (active is not None and active.conf.get(key, None) is not None)
    return is_set


def build_session(app_name: str = "gio-spark", master: str | None = None,
                  conf: Mapping[str, str] | None = None, quiet: bool = False,
                  log_level: str | None = None, jvm_cache: str | None = None):
    """A SparkSession with Delta Lake, for local and cluster runs alike.

    Args:
      app_name: the Spark application name.
      master: ``local[*]``, ``spark://host:port``...; ``None`` leaves it to spark-submit.
      conf: extra Spark settings (the config's ``spark.conf``); they win over the defaults here,
        never over what a running Spark has set already.
      quiet: when this call starts the JVM, send its console output (Ivy's report, log4j's
        lines, stage bars; the Python workers' stderr) to a log file (:func:`spark_log_path`,
        :func:`current_log`) and turn Spark's stage bars off, so the terminal holds the
        project's own lines. Under spark-submit the JVM is already running: only the bars and
        the log level change.
      log_level: Spark's log level once the session runs (``None``: Spark's default, WARN, or
        ERROR for a quiet run under spark-submit, whose JVM writes to the terminal).
      jvm_cache: a folder for the driver JVM's class archive (:mod:`jobs.io.class_archive`),
        used when this call starts the JVM and neither ``conf`` nor ``spark-defaults.conf``
        sets ``spark.driver.defaultJavaOptions``; None: no archive. The commands pass
        ``runtime.jvm_cache``'s folder (:func:`jobs.common.runtime.jvm_cache_dir`).
    Returns:
      The active SparkSession. A Spark that runs already (spark-submit's, a notebook's) is
      joined as it is: of ``conf`` and the Delta settings only those it has not set are applied
      (where Spark allows it at run time), and :data:`LOCAL_DEFAULTS` never; a new local Spark
      gets :data:`LOCAL_DEFAULTS` under ``conf``; a new cluster session gets neither defaults
      nor a changed UI setting.

    Example:
      >>> spark = build_session(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"})
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and is_connect(active):
        check_delta(active)          # a Connect session is joined as it is: nothing is set on it
        return active
    remote = os.environ.get("SPARK_REMOTE")
    if remote and active is None:
        return _connect_session(app_name, remote, conf, quiet)
    if master is None and active is None and not _spark_running():
        # No master named and no Spark to join: Spark starts its default, local[*], unless a
        # spark-defaults.conf names one (which is kept, not overridden).
        master_default = _defaults("spark.master")
        implicit_local = master_default is None or master_default.startswith("local")
    else:
        implicit_local = False
    local = (master is not None and master.startswith("local")) or implicit_local
    if local and "PYSPARK_PYTHON" not in os.environ:
        # Local Python workers run this interpreter (the project's environment), not whatever
        # python3 is first on PATH. On a cluster, PYSPARK_PYTHON says which one to use.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    is_set = _already_set()
    settings = dict(LOCAL_DEFAULTS) if is_set is None and local else {}
    settings.update(DELTA_CONF)
    if os.environ.get("GIO_SPARK_IVY_DIR"):
        settings["spark.jars.ivy"] = os.environ["GIO_SPARK_IVY_DIR"]
    if quiet:
        settings["spark.ui.showConsoleProgress"] = "false"
        for key, value in QUIET_ENV.items():           # the executors' Python workers, too
            settings[f"spark.executorEnv.{key}"] = value
    settings.update({str(k): str(v) for k, v in (conf or {}).items()})
    if is_set is not None:                   # a running Spark keeps what its owner set
        settings = {k: v for k, v in settings.items() if not is_set(k)}
    jars = settings.get("spark.jars") or os.environ.get("GIO_SPARK_JARS")

    builder = SparkSession.builder.appName(app_name)
    if master and is_set is None:
        # A running Spark keeps its master: the builder would write this one into the joined
        # session's settings (spark.conf.get("spark.master") would name it), not move it.
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if jars:
        builder = builder.config("spark.jars", jars)
    else:
        # delta-spark's helper sets spark.jars.packages to Delta's coordinates: the packages
        # the config's spark.conf asks for are handed to it, not dropped.
        from delta import configure_spark_with_delta_pip
        wanted = [p.strip() for p in settings.get("spark.jars.packages", "").split(",")
                  if p.strip() and not p.strip().startswith("io.delta:delta-spark_")]
        builder = configure_spark_with_delta_pip(builder, extra_packages=wanted or None)
    from pyspark import SparkContext

    # Under spark-submit (PYSPARK_GATEWAY_PORT set) the JVM runs already and owns the terminal.
    starts_jvm = SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ
    found = None
    if (jvm_cache and starts_jvm and class_archive.OPTION_KEY not in settings
            and _defaults(class_archive.OPTION_KEY) is None):
        found = class_archive.java_options(
            jvm_cache, {**settings, **({"spark.jars": jars} if jars else {})},
            settings.get("spark.driver.extraJavaOptions")
            or _defaults("spark.driver.extraJavaOptions") or "",
            settings.get("spark.driver.memory") or _defaults("spark.driver.memory"))
        if found is not None:
            builder = builder.config(class_archive.OPTION_KEY, found.options)
            if found.temp is not None:     # at exit: saved once the JVM wrote it, else removed
                class_archive.save_at_exit(found)

    def start(builder):
        if quiet and starts_jvm:
            _LOG["path"] = spark_log_path(app_name)
            return _get_quietly(builder, _LOG["path"])   # the file keeps Spark's WARN lines
        return builder.getOrCreate()

    try:
        spark = start(builder)
    except Exception:
        if found is None or SparkContext._gateway is not None:
            raise
        # The JVM did not start with the archive's options (something of the user's that the
        # checks before could not see, as a spark-env.sh): once more without them.
        try:
            spark = start(builder.config(class_archive.OPTION_KEY, ""))
        except Exception:
            class_archive.abandon(found)      # not the options: the error is the user's
            raise
        class_archive.did_not_start(found)
    else:
        proc = getattr(SparkContext._gateway, "proc", None)
        if found is not None and found.temp is None and proc is not None:
            class_archive.check_mapped(found, proc.pid)
    if quiet and not starts_jvm and not log_level and active is None:
        spark.sparkContext.setLogLevel("ERROR")     # a joined session keeps its level
    if log_level:
        spark.sparkContext.setLogLevel(log_level.upper())
    check_delta(spark)
    return spark


def _connect_session(app_name: str, remote: str, conf: Mapping[str, str] | None, quiet: bool):
    """The Spark Connect session ``$SPARK_REMOTE`` names. A ``local`` one is a server this
    process starts: it gets Delta's settings, :data:`LOCAL_DEFAULTS` and ``conf``, as a local
    classic session would, and a quiet run sends the server's console output to the log file, as
    for a local JVM. A remote server is joined as it is (its settings are its owner's)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote).appName(app_name)
    if remote.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # The server runs here: side files (plots) may go to its local file system.
        settings = {**LOCAL_DEFAULTS, **DELTA_CONF,
                    "spark.connect.copyFromLocalToFs.allowDestLocal": "true",
                    **{str(k): str(v) for k, v in (conf or {}).items()}}
        for key, value in settings.items():
            builder = builder.config(key, value)
        if "spark.jars" not in settings:
            from delta import configure_spark_with_delta_pip
            builder = configure_spark_with_delta_pip(builder)
    if quiet and remote.startswith("local"):
        _LOG["path"] = spark_log_path(app_name)
        spark = _get_quietly(builder, _LOG["path"])
    else:
        spark = builder.getOrCreate()
    check_delta(spark)
    return spark


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (a client of a Spark server)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


# What runs on a Spark Connect session (docs/python-api.md, *Spark Connect*).
ON_CONNECT = ("select_rows, selection, runs, the GIOSelector estimator and the commands run, "
              "embed, quantize, select and explode")


def check_classic(spark, what: str) -> None:
    """Raises InputError, before any work, when ``what`` (a command or function that still
    needs the classic session's SparkContext and JVM) is asked of a Spark Connect session."""
    if is_connect(spark):
        raise InputError(f"{what} needs a classic SparkSession (it uses the SparkContext or "
                         f"the JVM), and this one is a Spark Connect client. On Spark Connect "
                         f"gio-spark runs {ON_CONNECT}; run {what} on a classic session (a "
                         "single-user or dedicated cluster, or SparkSession.builder.master(...) "
                         "without remote(...) or SPARK_REMOTE).")


class _Carried:
    """A value the tasks get in their closure, where a Connect session has no broadcast."""

    def __init__(self, value):
        self.value = value

    def destroy(self) -> None:
        self.value = None


def share(spark, value):
    """``value`` for the tasks of ``spark``'s jobs (``.value`` there, ``.destroy()`` after): a
    broadcast on a classic session; on Spark Connect, which has none, the value travels with
    each task's closure (fine for the centres K-means shares: at most a few MB)."""
    return _Carried(value) if is_connect(spark) else spark.sparkContext.broadcast(value)


def row_counter(spark):
    """An accumulator the tasks add their rows to (a progress bar reads it), or None on Spark
    Connect, which has no accumulators (the bar then shows the elapsed time only)."""
    return None if is_connect(spark) else spark.sparkContext.accumulator(0)


def check_delta(spark) -> None:
    """Raises InputError when the session has no Delta Lake (no classes in its JVM; on Spark
    Connect, no ``delta`` data source on the server)."""
    if is_connect(spark):
        if "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", None) or ""):
            return                   # asked without a failing query (the server logs those)
        try:
            _ = spark.read.format("delta").load("/gio-spark-probe/does-not-exist").schema
        except Exception as err:   # noqa: BLE001 - Delta answers "not found"; no Delta, no source
            if "DATA_SOURCE_NOT_FOUND" in str(err):
                raise InputError("the Spark Connect server has no Delta Lake: start it with "
                                 "--packages io.delta:delta-spark_2.13:4.0.1 and the settings "
                                 "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension, "
                                 "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta."
                                 "catalog.DeltaCatalog.") from None
        return
    from py4j.java_gateway import JavaClass

    if not isinstance(spark._jvm.io.delta.tables.DeltaTable, JavaClass):
        raise InputError("this Spark session has no Delta Lake jars. With spark-submit, add "
                          "--properties-file conf/spark-defaults.conf (or --packages "
                          "io.delta:delta-spark_2.13:4.0.1).")
