"""The Stage protocol: what every stage declares, and the one lifecycle that runs them.

A stage is a module of :mod:`jobs.stages` (or :mod:`jobs.datamodels`) that declares a
:class:`Stage` (its name, config section, the sides it reads, the stages it needs, its output
tables, its command) and does its work through :func:`run_stage`, which owns the lifecycle:

1. *is it done?* The stage log's latest record for the stage's key says ``done`` with the same
   fingerprint: the committed outputs are reused (``reused()``), nothing is written.
2. *compute.* ``compute()`` reads, checks and computes what the stage writes; it writes
   nothing of its own (it may return lazy DataFrames, which Spark evaluates as they are
   written; a stage it needs may commit its outputs first, through that stage's lifecycle).
3. *begin.* A ``started`` record, only where the latest record is a ``done`` that the writes
   would make untrue (see :mod:`jobs.state.stagelog`).
4. *commit.* ``commit(computed)`` writes each output table in one Delta transaction (with the
   failure points around each commit, see :mod:`jobs.common.faults`) and returns the stage's
   result and the detail for the record. ``release(computed)``, where given, then frees what
   ``compute`` cached, also when begin or commit fails.
5. *record.* ``done`` with the fingerprint and the detail, after the last output.

A run killed anywhere in 2 to 4 leaves no ``done`` for the new fingerprint, so the next run computes
the stage again and replaces its keyed rows: the outputs equal a clean run's.

Stages name what they need of other stages in ``needs`` and get it through the registry (the
needed stage's ``provide``, which gives its output, computing it only when it is not committed
yet), never by importing another stage. :mod:`jobs.pipeline` holds the registry, in the order
``gio-spark run`` runs the stages; the command line, the run's order and the sides each
command's config must name are derived from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from jobs.common.log import log
from jobs.config import JobConfig
from jobs.state import reuse, stagelog
from jobs.state.inputs import Inputs

T = TypeVar("T")
C = TypeVar("C")


@dataclass
class Run:
    """One ``gio-spark run`` as its stages see it: the session, the config, the run's plan, the
    registry (for what a stage ``needs``), the stages' own plans, the checked inputs and the
    results of the stages run so far."""
    spark: Any
    cfg: JobConfig
    plan: reuse.Plan
    registry: Mapping[str, "Stage"]
    plans: dict = field(default_factory=dict)        # stage name -> its own plan
    inputs: Inputs | None = None
    results: dict = field(default_factory=dict)      # stage name -> what it returned

    def need(self, name: str) -> "Stage":
        """A stage this one declared in ``needs``."""
        return self.registry[name]


@dataclass(frozen=True)
class Stage:
    """What a stage declares.

    Attributes:
      name: its command (``gio-spark <name>``) and its name in the stage log.
      help: one line for ``gio-spark --help``.
      section: the config section that holds its options (None: none of its own).
      reads: ``reads(cfg)`` -> the input sides (``pool``, ``target``) its command reads.
      needs: the stages whose outputs it uses (given through the registry, never imported).
      outputs: the tables it writes under ``output.path``, in the order it writes them (see
        :data:`jobs.io.tables.KEYS`).
      command: ``command(spark, cfg, registry)`` runs the stage alone (``gio-spark <name>``).
      requires: the message when its command runs on a config whose ``section`` is off (None:
        the stage needs no section of its own).
      in_run: ``in_run(cfg)`` -> whether ``gio-spark run`` runs it (None: never).
      plan: ``plan(run)`` -> its own plan inside a run, made before any check (None: the run's
        plan is enough).
      check: ``check(run, pending, pool, dim)`` -> its checked input inside a run, before
        anything is written (see :data:`jobs.state.inputs.StageCheck`).
      step: ``step(run)`` -> its result inside a run (``run.results[name]``).
      provide: what a stage that needs this one calls for its output (for embed:
        ``provide(spark, cfg, plan, side)`` -> the side's embeddings, computed if not yet).
      log_names: its names in the stage log, where not ``name`` (embed: one per side).
      precheck: ``precheck(cfg)``: the command's own checks before the JVM starts.
      connect: whether it runs on a Spark Connect session (it uses no SparkContext, JVM or
        ``DeltaTable`` call); a stage that does not is refused there in one line, before work.
    """
    name: str
    help: str
    section: str | None
    reads: Callable[[JobConfig], tuple[str, ...]]
    needs: tuple[str, ...]
    outputs: tuple[str, ...]
    command: Callable[..., None]
    requires: str | None = None
    in_run: Callable[[JobConfig], bool] | None = None
    plan: Callable[[Run], object] | None = None
    check: Callable[..., object] | None = None
    step: Callable[[Run], object] | None = None
    provide: Callable[..., object] | None = None
    log_names: tuple[str, ...] = ()
    precheck: Callable[[JobConfig], None] | None = None
    connect: bool = False

    @property
    def logged_as(self) -> tuple[str, ...]:
        """The names its records carry in the stage log."""
        return self.log_names or (self.name,)

    @property
    def required(self) -> tuple[str, str] | None:
        """``(section, message)`` for :func:`jobs.config.load_config`'s ``requires``."""
        return (self.section, self.requires) if self.requires and self.section else None


def both_sides(cfg: JobConfig) -> tuple[str, ...]:
    return ("pool", "target")


def pool_only(cfg: JobConfig) -> tuple[str, ...]:
    return ("pool",)


def no_sides(cfg: JobConfig) -> tuple[str, ...]:
    return ()


def run_stage(spark, output: str, name: str, key: str, fingerprint: str,
              compute: Callable[[], C], commit: Callable[[C], tuple[T, dict | None]],
              reused: Callable[[], T], lost: Callable[[dict], str | None] | None = None,
              release: Callable[[C], None] | None = None) -> T:
    """Runs one stage's lifecycle (see the module's docstring); returns ``commit``'s result, or
    ``reused()``'s when the stage is done already. This is the only caller of the stage log's
    ``begin`` and ``record``.

    Args:
      output: ``output.path``, where the stage log and the stage's tables are.
      name: the stage's name in the stage log; ``key`` and ``fingerprint``: its output's key (a
        run id, a clustering id, ...) and what determines it.
      compute: ``compute() -> computed``: reads, checks and computes; writes nothing.
      commit: ``commit(computed) -> (result, detail)``: writes the stage's tables.
      reused: what the stage returns when its committed outputs are reused.
      lost: ``lost(detail) -> problem or None``, asked before a reuse: what is missing of the
        outputs the done record (its ``detail``) stands for. A problem (a table changed by
        hand, rows deleted) makes the stage compute them again, with a warning, rather than
        hand on what is not there.
      release: ``release(computed)``: frees what ``compute`` holds (cached DataFrames), after
        ``commit`` or when ``begin`` or ``commit`` fails.

    Example::

        def compute():
            return select_clusters()               # reads and checks: nothing written
        def commit(rows):
            tables.replace_key(spark, rows, output, "selection", run_id)
            return run_id, {"rows": rows.count()}

        run_stage(spark, output, "select", run_id, fp, compute, commit, reused=lambda: run_id)
    """
    if stagelog.is_done(spark, output, name, key, fingerprint):
        if lost is None:
            return reused()
        last = stagelog.latest(spark, output, name, key)
        problem = lost(json.loads(last["detail"]) if last and last["detail"] else {})
        if problem is None:
            return reused()
        log(f"warning: {name}: {key} is recorded as done, but {problem}; computing it again.")
    computed = compute()
    try:
        stagelog.begin(spark, output, name, key, fingerprint)
        result, detail = commit(computed)
    finally:
        if release is not None:
            release(computed)
    stagelog.record(spark, output, name, key, fingerprint, "done", detail)
    return result
