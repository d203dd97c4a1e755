"""The Stage protocol: what every stage declares, and the one lifecycle that runs them.

A stage is a module of :mod:`jobs.stages` (or :mod:`jobs.datamodels`) that declares a
:class:`Stage` (its name, config section, the sides it reads, the stages it needs, its output
tables, its command) and does its work through :func:`run_stage`, which owns the lifecycle:

1. *is it done?* The stage log's latest record for the stage's key says ``done`` with the same
   fingerprint: the committed outputs are reused (``reused()``), nothing is written.
2. *work.* ``work(begin)`` reads and checks what it needs (writing nothing), calls ``begin()``
   before its first write, writes each output table in one Delta transaction (with the failure
   points around each commit, see :mod:`jobs.common.faults`), and returns its result and the
   detail for the record. ``begin`` writes a ``started`` record only where the latest record is
   a ``done`` its writes would make untrue (see :mod:`jobs.state.stagelog`).
3. *record.* ``done`` with the fingerprint and the detail, after the last output.

A run killed anywhere in 2 leaves no ``done`` for the new fingerprint, so the next run computes
the stage again and replaces its keyed rows: the outputs equal a clean run's.

Stages name what they need of other stages in ``needs`` and get it as an argument (a function
that gives the needed stage's output, computing it only when it is not committed yet), never by
importing another stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from jobs.config import JobConfig
from jobs.state import stagelog

T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    """What a stage declares.

    Attributes:
      name: its command (``gio-spark <name>``) and its name in the stage log.
      help: one line for ``gio-spark --help``.
      section: the config section that holds its options (None: none of its own).
      reads: ``reads(cfg)`` -> the input sides (``pool``, ``target``) the command reads.
      needs: the stages whose outputs it uses.
      outputs: the tables it writes under ``output.path`` (see :data:`jobs.io.tables.KEYS`).
      command: ``command(spark, cfg)`` runs the stage alone (what ``gio-spark <name>`` runs).
      in_run: ``in_run(cfg)`` -> whether ``gio-spark run`` runs it (None: never; its own
        command only).
    """
    name: str
    help: str
    section: str | None
    reads: Callable[[JobConfig], tuple[str, ...]]
    needs: tuple[str, ...]
    outputs: tuple[str, ...]
    command: Callable[..., None]
    in_run: Callable[[JobConfig], bool] | None = None
    log_names: tuple[str, ...] = field(default=())     # stage-log names, when not ``name``

    @property
    def logged_as(self) -> tuple[str, ...]:
        """The names its records carry in the stage log."""
        return self.log_names or (self.name,)


def both_sides(cfg: JobConfig) -> tuple[str, ...]:
    return ("pool", "target")


def no_sides(cfg: JobConfig) -> tuple[str, ...]:
    return ()


def run_stage(spark, output: str, name: str, key: str, fingerprint: str,
              work: Callable[[Callable[[], None]], tuple[T, dict | None]],
              reused: Callable[[], T]) -> T:
    """Runs one stage's lifecycle (see the module's docstring); returns ``work``'s result, or
    ``reused()``'s when the stage is done already.

    Args:
      output: ``output.path``, where the stage log and the stage's tables are.
      name: the stage's name in the stage log; ``key`` and ``fingerprint``: its output's key (a
        run id, a clustering id, ...) and what determines it.
      work: ``work(begin) -> (result, detail)``; calls ``begin()`` once, before its first write.
      reused: what the stage returns when its committed outputs are reused.

    Example::

        def work(begin):
            rows = compute()                       # reads and checks: nothing written yet
            begin()
            tables.replace_key(spark, rows, output, "selection", run_id)
            return run_id, {"rows": rows.count()}

        run_stage(spark, output, "select", run_id, fp, work, reused=lambda: run_id)
    """
    if stagelog.is_done(spark, output, name, key, fingerprint):
        return reused()
    began: list = []

    def begin() -> None:
        if began:
            raise RuntimeError(f"stage {name} began twice")
        stagelog.begin(spark, output, name, key, fingerprint)
        began.append(True)

    result, detail = work(begin)
    if not began:
        raise RuntimeError(f"stage {name} wrote its record without beginning")
    stagelog.record(spark, output, name, key, fingerprint, "done", detail)
    return result
