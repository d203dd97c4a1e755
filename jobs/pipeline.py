"""The registry of stages, and the whole pipeline in one Spark application:
(weigh ->) (embed ->) quantize -> select -> explode (-> train) (-> evaluate).

    gio-spark run --config conf/demo.yaml [--set select.k=7 ...]
    spark-submit --properties-file conf/spark-defaults.conf jobs/submit.py run --config ...

:data:`STAGES` lists every stage once, in the order ``gio-spark run`` runs those it includes;
the command line (:mod:`jobs.cli`), the run and the sides each command's config must name are
derived from it. Inputs are read and checked before anything heavy runs (and before anything
is written), the checks of every stage of the run included; each stage reuses its committed
output when its inputs and parameters are unchanged, so a re-run after a failure resumes (see
:mod:`jobs.stages.base`).
"""
from __future__ import annotations

import time

from pyspark.sql import functions as F

from jobs.common.log import log, took
from jobs.config import JobConfig
from jobs.datamodels import actions as datamodels
from jobs.io.demo_data import TARGET_PACKAGES, demo_rows
from jobs.io.session import check_classic
from jobs.stages import embed, evaluate, explode, imnn, quantize, select, train, weigh
from jobs.stages.base import Run, Stage, both_sides
from jobs.state import reuse, stagelog
from jobs.state.inputs import prepare_inputs

# Every stage, in the order `gio-spark run` runs the ones it includes.
STAGES: tuple[Stage, ...] = (weigh.STAGE, embed.STAGE, quantize.STAGE, select.STAGE,
                             explode.STAGE, train.STAGE, evaluate.STAGE, imnn.STAGE,
                             imnn.EXAMPLE)
REGISTRY: dict[str, Stage] = {s.name: s for s in STAGES}
# `gio-spark datamodels <action>`.
DATAMODELS_ACTIONS: dict[str, Stage] = {s.name: s for s in datamodels.ACTIONS}


def run_pipeline(spark, cfg: JobConfig) -> dict:
    """Runs every stage the config includes; returns the explode summary (with the train
    stage's accuracies and the evaluate stage's results)."""
    t0 = time.perf_counter()
    stages = [s for s in STAGES if s.in_run is not None and s.in_run(cfg)]
    for stage in stages:
        if not stage.connect:
            check_classic(spark, f"the {stage.name} stage (the config's {stage.section} section "
                          "is on)")
    plan = reuse.make_plan(spark, cfg)
    log(f"run {plan.run_id}: clustering {plan.clustering_id}, output {cfg.output.path}")
    run = Run(spark, cfg, plan, REGISTRY)
    for stage in stages:               # plans first: a plan can refuse (no selection to train on)
        if stage.plan is not None:
            run.plans[stage.name] = stage.plan(run)
    checks = {s.name: (lambda pending, pool, dim, s=s: s.check(run, pending, pool, dim))
              for s in stages if s.check is not None}
    # Quick stages' records go into the stage log together (runtime.stage_log_batch_s).
    with stagelog.batched(spark, cfg.output.path, batch_seconds(cfg)):
        run.inputs = prepare_inputs(spark, cfg, plan, log, checks)
        for stage in stages:
            run.results[stage.name] = stage.step(run)
    summary = dict(run.results["explode"])
    for name in ("train", "evaluate"):
        if name in run.results:
            summary[name] = run.results[name]
    log(f"run {plan.run_id}: done in {took(time.perf_counter() - t0)}")
    return summary


def batch_seconds(cfg: JobConfig) -> float:
    """How much finished work a run's stage-log records may be held for
    (``runtime.stage_log_batch_s``; see :func:`jobs.state.stagelog.batched`): none where an id
    is set by hand (``run_id``, ``weigh.run_id``, ``train.run_id``, ``evaluate.run_id``,
    ``imnn.run_id``). There runs of other settings share a key, and a ``done`` held while
    another run replaces the key's rows would hide the other run's ``started`` (which is written
    only over a ``done`` it sees) and, once committed, stand for rows that are not its own."""
    hand_set = (cfg.run_id, cfg.weigh.run_id, cfg.train.run_id, cfg.evaluate.run_id,
                cfg.imnn.run_id)
    return 0.0 if any(v is not None for v in hand_set) else float(cfg.runtime.stage_log_batch_s)


def run_command(spark, cfg: JobConfig, registry=None) -> None:
    summary = run_pipeline(spark, cfg)
    if cfg.pool.format == "demo":
        print(demo_report(spark, summary), flush=True)


RUN = Stage("run", "the whole pipeline: (weigh,) embed, quantize, select, explode (, train, "
            "evaluate)", None, both_sides, needs=tuple(s.name for s in STAGES if s.in_run),
            outputs=(), command=run_command, connect=True)
# The Spark commands of `gio-spark` and `jobs/submit.py`: the run, then each stage alone.
COMMANDS: dict[str, Stage] = {"run": RUN, **REGISTRY}


def demo_report(spark, summary: dict, examples: int = 8) -> str:
    """For the demo data: how much of the selection came from the target's packages."""
    selected = spark.read.format("delta").load(summary["table"]).where(
        F.col("run_id") == summary["run_id"])
    in_target = F.col("package").isin(*TARGET_PACKAGES)
    sel_share = selected.select(F.avg(in_target.cast("double"))).first()[0] or 0.0
    pool_rows = demo_rows("pool")
    base = sum(r["package"] in TARGET_PACKAGES for r in pool_rows) / len(pool_rows)
    top = (selected.groupBy("package").count().orderBy(F.desc("count"), "package").limit(8)
           .collect())
    lines = [f"demo: {summary['selected_rows']} of {summary['pool_rows']} docstrings selected from "
             f"{summary['clusters']} clusters; {100 * sel_share:.1f}% come from the target's "
             f"packages ({', '.join(TARGET_PACKAGES)}), against {100 * base:.1f}% of the pool",
             "  most selected packages: " + ", ".join(f"{r['package']} {r['count']}" for r in top),
             "  examples (first picks first):"]
    for r in selected.orderBy("rank", "doc_id").limit(examples).collect():
        lines_of = [t.strip() for t in r["text"].strip().splitlines()]
        first = next((t for t in lines_of if sum(c.isalpha() for c in t) >= 3), lines_of[0])[:90]
        lines.append(f"    [{r['rank']:>3}] {r['module']}: {first}")
    return "\n".join(lines)
