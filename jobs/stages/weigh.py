"""The weigh stage: feature weights learnt by the Differentiable Information Imbalance (DII).

    gio-spark weigh --config my.yaml        (or as the first stage of ``gio-spark run``)

Reads ``weigh.source`` (any format the pipeline reads, checked under its ``bad_rows`` policy),
takes ``weigh.num_points`` of its usable rows, the same ones whatever the source's row order
(the smallest seeded 64-bit hashes of their ids), builds space A (numeric columns, a vector
column, or texts embedded with the ``embed`` section's model, on the executors) and space B
(numeric columns, one vector column, or one label column one-hot encoded), and trains
:class:`gio_core.dii.DiffImbalance` on the driver (JAX; the platform follows
``runtime.jax_platform``). It writes, each in one transaction under the weights id:

* ``feature_weights``: one row per feature of A (index, name, learnt weight, and ``scaled`` =
  weight / max weight, the factor quantize applies);
* ``weight_runs``: the record (config, spaces, points, the DII and weights after every epoch, the
  final DII over the sample with its error, the greedy search when asked, timings, versions).

The weights id is ``weigh.run_id`` or ``weights-<fingerprint>``; the stage is reused while the
source and every weigh option are unchanged (see :mod:`jobs.state.reuse`).

Using the weights: with a ``weigh`` section, quantize clusters the embeddings scaled by these
weights (``weights.run_id`` or ``weights.path`` name other, stored ones), so select works in the
weighted space. Space A must then be the pipeline's embedding space (same dimension).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common.errors import InputError
from jobs.common.frames import EMBEDDING, ROW_ID, is_ml_vector, seeded_sample
from jobs.common.log import log
from jobs.common.runtime import configure_jax, library_versions
from jobs.config import JobConfig
from jobs.io import tables
from jobs.io.encoders import embed_frame, model_dimension
from jobs.io.sources import (check_outputs, clean_side, enforce, guarded, own_columns, read_side,
                             scan_side)
from jobs.stages.base import Stage, no_sides, run_stage
from jobs.state import reuse, stagelog

SIDE = "weigh.source"


@dataclass
class WeighInput:
    """The weigh source, read and checked: what the stage trains on."""
    frame: DataFrame          # usable rows
    a_kind: str               # columns, vector or text
    a_columns: list           # the A column(s) of the frame
    b_kind: str               # features, vector or labels
    b_columns: list
    dim: int                  # D_A
    names: list               # a name per feature of A
    report: dict
    points: int               # rows to sample and train on


# ---------------------------------------------------------------------------
# Reading and checking the source
# ---------------------------------------------------------------------------

def _is_numeric(dtype) -> bool:
    return isinstance(dtype, T.NumericType)


def _is_vector(dtype) -> bool:
    return ((isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType))
            or is_ml_vector(dtype))


def _as_array(df: DataFrame, column: str):
    if is_ml_vector(df.schema[column].dataType):
        return vector_to_array(F.col(column), "float64")
    return F.col(column).cast("array<double>")


def _non_finite(col):
    return col.isNull() | F.isnan(col) | (F.abs(col) == float("inf"))


def _b_kind(cfg: JobConfig, df: DataFrame) -> str:
    w = cfg.weigh
    types = {c: df.schema[c].dataType for c in w.b_columns}
    if w.b_type == "labels":
        return "labels"
    if len(w.b_columns) == 1:
        (column, dtype), = types.items()
        if _is_vector(dtype):
            return "vector"
        if w.b_type == "auto" and isinstance(dtype, (T.StringType, T.BooleanType,
                                                     T.IntegralType)):
            return "labels"
    bad = [f"{c} ({t.simpleString()})" for c, t in types.items() if not _is_numeric(t)]
    if bad:
        raise InputError(f"weigh.b_columns must be numeric columns, one vector column or one "
                         f"label column; {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} "
                         "not numeric. Set weigh.b_type: labels for a label column.")
    return "features"


def _columns_exist(df: DataFrame, columns: list, key: str, path: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{key} {', '.join(map(repr, missing))} "
                         f"{'is not a column' if len(missing) == 1 else 'are not columns'} of "
                         f"{path!r}; its columns are: {', '.join(own_columns(df))}.")


def _any_non_finite(columns: list):
    bad = None
    for c in columns:
        cond = _non_finite(F.col(c).cast("double"))
        bad = cond if bad is None else bad | cond
    return bad


def _conditions(df: DataFrame, a_kind: str, a_columns: list, b_kind: str, b_columns: list):
    """The weigh stage's own kinds of bad row: space A's and space B's values."""
    extra = {}
    if a_kind == "columns":
        extra["bad_a"] = _any_non_finite(a_columns)
    if b_kind == "labels":
        extra["bad_b"] = F.col(b_columns[0]).isNull()
    elif b_kind == "vector":
        arr = _as_array(df, b_columns[0])
        extra["bad_b"] = arr.isNull() | (F.size(arr) == 0) | F.coalesce(
            F.exists(arr, _non_finite), F.lit(False))
    else:
        extra["bad_b"] = _any_non_finite(b_columns)
    return extra


def read_weigh_input(spark, cfg: JobConfig, wplan: reuse.WeighPlan, pending: list,
                     model_dim=None) -> WeighInput:
    """Reads and checks the weigh source (or reuses its earlier check); writes nothing (the
    check's record goes to ``pending``).

    Raises:
      InputError: a missing or mistyped column, rows it cannot use (under ``bad_rows: reject``),
        too few rows, options that do not fit the data (periods, params_init).
    """
    w = cfg.weigh
    src = w.source
    if w.a_columns is not None:
        a_kind = "columns"
        src = dataclasses.replace(src, text_column=None, embedding_column=None)
    elif src.embedding_column:
        a_kind = "vector"
        src = dataclasses.replace(src, text_column=None)
    else:
        a_kind = "text"
    df = read_side(spark, SIDE, src)
    _columns_exist(df, w.b_columns, "weigh.b_columns", src.path)
    if a_kind == "columns":
        _columns_exist(df, w.a_columns, "weigh.a_columns", src.path)
        bad = [f"{c} ({df.schema[c].dataType.simpleString()})" for c in w.a_columns
               if not _is_numeric(df.schema[c].dataType)]
        if len(w.a_columns) == 1 and _is_vector(df.schema[w.a_columns[0]].dataType):
            raise InputError(f"weigh.a_columns names the vector column {w.a_columns[0]!r}; set "
                             "weigh.source.embedding_column to it instead (a_columns are numeric "
                             "columns, one feature each).")
        if bad:
            raise InputError(f"weigh.a_columns must be numeric columns; {', '.join(bad)} "
                             f"{'is' if len(bad) == 1 else 'are'} not.")
    a_columns = (list(w.a_columns) if a_kind == "columns" else
                 [EMBEDDING] if a_kind == "vector" else [src.text_column])
    clash = set(w.b_columns) & {src.text_column, src.embedding_column, src.id_column}
    if clash:
        raise InputError(f"weigh.b_columns names {sorted(clash)}, which the source uses for "
                         "space A or the id; space B must be other columns.")
    b_kind = _b_kind(cfg, df)
    extra = _conditions(df, a_kind, a_columns, b_kind, w.b_columns)
    key = wplan.validate[:reuse.ID_CHARS]
    last = stagelog.latest(spark, cfg.output.path, "validate_weigh", key)
    if last is not None and last["status"] == "done" and last["fingerprint"] == wplan.validate:
        report = json.loads(last["detail"])
        log(f"weigh: {report['rows']} source rows, checked on an earlier run")
    else:
        report = scan_side(df, SIDE, src, extra)
        enforce(df, SIDE, src, report, lambda m: log(f"warning: {m}"), extra)
        pending.append(("validate_weigh", key, wplan.validate, report))
        log(f"weigh: {report['rows']} source rows checked, {report['kept']} used")
    if a_kind == "columns":
        dim, names = len(a_columns), list(a_columns)
    else:
        dim = report.get("dim_min") if a_kind == "vector" else model_dim(cfg.embed.model)
        column = src.embedding_column if a_kind == "vector" else "embedding"
        names = [f"{column}[{i}]" for i in range(dim)]
    for key_, value in (("periods_A", w.periods_A), ("params_init", w.params_init)):
        if value is not None and len(value) != dim:
            raise InputError(f"weigh.{key_} has {len(value)} entries, but space A has {dim} "
                             "features; give one per feature.")
    points = points_to_use(cfg, report["kept"])
    clean = clean_side(df, src, report, extra)
    if b_kind == "labels":
        labels = guarded(lambda: clean.select(F.count_distinct(w.b_columns[0])).first()[0],
                         SIDE, src)
        if labels < 2:
            raise InputError(f"weigh.b_columns {w.b_columns[0]!r} holds a single label in every "
                             "usable row: space B carries no information. Name a column with "
                             "several labels.")
    if w.greedy is not None and dim > 64:
        log(f"warning: weigh.greedy={w.greedy} on {dim} features trains about "
            f"{dim * min(w.n_best, dim)} models per step; this takes long.")
    return WeighInput(clean, a_kind, a_columns, b_kind, list(w.b_columns), int(dim), names,
                      report, points)


def weigh_input_unless_done(spark, cfg: JobConfig, wplan: reuse.WeighPlan, pending: list,
                            model_dim) -> WeighInput | None:
    """The checked weigh source, or None when the stage's output is committed already."""
    if stagelog.is_done(spark, cfg.output.path, "weigh", wplan.weights_id, wplan.fingerprint):
        return None
    return read_weigh_input(spark, cfg, wplan, pending, model_dim)


# ---------------------------------------------------------------------------
# The sample and the spaces
# ---------------------------------------------------------------------------

def _texts_embedded(spark, cfg: JobConfig, ids: list, texts: list) -> np.ndarray:
    e = cfg.embed
    df = spark.createDataFrame(list(zip(ids, texts, strict=True)), f"{ROW_ID} string, text string")
    partitions = max(1, min(len(ids) // 256, spark.sparkContext.defaultParallelism))
    df = df.repartition(partitions, ROW_ID)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    got = {r[ROW_ID]: r[EMBEDDING] for r in embed_frame(
        df, "text", e.model, e.batch_size, e.normalize, e.device, threads,
        backend=e.backend).collect()}
    return np.array([got[i] for i in ids], np.float32)


def spaces(spark, cfg: JobConfig, inp: WeighInput, n: int):
    """The sample as arrays: ``(row ids, A [n, D_A], B [n, D_B], label names or None)``."""
    w = cfg.weigh
    frame = inp.frame
    cols = [F.col(ROW_ID)]
    if inp.a_kind == "columns":
        cols += [F.col(c).cast("double").alias(f"__a{i}") for i, c in enumerate(inp.a_columns)]
    elif inp.a_kind == "vector":
        cols.append(F.col(EMBEDDING).alias("__a"))
    else:
        cols.append(F.col(inp.a_columns[0]).alias("__text"))
    if inp.b_kind == "labels":
        cols.append(F.col(inp.b_columns[0]).cast("string").alias("__label"))
    elif inp.b_kind == "vector":
        cols.append(_as_array(frame, inp.b_columns[0]).alias("__b"))
    else:
        cols += [F.col(c).cast("double").alias(f"__b{i}") for i, c in enumerate(inp.b_columns)]
    rows = guarded(lambda: seeded_sample(frame.select(*cols), n, w.seed).collect(), SIDE, w.source)
    ids = [r[ROW_ID] for r in rows]
    if inp.a_kind == "columns":
        a = np.array([[r[f"__a{i}"] for i in range(len(inp.a_columns))] for r in rows],
                     np.float64)
    elif inp.a_kind == "vector":
        a = np.array([r["__a"] for r in rows], np.float64)
    else:
        log(f"weigh: embedding {len(ids)} sampled texts with {cfg.embed.model}")
        a = _texts_embedded(spark, cfg, ids, [r["__text"] for r in rows]).astype(np.float64)
    labels = None
    if inp.b_kind == "labels":
        values = [r["__label"] for r in rows]
        labels, codes = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
        if len(labels) < 2:
            raise InputError(f"weigh.b_columns {inp.b_columns[0]!r} holds the one label "
                             f"{labels[0]!r} in the {len(ids)} sampled rows: space B carries no "
                             "information. Sample rows with several labels.")
        b = np.eye(len(labels), dtype=np.float64)[codes]
    elif inp.b_kind == "vector":
        lengths = {len(r["__b"]) for r in rows}
        if len(lengths) > 1:
            raise InputError(f"weigh.b_columns {inp.b_columns[0]!r} holds vectors of different "
                             f"lengths ({min(lengths)} to {max(lengths)}); every vector must "
                             "have the same dimension.")
        b = np.array([r["__b"] for r in rows], np.float64)
    else:
        b = np.array([[r[f"__b{i}"] for i in range(len(inp.b_columns))] for r in rows],
                     np.float64)
    return ids, a, b, labels


def points_to_use(cfg: JobConfig, kept: int) -> int:
    """How many rows the DII trains on: ``num_points``, or fewer when the source has fewer
    usable rows; a multiple of ``batches_per_epoch``."""
    w = cfg.weigh
    n = min(w.num_points, kept)
    if n < w.num_points:
        log(f"warning: weigh.source has {kept} usable rows, fewer than weigh.num_points="
            f"{w.num_points}; training on all of them.")
    trimmed = n - n % w.batches_per_epoch
    if trimmed != n:
        log(f"warning: weigh: {n} rows do not split into {w.batches_per_epoch} equal "
            f"mini-batches; training on {trimmed}.")
    per_batch = trimmed // w.batches_per_epoch
    if per_batch <= w.k_init:
        raise InputError(f"weigh.source has {kept} usable rows: {per_batch} per mini-batch, "
                         f"but weigh.k_init={w.k_init} needs more than {w.k_init}. Give more "
                         "rows or lower k_init, k_final or batches_per_epoch.")
    if w.num_points_rows is not None and w.num_points_rows >= trimmed:
        raise InputError(f"weigh.num_points_rows={w.num_points_rows} must be smaller than the "
                         f"{trimmed} points trained on; lower it or set it to null.")
    return trimmed


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------

def _train(cfg: JobConfig, a: np.ndarray, b: np.ndarray, inp: WeighInput):
    from gio_core.dii import DiffImbalance
    w = cfg.weigh
    try:
        dii = DiffImbalance(
            a, b, periods_A=w.periods_A, periods_B=w.periods_B, num_epochs=w.num_epochs,
            batches_per_epoch=w.batches_per_epoch, seed=w.seed, l1_strength=w.l1_strength,
            point_adapt_lambda=w.point_adapt_lambda, k_init=w.k_init, k_final=w.k_final,
            lambda_factor=w.lambda_factor, params_init=w.params_init,
            optimizer_name=w.optimizer_name, learning_rate=w.learning_rate,
            learning_rate_decay=w.learning_rate_decay, num_points_rows=w.num_points_rows,
            rank_ties=w.rank_ties)
        params, imbs = dii.train(progress=sys.stderr.isatty())
        final, error = dii.return_final_dii(
            compute_error=w.compute_error,
            ratio_rows_columns=w.ratio_rows_columns if w.compute_error else None,
            seed=w.seed, discard_close_ind=w.discard_close_ind)
        greedy = None
        if w.greedy is not None:
            opts = dict(n_best=w.n_best, compute_error=w.compute_error,
                        ratio_rows_columns=w.ratio_rows_columns or 1, seed=w.seed,
                        discard_close_ind=w.discard_close_ind)
            if w.greedy == "forward":
                found = dii.forward_greedy_feature_selection(n_features_max=w.n_features, **opts)
            else:
                found = dii.backward_greedy_feature_selection(n_features_min=w.n_features or 1,
                                                              **opts)
            greedy = [{"features": [int(f) for f in fs], "names": [inp.names[f] for f in fs],
                       "dii": float(d), "error": None if e is None else float(e),
                       "weights": [float(v) for v in ws]}
                      for fs, d, e, ws in zip(*found, strict=True)]
    except ValueError as err:
        raise InputError(f"weigh: {err}") from None
    return params, imbs, final, error, greedy


def run_weigh(spark, cfg: JobConfig, wplan: reuse.WeighPlan, inp: WeighInput | None,
              reports: dict | None = None) -> str:
    """Learns and commits the weights (unless done); returns the weights id."""
    key, fp = wplan.weights_id, wplan.fingerprint

    def compute():
        if inp is None:
            raise RuntimeError("weigh: the source was not read; call read_weigh_input first.")
        configure_jax(cfg.runtime)
        started = dt.datetime.now()
        t0 = time.perf_counter()
        n = inp.points
        ids, a, b, labels = spaces(spark, cfg, inp, n)
        if a.shape[1] != inp.dim:
            raise InputError(f"weigh: space A has {a.shape[1]} features in the sample, {inp.dim} "
                             "expected; every vector must have the same dimension.")
        sample_s = time.perf_counter() - t0
        log(f"weigh: training the DII on {n} rows, {inp.dim} features of A ({inp.a_kind}) against "
            f"{b.shape[1]} of B ({inp.b_kind}), {cfg.weigh.num_epochs} epochs")
        t1 = time.perf_counter()
        params, imbs, final, error, greedy = _train(cfg, a, b, inp)
        train_s = time.perf_counter() - t1
        weights = np.asarray(params[-1], np.float64)
        top = float(np.max(np.abs(weights)))
        if not np.isfinite(weights).all() or top == 0:
            raise InputError("weigh: the training ended with no usable weight (all zero or not "
                             "finite); lower weigh.learning_rate or weigh.l1_strength.")
        log(f"weigh: DII {float(imbs[0]):.4f} -> {float(imbs[-1]):.4f}; final DII {final:.4f}"
            + (f" +- {error:.4f}" if error is not None else "")
            + "; largest weights: " + ", ".join(
                f"{inp.names[i]} {weights[i] / top:.2f}" for i in np.argsort(-np.abs(weights))[:5]))
        rows = [(key, fp, i, inp.names[i], float(abs(weights[i])), float(abs(weights[i]) / top))
                for i in range(inp.dim)]
        a_info = {"kind": inp.a_kind, "columns": inp.a_columns, "features": inp.dim}
        if inp.a_kind == "text":
            a_info["model"] = cfg.embed.model
        b_info = {"kind": inp.b_kind, "columns": inp.b_columns, "features": int(b.shape[1])}
        if labels is not None:
            b_info["labels"] = [str(v) for v in labels]
        record = spark.createDataFrame([(
            key, fp, started, dt.datetime.now(), json.dumps(cfg.recorded(), default=str),
            json.dumps(a_info), json.dumps(b_info), n, inp.dim, [float(v) for v in imbs],
            [[float(v) for v in row] for row in params], float(final),
            None if error is None else float(error),
            None if greedy is None else json.dumps(greedy),
            json.dumps(reports if reports is not None else {"weigh": inp.report}, sort_keys=True),
            json.dumps({"sample_s": round(sample_s, 3), "train_s": round(train_s, 3)}),
            json.dumps(library_versions()))], tables.WEIGHT_RUNS)
        return rows, record, {"points": n, "features": inp.dim, "dii_final": float(final)}

    def commit(computed):
        rows, record, detail = computed
        tables.replace_key(spark, spark.createDataFrame(rows, tables.FEATURE_WEIGHTS),
                           cfg.output.path, "feature_weights", key)
        tables.replace_key(spark, record, cfg.output.path, "weight_runs", key)
        log(f"weigh: weights {key} -> {tables.table_path(cfg.output.path, 'feature_weights')}")
        return key, detail

    def reused():
        log(f"weigh: reusing weights {key}")
        return key

    return run_stage(spark, cfg.output.path, "weigh", key, fp, compute, commit, reused)


def weigh_command(spark, cfg: JobConfig, registry) -> str:
    """``gio-spark weigh``; returns the weights id."""
    wplan = reuse.make_weigh_plan(spark, cfg)
    check_outputs(spark, cfg, None)
    pending: list = []
    inp = weigh_input_unless_done(spark, cfg, wplan, pending, model_dimension)
    stagelog.record_checks(spark, cfg.output.path, pending)
    return run_weigh(spark, cfg, wplan, inp)


STAGE = Stage(
    "weigh", "the weigh stage alone: feature weights learnt by the DII", "weigh", no_sides,
    needs=(), outputs=("feature_weights", "weight_runs"), command=weigh_command,
    requires="the config has no weigh stage: set weigh.source.path (and weigh.b_columns) to the "
             "table whose feature weights to learn.",
    in_run=lambda cfg: cfg.weigh.enabled,
    check=lambda run, pending, pool, dim: weigh_input_unless_done(
        run.spark, run.cfg, run.plan.weigh, pending, model_dimension),
    step=lambda run: run_weigh(run.spark, run.cfg, run.plan.weigh, run.inputs.checked.get("weigh")))
