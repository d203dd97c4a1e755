"""The stages as commands, and the whole pipeline in one Spark application:
(weigh ->) embed -> quantize -> select -> explode (-> train) (-> evaluate).

    gio-spark run --config conf/demo.yaml [--set select.k=7 ...]
    spark-submit --properties-file conf/spark-defaults.conf jobs/submit.py run --config ...

Inputs are read and checked before anything heavy runs (and before anything is written); each
stage reuses its committed output when its inputs and parameters are unchanged, so a re-run after
a failure resumes (see :mod:`jobs.state.reuse`).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

from pyspark.sql import functions as F

from jobs.common.log import log, took
from jobs.config import JobConfig, effective_embedding_column
from jobs.datamodels import actions as datamodels
from jobs.io.demo_data import TARGET_PACKAGES, demo_rows
from jobs.io.encoders import model_dimension
from jobs.io.sources import check_outputs, checked_model_dim
from jobs.stages.embed import side_embeddings
from jobs.stages.evaluate import evaluate_input_unless_done, run_evaluate
from jobs.stages.explode import run_explode
from jobs.stages.imnn import make_imnn_plan, run_imnn, write_example
from jobs.stages.quantize import run_quantize
from jobs.stages.select import run_select
from jobs.stages.train import run_train, train_input_unless_done
from jobs.stages.weigh import run_weigh, weigh_input_unless_done
from jobs.state import reuse, stagelog
from jobs.state.inputs import Inputs, prepare_inputs, read_only


def _embedder(spark, cfg: JobConfig, plan: reuse.Plan):
    """The embed stage for quantize: a side's embeddings, computed when not committed yet."""
    return lambda side: side_embeddings(spark, cfg, plan, side)


def _quantize(spark, cfg: JobConfig, plan: reuse.Plan, inputs: Inputs) -> str:
    return run_quantize(spark, cfg, plan, inputs, _embedder(spark, cfg, plan))


def run_pipeline(spark, cfg: JobConfig) -> dict:
    """Runs every stage; returns the explode summary (with the train stage's accuracies and
    the evaluate stage's results)."""
    t0 = time.perf_counter()
    plan = reuse.make_plan(spark, cfg)
    log(f"run {plan.run_id}: clustering {plan.clustering_id}, output {cfg.output.path}")
    tplan = reuse.make_train_plan(spark, cfg, plan, in_run=True) if cfg.train.enabled else None
    eplan = (reuse.make_evaluate_plan(spark, cfg, plan, in_run=True) if cfg.evaluate.enabled
             else None)
    check_train = check_evaluate = None
    if tplan is not None:            # its checks too come before anything is written
        def check_train(pool, dim):
            return train_input_unless_done(spark, cfg, tplan, pool, dim)
    if eplan is not None:
        def check_evaluate(pool, dim):
            return evaluate_input_unless_done(spark, cfg, eplan, pool, dim)
    check_weigh = None
    if plan.weigh is not None:
        def check_weigh(pending):
            return weigh_input_unless_done(spark, cfg, plan.weigh, pending, model_dimension)
    inputs = prepare_inputs(spark, cfg, plan, log, weigh=check_weigh, train=check_train,
                            evaluate=check_evaluate)
    if plan.weigh is not None:
        run_weigh(spark, cfg, plan.weigh, inputs.weigh)
    _quantize(spark, cfg, plan, inputs)
    run_select(spark, cfg, plan, inputs.reports())
    summary = run_explode(spark, cfg, plan, inputs.pool)
    if tplan is not None:
        summary["train"] = run_train(spark, cfg, plan, tplan, inputs.train)
    if eplan is not None:
        summary["evaluate"] = run_evaluate(spark, cfg, plan, eplan, inputs.evaluate,
                                           inputs.pool, inputs.target)
    log(f"run {plan.run_id}: done in {took(time.perf_counter() - t0)}")
    return summary


def train_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg) if cfg.train.needs_pool else None
    tplan = reuse.make_train_plan(spark, cfg, plan)
    check_outputs(spark, cfg, None)
    pool, dim = None, None
    if not stagelog.is_done(spark, cfg.output.path, "train", tplan.train_id, tplan.fingerprint):
        if plan is not None:
            pool = read_only(spark, cfg, plan, "pool", log)
            dim = pool.report.get("dim_min") if effective_embedding_column(pool.src) else None
            if dim is None:
                dim = checked_model_dim(cfg)
    inp = train_input_unless_done(spark, cfg, tplan, pool, dim)
    run_train(spark, cfg, plan, tplan, inp)


def evaluate_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg)
    eplan = reuse.make_evaluate_plan(spark, cfg, plan)
    pool = read_only(spark, cfg, plan, "pool", log)
    target = read_only(spark, cfg, plan, "target", log)
    check_outputs(spark, cfg, pool.schema)
    dim = pool.report.get("dim_min") if effective_embedding_column(pool.src) else None
    if dim is None:
        dim = checked_model_dim(cfg)
    inp = evaluate_input_unless_done(spark, cfg, eplan, pool, int(dim))
    run_evaluate(spark, cfg, plan, eplan, inp, pool, target)


def weigh_command(spark, cfg: JobConfig) -> None:
    wplan = reuse.make_weigh_plan(spark, cfg)
    check_outputs(spark, cfg, None)
    pending: list = []
    inp = weigh_input_unless_done(spark, cfg, wplan, pending, model_dimension)
    stagelog.record_checks(spark, cfg.output.path, pending)
    run_weigh(spark, cfg, wplan, inp)


def embed_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg)
    inputs = prepare_inputs(spark, cfg, plan, log)
    for side in (inputs.pool, inputs.target):
        side_embeddings(spark, cfg, plan, side)


def quantize_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg)
    _quantize(spark, cfg, plan, prepare_inputs(spark, cfg, plan, log))


def select_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg)
    check_outputs(spark, cfg, None)
    run_select(spark, cfg, plan)


def explode_command(spark, cfg: JobConfig) -> None:
    plan = reuse.make_plan(spark, cfg)
    pool = read_only(spark, cfg, plan, "pool", log)
    check_outputs(spark, cfg, pool.schema)
    run_explode(spark, cfg, plan, pool)


def imnn_command(spark, cfg: JobConfig) -> None:
    check_outputs(spark, cfg, None)
    run_imnn(spark, cfg, make_imnn_plan(spark, cfg))


def imnn_example_command(spark, cfg: JobConfig) -> None:
    check_outputs(spark, cfg, None)
    if write_example(spark, cfg.imnn.simulations):
        log(f"imnn-example: the tutorial's simulations -> {cfg.imnn.simulations}")
    else:
        log(f"imnn-example: reusing the tutorial's simulations in {cfg.imnn.simulations}")
    run_imnn(spark, cfg, make_imnn_plan(spark, cfg))


def _datamodels(name: str) -> Callable:
    """A datamodels command's body."""
    def body(spark, cfg: JobConfig) -> None:
        getattr(datamodels, name)(spark, cfg)
    return body


def run_command(spark, cfg: JobConfig) -> None:
    summary = run_pipeline(spark, cfg)
    if cfg.pool.format == "demo":
        print(demo_report(spark, summary), flush=True)


class Command(NamedTuple):
    help: str
    body: Callable
    precheck: Callable | None = None      # the command's own checks before the JVM starts


# The Spark commands of `gio-spark` and `jobs/submit.py`.
COMMANDS: dict[str, Command] = {
    "run": Command("the whole pipeline: (weigh,) embed, quantize, select, explode (, train, evaluate)",
                   run_command),
    "weigh": Command("the weigh stage alone: feature weights learnt by the DII", weigh_command),
    "embed": Command("the embed stage alone: sentence embeddings of pool and target",
                     embed_command),
    "quantize": Command("the quantize stage alone: K-means on pool and target",
                        quantize_command),
    "select": Command("the select stage alone: GIO on the centroids", select_command),
    "explode": Command("the explode stage alone: chosen clusters back to rows", explode_command),
    "train": Command("the train stage alone: a probe trained on the selected rows (GAF)",
                     train_command),
    "evaluate": Command("the evaluate stage alone: the selection against random, k-center, "
                        "nearest neighbours, GIO on rows (and DSIR) on held-out target rows",
                        evaluate_command),
    "imnn": Command("fit an IMNN's summaries from simulations in Delta (--local: stream them "
                    "through the driver)", imnn_command),
    "imnn-example": Command("write the IMNN tutorial's simulations to imnn.simulations, then "
                            "fit them", imnn_example_command),
}

# `gio-spark datamodels <action>` (and `jobs/submit.py datamodels <action>`).
DATAMODELS_ACTIONS: dict[str, Command] = {
    "init": Command("create the store (a Delta table, one row per model) from the spec",
                    _datamodels("init_command")),
    "work": Command("train every model not yet completed: main(index, logdir, **args) as one "
                    "Spark task per index", _datamodels("work_command"), datamodels.check_main),
    "regress": Command("fit a lasso path per target from the masks to the outputs",
                       _datamodels("regress_command")),
    "select": Command("select the training rows with the most positive weight on the targets",
                      _datamodels("select_command")),
    "export": Command("write the store as the source's .npy files", _datamodels(
        "export_command")),
    "example": Command("the digits example end to end: tables, workers, regression, selection",
                       _datamodels("example_command"), datamodels.check_main),
}


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
