"""The datamodels worker task: what runs on the executors for ``gio-spark datamodels work``.

Kept apart from :mod:`jobs.datamodels.actions` so that a Python worker imports only this, the spec and
the user's module (not Spark SQL, Delta or JAX): a worker starts in a fraction of a second.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import time
from functools import partial

from jobs.config.store_spec import check_output, parse_spec

_MAINS: dict = {}


class _Timeout(Exception):
    pass


def _call_with_timeout(fn, seconds):
    if not seconds:
        return fn()
    import signal

    def expire(signum, frame):
        raise _Timeout(f"took longer than datamodels.timeout_s = {seconds:g} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _failure(err: BaseException) -> str:
    """What the store's ``error`` column says of a failed index."""
    if isinstance(err, SystemExit):
        return (f"SystemExit({err.code!r}): main exited instead of returning its values. A "
                "script that reads its settings from the command line (fastargs, argparse) "
                "exits this way when they are missing or unknown: a Spark task has no command "
                "line of the script's: give them as datamodels.argv (the words its parser reads) or "
                "as keyword arguments (datamodels.args).")
    return f"{type(err).__name__}: {str(err).strip()}"[:2000]


def _with_argv(fn, argv: list, prog: str):
    """Calls ``fn`` with ``sys.argv`` set to ``[prog, *argv]`` (a script's own command-line
    parser reads it; no ``argv``: an empty command line, not the Python worker's), restoring
    it after."""
    import sys
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        return fn()
    finally:
        sys.argv = saved


def work_task(spec_json: str, main_import: str, logdir: str, args: dict, max_failures: int,
              timeout_s, indices, argv: list | None = None):
    """Runs ``main`` for each index of this task; yields one result tuple per index:
    ``(index, completed, attempt, started, finished, seconds, host, error, values)``. An error
    is raised (so Spark retries the task) unless this is the task's last attempt; then it is
    returned for the driver to record. ``argv``: ``sys.argv[1:]`` while ``main`` runs
    (``datamodels.argv``)."""
    from pyspark import TaskContext
    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    spec = parse_spec(json.loads(spec_json), "the spec")
    if main_import not in _MAINS:
        _MAINS[main_import] = importlib.import_module(main_import).main
    main = _MAINS[main_import]
    host = socket.gethostname()
    for index in indices:
        started = time.time()
        t0 = time.perf_counter()
        try:
            workdir = os.path.join(logdir, "workers", str(index))
            os.makedirs(workdir, exist_ok=True)
            call = partial(main, index=int(index), logdir=workdir, **args)
            out = _call_with_timeout(partial(_with_argv, call, argv or [], main_import),
                                     timeout_s)
            values = check_output(spec, int(index), out)
            yield (int(index), True, attempt, started, time.time(), time.perf_counter() - t0,
                   host, None, values)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - main may raise anything
            message = _failure(err)
            if attempt + 1 < max_failures:
                if isinstance(err, SystemExit):          # a task error Spark retries, not an
                    raise RuntimeError(message) from None  # exit of the Python worker
                raise
            yield (int(index), False, attempt, started, time.time(), time.perf_counter() - t0,
                   host, message, None)


