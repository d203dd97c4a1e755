"""Failure points for crash tests: named places where a test can make the process die.

``GIO_SPARK_FAILPOINT=after:centroids`` makes the driver kill itself with SIGKILL right after the
``centroids`` commit (no cleanup, no ``finally``: as a machine failure would). The names are
``before:<table>`` and ``after:<table>`` around every Delta commit, and ``started:<stage>`` /
``done:<stage>`` after each stage-log record. Unset (always, outside tests), a failure point is one
dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "GIO_SPARK_FAILPOINT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
