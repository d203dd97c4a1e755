"""Failure points for crash tests: named places where a test can make the process die or wait.

``GIO_SPARK_FAILPOINT=after:centroids`` makes the driver kill itself with SIGKILL right after the
``centroids`` commit (no cleanup, no ``finally``: as a machine failure would). The names are
``before:<table>`` and ``after:<table>`` around every Delta commit, ``started:<stage>`` /
``done:<stage>`` after each stage-log record, and ``cached:<side>`` once quantize has cached a
side's K-means input on the executors; ``row_step:part`` at the start of each Spark task of the
row step and ``imnn:barrier`` at the start of each task of the IMNN fit's barrier job, in the
Python worker: the worker dies, not the driver (a worker sees the variable
where its JVM's environment or the SparkContext's ``environment`` holds it).

``GIO_SPARK_FAILPOINT=pause:<name>`` instead makes the driver wait there: it creates the file
``$GIO_SPARK_FAILPOINT_DIR/paused`` and goes on once ``$GIO_SPARK_FAILPOINT_DIR/resume`` exists
(at most ten minutes), so a test can break something else (kill a worker) at a known moment.

``GIO_SPARK_FAILPOINT=raise:<name>`` raises :class:`InjectedFailure` there, which no handler of
gio-spark's catches and nothing cleans up after: the tables are left as a kill there leaves them,
without the cost of a new process. Where a stage makes several commits at once
(``jobs.io.tables.at_once``), a ``raise:`` or ``pause:`` point stops the one write it is in; the
others end first, where a kill would have stopped them too.

Unset (always, outside tests), a failure point is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import time

ENV = "GIO_SPARK_FAILPOINT"
DIR_ENV = "GIO_SPARK_FAILPOINT_DIR"
PAUSE_LIMIT_S = 600


class InjectedFailure(BaseException):
    """Raised at a ``raise:`` failure point (a BaseException: ``except Exception`` misses it)."""


def point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if wanted is None:
        return
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if wanted == f"pause:{name}":
        folder = os.environ.get(DIR_ENV, ".")
        open(os.path.join(folder, "paused"), "w").close()
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not os.path.exists(os.path.join(folder, "resume")) and time.monotonic() < deadline:
            time.sleep(0.2)
    if wanted == f"raise:{name}":
        raise InjectedFailure(name)
