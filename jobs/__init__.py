"""jobs: gio-spark's entry points, its Python API and everything that does I/O (Spark, Delta,
files).

The Python API (:mod:`jobs.api`) is available here: ``jobs.select_rows``,
``jobs.learn_weights``, ``jobs.run_stage``, ``jobs.plan``, ``jobs.selection``, ``jobs.runs`` and
``jobs.InputError``, the exception bad input raises; the Spark ML estimators are in
:mod:`jobs.ml`. The API is loaded on first use, so that importing a module of this package (a
Spark task does) does not import Spark.

Spark's Python workers: on CPython 3.10 and 3.11, ``importlib.invalidate_caches()`` makes every
zip importer read its archive's directory again (CPython issue gh-103200, fixed in 3.12).
Spark's Python worker calls it before every task, and a worker's path holds ``pyspark.zip``, the
py4j zip and ``spark-core``'s jar, each with an importer per package imported from it: about
0.2 s per task on this project's machine (0.05 s with the fix), before any of the task's own
work. In a worker on those versions, :func:`_settle_worker` makes a zip importer read its
archive again only when the file's modification time or size changed since it last read it,
which is what the invalidation is for. It runs when a task first imports ``jobs`` in the
worker, so each worker's later tasks (Spark reuses its workers) gain; the driver and other
processes are left as they are.
"""
from __future__ import annotations

import importlib
import os
import sys

# The one place the version is written: setup.cfg reads it (``version = attr:``), and
# ``gio-spark --version`` prints it, also from the zip that spark-submit ships.
__version__ = "0.1.0"

_API = {"select_rows": "jobs.api", "learn_weights": "jobs.api", "run_stage": "jobs.api",
        "selection": "jobs.api", "runs": "jobs.api", "plan": "jobs.api",
        "InputError": "jobs.common.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")


_WORKER_MODULES = ("pyspark.daemon", "pyspark.worker")


def _in_python_worker() -> bool:
    """Whether this process is one of Spark's Python workers."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (any(name in sys.modules for name in _WORKER_MODULES)
            or getattr(main, "name", None) in _WORKER_MODULES)


def _settle_worker(force: bool = False) -> bool:
    """In a Spark Python worker on CPython 3.10 or 3.11 (or with ``force``), zip importers
    read their archive again on invalidation only if it changed. Returns whether the fix is in
    place (idempotent)."""
    if not force and (sys.version_info[:2] not in ((3, 10), (3, 11)) or not _in_python_worker()):
        return False
    import zipimport
    invalidate = zipimport.zipimporter.invalidate_caches
    if getattr(invalidate, "gio_spark", False):
        return True

    def invalidate_caches(self) -> None:
        try:
            st = os.stat(self.archive)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is not None and self.__dict__.get("_gio_spark_stamp") == stamp:
            return
        invalidate(self)
        self._gio_spark_stamp = stamp

    invalidate_caches.gio_spark = True          # type: ignore[attr-defined]
    invalidate_caches.__doc__ = invalidate.__doc__
    zipimport.zipimporter.invalidate_caches = invalidate_caches
    return True


_settle_worker()
