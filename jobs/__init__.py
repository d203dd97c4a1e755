"""jobs: gio-spark's entry points, its Python API and everything that does I/O (Spark, Delta,
files).

The Python API (:mod:`jobs.api`) is available here: ``jobs.select_rows``,
``jobs.learn_weights``, ``jobs.run_stage``, ``jobs.plan``, ``jobs.selection``, ``jobs.runs`` and
``jobs.InputError``, the exception bad input raises; the Spark ML estimators are in
:mod:`jobs.ml`. The API is loaded on first use, so that importing a module of this package (a
Spark task does) does not import Spark.

Spark's Python workers: on CPython 3.10 to 3.12, ``importlib.invalidate_caches()`` makes every
zip importer read its archive's directory again (CPython issue gh-103200; 3.13 reads it again
only when next used). Spark's Python worker calls it before every task, and a worker's path
holds ``pyspark.zip``, the py4j zip and ``spark-core``'s jar, each with an importer per package
imported from it: about 0.2 s per task on this project's machine, before any of the task's own
work (32 empty tasks on ``local[2]``: 3.8 s, 0.9 s with the fix). In a worker whose zip
importers read again on invalidation, :func:`_settle_worker` makes one read its archive again
only when the file changed (its size, times or inode), which is what the invalidation is for.
It runs when a task first imports ``jobs`` in the worker; that worker's later tasks (Spark
reuses its workers) gain. The driver and other processes are left as they are.
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
    """In a Spark Python worker (or with ``force``) whose zip importers read their archive
    again on every invalidation (CPython 3.10 to 3.12), a zip importer reads it again only if
    the file changed. Returns whether the fix is in place (idempotent)."""
    import zipimport
    importer = zipimport.zipimporter
    eager = hasattr(importer, "invalidate_caches") and not hasattr(importer, "_get_files")
    if not eager or not (force or _in_python_worker()):
        return False
    invalidate = importer.invalidate_caches
    if getattr(invalidate, "gio_spark", False):
        return True

    def invalidate_caches(self) -> None:
        try:
            st = os.stat(self.archive)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            stamp = None
        if stamp is not None and self.__dict__.get("_gio_spark_stamp") == stamp:
            return
        invalidate(self)
        # kept only after a read that worked: a failed one is tried again next time
        read = self.archive in zipimport._zip_directory_cache
        self._gio_spark_stamp = stamp if read else None

    invalidate_caches.gio_spark = True          # type: ignore[attr-defined]
    invalidate_caches.__doc__ = invalidate.__doc__
    importer.invalidate_caches = invalidate_caches
    return True


_settle_worker()
