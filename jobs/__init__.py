"""jobs: gio-spark's entry points, its Python API and everything that does I/O (Spark, Delta,
files).

The Python API (:mod:`jobs.api`) is available here: ``jobs.select_rows``,
``jobs.learn_weights``, ``jobs.run_stage``, ``jobs.plan``, ``jobs.selection``, ``jobs.runs`` and
``jobs.InputError``, the exception bad input raises; the Spark ML estimators are in
:mod:`jobs.ml`. The API is loaded on first use, so that importing a module of this package (a
Spark task does) does not import Spark.
"""
from __future__ import annotations

import importlib

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
