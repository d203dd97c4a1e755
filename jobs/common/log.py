"""What a run prints: the project's own ``[gio-spark] ...`` lines on stdout, and one progress
bar at a time on stderr for the long steps (embedding, K-means, the selection's picks).

By default the terminal shows only these: Spark's own console output (its log, stage bars and
Ivy's report) goes to a log file (:mod:`jobs.io.session`), and the model libraries' bars are off.
``--verbose``, or ``spark.log_level`` in the config, turns the quiet off: Spark logs to the
terminal at that level with its stage bars, and the detail lines (every few picks) are printed.

Bars are drawn only on a terminal (tqdm's ``disable=None``) and not when verbose (Spark's own
stage bars are on then), so logs and captured output hold lines only; ``GIO_SPARK_PROGRESS=1``
draws them anyway (``0``: never).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

_state = {"verbose": False}

# The model libraries' own bars and notices, off unless verbose (set before they are imported;
# Python workers inherit them from the driver's environment, executors through executorEnv).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def log(message: str) -> None:
    print(f"[gio-spark] {message}", flush=True)


def set_verbose(on: bool) -> None:
    """Verbose: detail lines printed, the libraries' notices left on. Quiet (the default) sets
    :data:`QUIET_ENV` in this process's environment, keeping values the user set."""
    _state["verbose"] = bool(on)
    if not on:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)


def verbose() -> bool:
    return _state["verbose"]


def detail(message: str) -> None:
    """A line printed only when verbose (for example every few picks of the selection)."""
    if _state["verbose"]:
        log(message)


def took(seconds: float) -> str:
    """A duration as people read it: 0.4 s, 12.3 s, 2 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _bar_disable() -> bool | None:
    forced = os.environ.get("GIO_SPARK_PROGRESS")
    if forced is not None:
        return forced.strip() in ("0", "", "false", "no")
    if _state["verbose"]:
        return True                                # Spark draws its own stage bars then
    return None                                    # tqdm: draw only on a terminal


def bar(desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on stderr for ``desc``; cleared when closed (the stage's line follows)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"[gio-spark] {desc}", unit=unit, leave=False,
                file=sys.stderr, disable=_bar_disable(), dynamic_ncols=True, mininterval=0.5)


def _caught_up(sc, timeout_ms: int = 5000) -> None:
    """Wait until Spark's listeners have taken in the events already posted (job ends among
    them), so that the status tracker counts the jobs that have finished. Spark posts job events
    to its listeners asynchronously, and on a busy machine the tracker lags the work. Best
    effort: the bar must never fail."""
    try:
        sc._jsc.sc().listenerBus().waitUntilEmpty(timeout_ms)
    except Exception:  # noqa: BLE001 - a timeout or a changed internal API only costs the count
        pass


@contextmanager
def spark_bar(spark, desc: str, total: int | None = None, unit: str = " jobs",
              done: Callable[[], int] | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """A bar for the Spark work inside the block, refreshed every ``poll_s`` seconds.

    ``done()`` says how far the work is (for example an accumulator the tasks add their rows
    to: it moves as tasks finish, and rows/s and the ETA follow); without it the bar counts the
    Spark jobs the block has finished (K-means runs one job per iteration), found through a job
    group set for the block. Nothing is polled when the bar is not drawn.
    """
    progress = bar(desc, total=total, unit=unit)
    connect = type(spark).__module__.startswith("pyspark.sql.connect")
    if progress.disable or (connect and done is None):
        # A Spark Connect client sees no jobs (no status tracker): its bar shows the time only.
        try:
            yield
        finally:
            progress.close()
        return
    sc = None if connect else spark.sparkContext
    group = f"gio-spark-{os.getpid()}-{time.monotonic_ns()}"
    if done is None:
        sc.setJobGroup(group, desc)
    stop = threading.Event()

    tracker = None if sc is None else sc.statusTracker()

    def refresh() -> None:
        try:
            if done is not None:
                n = done()
            else:
                jobs = (tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group))
                n = sum(j is not None and j.status == "SUCCEEDED" for j in jobs)
            n = n if total is None else min(n, total)
            if n > progress.n:
                progress.update(n - progress.n)
        except Exception:  # noqa: BLE001 - a bar must never fail a run; the next poll retries
            pass

    def poll() -> None:
        while not stop.wait(poll_s):
            refresh()

    thread = threading.Thread(target=poll, name="gio-spark-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        if done is None:
            _caught_up(sc)
        refresh()  # the last count, so a bar left behind by a slow poll still ends where the work did
        progress.refresh()  # drawn even inside tqdm's mininterval, before the bar is cleared
        if done is None:
            sc._jsc.clearJobGroup()
        progress.close()
