"""A command's checked inputs: both sides read and scanned (or their earlier scan reused, by the
stage log), the dimensions, the model, the target's size, the weights and the output tables
checked, and the checks of the stages that run later in the command, all before anything heavy
runs or anything is written."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from pyspark.sql import types as T

from jobs.common.errors import InputError
from jobs.common.frames import EMBEDDING, ROW_ID
from jobs.config import JobConfig, effective_embedding_column
from jobs.io.encoders import embedded_rows
from jobs.io.sources import (Side, check_outputs, checked_model_dim, clean_side, enforce,
                             own_columns, read_side, scan_side)
from jobs.state import reuse, stagelog
from jobs.state.stored import weights_dim


# A stage's checks inside a command: ``check(pending, pool, dim)`` -> its checked input (None
# when the stage is done already); records of the checks it made go into ``pending``.
StageCheck = Callable[[list, Side, int], object]


@dataclass
class Inputs:
    pool: Side
    target: Side
    dim: int
    checked: dict = field(default_factory=dict)   # stage name -> what its check returned

    def reports(self) -> dict:
        return {"pool": self.pool.report, "target": self.target.report}


def _side(spark, cfg: JobConfig, plan: reuse.Plan, side: str, log, pending: list) -> Side:
    src = getattr(cfg, side)
    df = read_side(spark, side, src)
    key = plan.validate[side][:reuse.ID_CHARS]
    last = stagelog.latest(spark, cfg.output.path, f"validate_{side}", key)
    if last is not None and last["status"] == "done" and last["fingerprint"] == plan.validate[side]:
        report = json.loads(last["detail"])
        log(f"{side}: {report['rows']} rows, checked on an earlier run")
    else:
        report = scan_side(df, side, src, distinct=side == "target")
        enforce(df, side, src, report, lambda m: log(f"warning: {m}"))
        pending.append((f"validate_{side}", key, plan.validate[side], report))
        log(f"{side}: {report['rows']} rows checked, {report['kept']} used")
    schema = T.StructType([df.schema[c] for c in own_columns(df)])
    return Side(side, src, clean_side(df, src, report), schema, report)


def read_only(spark, cfg: JobConfig, plan: reuse.Plan | None, side: str, log) -> Side:
    """One side, checked (or its earlier check reused); writes nothing but the check's record.
    ``plan`` None: the side's keys are computed here (a command that reads only this side)."""
    if plan is None:
        identity = reuse.source_identity(spark, getattr(cfg, side), side)
        plan = reuse.SidePlan({side: reuse.fingerprint("validate", identity)})
    pending: list = []
    out = _side(spark, cfg, plan, side, log, pending)
    stagelog.record_checks(spark, cfg.output.path, pending)
    return out


def checked_rows(df, key: str, src, log, extra: dict | None = None):
    """The usable rows of a source other than the two sides (``evaluate.heldout``), scanned,
    its ``bad_rows`` policy enforced and cleaned as a side's are: ``(rows, report)``.
    ``extra``: more conditions that make a row unusable, by name (see
    :func:`jobs.io.sources.scan_side`)."""
    report = scan_side(df, key, src, extra)
    enforce(df, key, src, report, lambda m: log(f"warning: {m}"), extra)
    return clean_side(df, src, report, extra), report


def heldout_vectors(spark, cfg: JobConfig, log):
    """The evaluate section's held-out rows as ``(row_id, embedding)``: their vectors, or their
    texts embedded with the embed section's model (computed when read; not stored)."""
    src = cfg.evaluate.heldout
    rows, _ = checked_rows(read_side(spark, "evaluate.heldout", src), "evaluate.heldout", src,
                           log)
    if effective_embedding_column(src):
        return rows.select(ROW_ID, EMBEDDING)
    text = src.text_column
    return embedded_rows(spark, cfg, rows.select(ROW_ID, text), text).select(ROW_ID, EMBEDDING)


def check_domains(cfg: JobConfig, domains: dict) -> None:
    """The target's domains (``{domain: {"rows", "distinct_values"}}``, from its check) against
    ``select.k`` and ``select.shares``.

    Raises:
      InputError: a domain too small for the estimator, a domain without a share, a share for
        a domain the target does not hold.
    """
    k, column = cfg.select.k, cfg.target.domain_column
    held = ", ".join(repr(d) for d in domains)
    for name, counts in domains.items():
        have = min(counts["rows"], counts.get("distinct_values", counts["rows"]))
        if have <= k:
            raise InputError(f"the target's domain {name!r} (target.domain_column {column!r}) "
                             f"has {have} usable distinct rows; select.k={k} needs more than {k} "
                             "in each domain. Give that domain more rows, leave its rows out, or "
                             "lower select.k.")
    shares = cfg.select.shares
    if shares is None:
        return
    named = {str(d) for d in shares}
    unknown = sorted(d for d in named if d not in domains)
    if unknown:
        raise InputError(f"select.shares names {', '.join(repr(d) for d in unknown)}, which "
                         f"target.domain_column {column!r} does not hold (it holds {held}); "
                         "name the target's domains as they are written in that column.")
    missing = [d for d in domains if d not in named]
    if missing:
        raise InputError(f"select.shares gives no share to the target's domain "
                         f"{', '.join(repr(d) for d in missing)} (target.domain_column "
                         f"{column!r} holds {held}); give every domain a share, or leave its "
                         "rows out of the target.")


def prepare_inputs(spark, cfg: JobConfig, plan: reuse.Plan, log,
                   checks: dict[str, StageCheck] | None = None) -> Inputs:
    """Reads and checks both sides and the output location; writes nothing unless all is well.
    ``checks``: the checks of the stages that run later in the command, by stage name, in the
    order they run (:data:`StageCheck`; their results are ``Inputs.checked``). Where quantize
    uses learnt weights, checks that they exist (this run's ``weigh`` check gives their
    dimension) and fit the embeddings.

    Raises:
      InputError: any problem with the sources, their rows, the model, the target's size, the
        weights, the output tables, or what a stage's check found.
    """
    pending: list = []
    sides = {side: _side(spark, cfg, plan, side, log, pending) for side in ("pool", "target")}
    dims = {side: s.report.get("dim_min") for side, s in sides.items()
            if effective_embedding_column(s.src)}
    if len(dims) < 2:
        model_dim = checked_model_dim(cfg)
        for side in ("pool", "target"):
            dims.setdefault(side, model_dim)
    if dims["pool"] != dims["target"]:
        raise InputError(f"embedding dimension mismatch: pool {dims['pool']}, target "
                         f"{dims['target']}; use the same model for both sides.")
    target_rows = sides["target"].report["kept"]
    k = cfg.select.k
    if target_rows <= k:
        raise InputError(f"the target has {target_rows} usable rows; select.k={k} needs at "
                         f"least {k + 1}. Lower select.k or give a larger target sample.")
    distinct = sides["target"].report.get("distinct_values")
    if distinct is not None and distinct <= k:
        what = "vectors" if effective_embedding_column(sides["target"].src) else "texts"
        raise InputError(f"the target's {target_rows} usable rows hold {distinct} distinct "
                         f"{what}, so K-means can make at most {distinct} target clusters; "
                         f"select.k={k} needs more than {k}. Lower select.k or give a target "
                         "sample with more distinct rows.")
    if cfg.target.domain_column is not None:
        check_domains(cfg, sides["target"].report.get("domains") or {})
    check_outputs(spark, cfg, sides["pool"].schema)
    dim = int(dims["pool"])
    checked = {name: check(pending, sides["pool"], dim) for name, check in (checks or {}).items()}
    if plan.weights_id is not None:
        own = checked.get("weigh")
        have = weights_dim(spark, cfg, plan.weights_id, plan.weights,
                           getattr(own, "dim", None))
        if have != dims["pool"]:
            raise InputError(f"the weights {plan.weights_id} have {have} features, but the "
                             f"embeddings have {dims['pool']} dimensions; learn the weights in "
                             "the embedding space (weigh.source.embedding_column, or its "
                             "text_column with the same embed.model), or use other weights.")
    stagelog.record_checks(spark, cfg.output.path, pending)
    return Inputs(sides["pool"], sides["target"], dim, checked)
