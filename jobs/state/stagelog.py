"""The stage log: which stage finished which key with which fingerprint.

``stages`` is an append-only Delta table. A stage appends ``done`` after its last
output, with its key and fingerprint, and ``started`` before its first output when the latest
record for its key is a ``done`` (of other settings under the same run id) that its writes would
make untrue. A stage is reused only when the *latest* record for its key is ``done`` with the same
fingerprint. Outputs are keyed: the
embeddings by ``embeddings_id``, centroids and assignments by ``clustering_id`` (both derived from
fingerprints, so runs with other inputs never share rows), selections by ``run_id``. Hence:

* a run killed anywhere leaves either a ``done`` record whose outputs are complete, or, as the
  latest for the stage's key, a ``started`` record or none, which makes the next run recompute
  that stage;
* a run with other parameters writes other keys and cannot make another config's record stale;
* two runs at once never mix rows: each writes its own keys, and identical runs write identical
  rows (the second replaces the first's in one transaction).

Inside :func:`batched` (``gio-spark run`` and the Python API's runs), ``done`` records are held
by the run's thread and appended together, so that a run of quick stages makes one commit to the log
instead of one a stage: a record is held while the work finished since the log's last commit
took less than ``runtime.stage_log_batch_s``, and what is held is appended with the next record
that is not, with a ``started`` record, and when the run ends (also when it fails). The thread
that holds records reads them as if they were committed; other threads and processes do not
see them until they are, and compute those stages again if they need them meanwhile (with the
same rows, as the keys come from the fingerprints). A run killed while records are held leaves
outputs without their ``done``: the next run computes those stages again (at most
``stage_log_batch_s`` of work) and replaces their keyed rows, as above. A run with an id set by
hand holds nothing (see :func:`jobs.pipeline.batch_seconds`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from typing import Iterator

from pyspark.sql import functions as F

from jobs.common import faults
from jobs.common.log import log
from jobs.io import tables


# The stage log as this process last read it: path -> (Delta version, records). A local table's
# version is the newest commit file in its _delta_log (tables.local_version), so a record that
# any process appended since makes the next look read the table again; this process's own
# appends are added in place when no other commit came between (or when they are the first rows
# of a log just created). Remote tables are read through Spark every time.
_LOG: dict = {}
_FIELDS = ("stage", "key", "fingerprint", "status", "at_ns", "detail")


# Records held for the stage log by the runs of this thread (see :func:`batched`).
_HELD = threading.local()


class _Batch:
    def __init__(self, output: str, within_s: float):
        self.output, self.within_s = output, within_s
        self.since = time.monotonic()           # the log's last commit, or the batch's start
        self.records: list = []                 # (stage, key, fp, status, detail, at_ns)


def _batch(output: str) -> "_Batch | None":
    batch = getattr(_HELD, "batch", None)
    return batch if batch is not None and batch.output == output else None


@contextlib.contextmanager
def batched(spark, output: str, within_s: float) -> Iterator[None]:
    """Holds the ``done`` records of the stages run inside the block (in this thread, for
    ``output``) and appends them together: each is held while the work finished since the
    log's last commit took less than ``within_s`` seconds, and whatever is held is appended in
    one commit with the next record that is not, and when the block ends, whether it ends well
    or with an error (then a failure to append is logged, not raised over the error). 0: every
    record is appended at once."""
    outer = getattr(_HELD, "batch", None)
    if _batch(output) is not None:            # inside a batch for this output already: its own
        yield
        return
    batch = _Batch(output, float(within_s))
    _HELD.batch = batch
    try:
        yield
    except BaseException:
        held = len(batch.records)
        try:
            _flush(spark, batch)
        except Exception as e:  # noqa: BLE001 - the run's own error is the one to raise
            stages = "1 finished stage" if held == 1 else f"{held} finished stages"
            log(f"warning: the stage log's records of {stages} could not be written "
                f"({type(e).__name__}); the next run computes them again.")
        raise
    else:
        _flush(spark, batch)
    finally:
        _HELD.batch = outer


def _flush(spark, batch: _Batch, more: list | None = None) -> None:
    """Appends the held records, with the times they were recorded at, then ``more``, in one
    commit."""
    held, batch.records = batch.records, []
    now_ns = time.time_ns()
    try:
        record_all(spark, batch.output,
                   held + [(*r, now_ns + i) for i, r in enumerate(more or [])])
    except Exception:
        batch.records = held + batch.records   # still held: the block's end tries once more
        raise
    batch.since = time.monotonic()


def _held(output: str, stage: str, key: str) -> list:
    batch = _batch(output)
    if batch is None:
        return []
    return [dict(zip(_FIELDS, (st, k, fp, status, at_ns, tables.detail_json(detail)),
                     strict=True))
            for st, k, fp, status, detail, at_ns in batch.records if st == stage and k == key]


def _read_log(spark, output: str) -> list:
    rows = tables.read_table(spark, output, "stages").select(*_FIELDS).collect()
    return [r.asDict() for r in rows]


def _records(spark, output: str, stage: str, key: str) -> list:
    path = tables.table_path(output, "stages")
    version = tables.local_version(path)
    if version == (-1,) or not tables.path_exists(path):
        return []
    if version is None:                     # remote: ask Delta each time
        if not tables.exists(spark, path):
            return []
        rows = (tables.read_table(spark, output, "stages")
                .where((F.col("stage") == stage) & (F.col("key") == key))
                .select(*_FIELDS).collect())
        return [r.asDict() for r in rows]
    cached = _LOG.get(path)
    if cached is None or cached[0] != version:
        if not tables.exists(spark, path):
            return []
        cached = (version, _read_log(spark, output))
        _LOG[path] = cached
    return [r for r in cached[1] if r["stage"] == stage and r["key"] == key]


def latest(spark, output: str, stage: str, key: str) -> dict | None:
    """The latest record of ``stage`` for ``key`` (``stage, key, fingerprint, status, at_ns,
    detail``), or None; records this thread holds (see :func:`batched`) count as committed."""
    rows = _records(spark, output, stage, key) + _held(output, stage, key)
    if not rows:
        return None
    return max(rows, key=lambda r: (r["at_ns"], r["status"]))


def is_done(spark, output: str, stage: str, key: str, fp: str) -> bool:
    """Whether the latest record of (stage, key) says it finished with fingerprint ``fp``."""
    last = latest(spark, output, stage, key)
    return last is not None and last["status"] == "done" and last["fingerprint"] == fp


def record(spark, output: str, stage: str, key: str, fp: str, status: str,
           detail: dict | None = None) -> None:
    """Appends one record to the stage log (a blind append: concurrent runs never conflict);
    inside :func:`batched`, a ``done`` record may be held for a later commit."""
    _record(spark, output, [(stage, key, fp, status, detail)])


def _record(spark, output: str, records: list) -> None:
    batch = _batch(output)
    if not records:
        return
    if batch is None:
        record_all(spark, output, records)
    elif (all(r[3] == "done" for r in records)
          and time.monotonic() - batch.since < batch.within_s):
        now_ns = time.time_ns()
        batch.records += [(*r, now_ns + i) for i, r in enumerate(records)]
    else:
        _flush(spark, batch, records)


def record_all(spark, output: str, records: list) -> None:
    """Appends ``(stage, key, fingerprint, status, detail)`` records in one commit, each
    recorded now (in their order) or at the ``at_ns`` a sixth item gives."""
    if not records:
        return
    now_ns = time.time_ns()
    stamped = [r if len(r) == 6 else (*r, now_ns + i) for i, r in enumerate(records)]
    rows = [(stage, key, fp, status, dt.datetime.fromtimestamp(at_ns / 1e9), at_ns,
             tables.detail_json(detail))
            for stage, key, fp, status, detail, at_ns in stamped]
    path = tables.table_path(output, "stages")
    before = tables.local_version(path)
    mine = tables.append(spark, spark.createDataFrame(rows, tables.STAGES).coalesce(1), output,
                         "stages", local=True)
    cached = _LOG.get(path)
    added = [dict(zip(_FIELDS, (r[0], r[1], r[2], r[3], r[5], r[6]), strict=True)) for r in rows]
    if mine is not None and cached is not None and before is not None and cached[0] == before:
        _LOG[path] = (mine, cached[1] + added)
    elif mine is not None and (mine[0] == 0 or mine[0] == 1 and tables.created_empty(path)):
        # A new log: this append created it, or follows a creation without rows.
        _LOG[path] = (mine, added)
    for stage, _, _, status, _, _ in stamped:
        faults.point(f"{status}:{stage}")


def record_checks(spark, output: str, checks: list) -> None:
    """Records finished input checks (``validate_pool``, ``validate_weigh``...: their scans,
    reused while the source is unchanged) as ``(name, key, fingerprint, report)``, in one commit.
    Stages record through :func:`jobs.stages.base.run_stage`."""
    _record(spark, output, [(name, key, fp, "done", report) for name, key, fp, report in checks])


def begin(spark, output: str, stage: str, key: str, fp: str) -> None:
    """Marks a stage as running before its first output where that matters: when the latest
    record for its key is ``done`` (with another fingerprint; with the same one the stage is
    reused, never re-run), a ``started`` record makes sure that a run killed after it changed
    the outputs does not leave that ``done`` as the latest. With no record for the key, or a
    ``started`` one, the key is not reusable already, and nothing is written (one commit less
    per stage on a new key)."""
    last = latest(spark, output, stage, key)
    if last is not None and last["status"] == "done":
        record(spark, output, stage, key, fp, "started")
    else:
        faults.point(f"started:{stage}")
