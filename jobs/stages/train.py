"""The train stage: a classifier (a *probe*) trained on the selected rows, with Gradient
Agreement Filtering or plain SGD, and scored on labelled rows from the target's distribution.

    gio-spark train --config my.yaml        (or as the last stage of ``gio-spark run``)

Training rows: by default the ``selected_rows`` of a run (``train.selection``, or this config's
run), whose features are the pool's (its vector column, or the stored ``pool_embeddings``; rows
missing there are embedded on the executors); or ``train.source``, any source the pipeline
reads (its vector column, or its texts embedded with ``embed.model``). ``train.validation`` is
read the same way. Both need ``train.label_column`` (text, integer or boolean labels).

The rows are collected to the driver in the order of a seeded hash of their ids (so the model
does not depend on the source's row order or files) and :func:`gio_core.gaf.train_gaf` trains
a logistic regression or a small MLP there (JAX; the platform follows ``runtime.jax_platform``).
``train.baseline: random`` trains the same probe, with the same settings and seed, on as many
pool rows drawn by a seeded hash of their ids (rows with a label), so the record shows what
the selection gained over no selection.

It writes, each in one transaction under the train id (``train.run_id`` or
``train-<fingerprint>``), one row per arm (``selection``, and ``random`` with the baseline):

* ``models``: the trained parameters (:func:`gio_core.gaf.mlp_to_bytes`), the layer sizes, the
  class of each output and the features' standardisation: :func:`load_probe` gives them back
  as a :class:`gio_core.gaf.Probe`;
* ``train_runs``: the config, where the rows came from, their counts, the classes, and every
  epoch's losses, accuracies and GAF agreement.

The stage is reused while its rows, validation set and options are unchanged.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gio_core import gaf
from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.frames import EMBEDDING, ROW_ID, seeded_order, seeded_sample
from jobs.common.log import log
from jobs.common.runtime import configure_jax, library_versions
from jobs.config import JobConfig, effective_embedding_column, probe_options
from jobs.io import tables
from jobs.io.encoders import embedded_rows
from jobs.io.sources import (Side, check_class_column, check_outputs, checked_model_dim,
                             clean_side, enforce, guarded, own_columns, read_side, scan_side,
                             selected_frame, side_dim)
from jobs.stages.base import Stage, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import read_only
from jobs.state.stored import stored_embeddings, stored_run

SOURCE, VALIDATION = "train.source", "train.validation"
LABEL = "__gio_label"
ARMS = ("selection", "random")


@dataclass
class Rows:
    """Labelled rows, checked: ``frame`` holds row_id, the label (as text) and either the
    ``embedding`` or the text column to embed."""
    name: str                 # for messages
    frame: DataFrame
    text: str | None          # the text column, when the features are to be embedded
    report: dict


@dataclass
class TrainInput:
    validation: Rows
    source: Rows | None       # train.source's rows, when it names a path
    pool: Side | None         # the pool, for the selected rows' features and the baseline
    dim: int


# ---------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------

def _check_label(schema: T.StructType, label: str, where: str, columns: list) -> None:
    check_class_column(schema, label, "train.label_column", where, columns)


def read_labelled(spark, cfg: JobConfig, side: str, src) -> tuple[Rows, int]:
    """A labelled source (``train.source`` or ``train.validation``), checked under its
    ``bad_rows`` policy (a null label is one more kind of bad row); returns it and its number
    of features. Writes nothing."""
    label = cfg.train.label_column
    df = read_side(spark, side, src)
    _check_label(df.schema, label, f"{side} {src.path!r}", own_columns(df))
    extra = {"null_label": F.col(label).isNull()}
    report = scan_side(df, side, src, extra)
    enforce(df, side, src, report, lambda m: log(f"warning: {m}"), extra)
    clean = clean_side(df, src, report, extra)
    vector = effective_embedding_column(src) is not None
    cols = [F.col(ROW_ID), F.col(label).cast("string").alias(LABEL)]
    cols.append(F.col(EMBEDDING) if vector else F.col(src.text_column))
    dim = report["dim_min"] if vector else checked_model_dim(cfg)
    log(f"{side}: {report['rows']} rows checked, {report['kept']} used")
    return Rows(side, clean.select(*cols), None if vector else src.text_column, report), int(dim)


def check_train_input(spark, cfg: JobConfig, pool: Side | None, pool_dim: int | None
                      ) -> TrainInput:
    """Reads and checks everything the train stage reads (before any heavy work; writes
    nothing).

    Raises:
      InputError: a source it cannot read, a missing or mistyped label column, bad rows under
        ``bad_rows: reject``, features of another dimension than the validation set's.
    """
    t = cfg.train
    validation, val_dim = read_labelled(spark, cfg, VALIDATION, t.validation)
    source, dim = None, pool_dim
    if t.source.path is not None:
        source, dim = read_labelled(spark, cfg, SOURCE, t.source)
    if t.needs_pool:
        assert pool is not None
        where = ("the pool (the selected rows hold the pool's columns)" if t.source.path is None
                 else "the pool (train.baseline: random draws pool rows)")
        _check_label(pool.schema, t.label_column, where, pool.schema.names)
    if dim != val_dim:
        what = "train.source" if source is not None else "the pool's embeddings"
        raise InputError(f"{what} have {dim} features but train.validation has {val_dim}; "
                         "embed both with the same model (or give vectors of one dimension).")
    return TrainInput(validation, source, pool, int(val_dim))


def train_input_unless_done(spark, cfg: JobConfig, tplan: reuse.TrainPlan, pool: Side | None,
                            pool_dim: int | None) -> TrainInput | None:
    """The checked inputs, or None when the stage's output is committed already."""
    if stagelog.is_done(spark, cfg.output.path, "train", tplan.train_id, tplan.fingerprint):
        return None
    return check_train_input(spark, cfg, pool, pool_dim)


# ---------------------------------------------------------------------------
# The rows of each arm, with their features
# ---------------------------------------------------------------------------

def _embedded(spark, cfg: JobConfig, rows: DataFrame, text: str) -> DataFrame:
    return embedded_rows(spark, cfg, rows, text).select(ROW_ID, LABEL, EMBEDDING)


def _with_pool_features(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side, rows: DataFrame,
                        what: str) -> DataFrame:
    """``rows`` (row_id, label, the pool's text column if any) with the pool's features; rows
    that the stored embeddings lack are embedded from their text."""
    text = None if EMBEDDING in pool.frame.columns else pool.src.text_column
    stored = stored_embeddings(spark, cfg, pool, *plan.embeddings_of(pool.name))
    if stored is None:
        log(f"train: embedding {what} (no stored pool embeddings for this config)")
        return _embedded(spark, cfg, rows, text)
    joined = rows.join(stored, ROW_ID, "left")
    missing = joined.where(F.col(EMBEDDING).isNull())
    count = missing.count()
    if count == 0:
        return joined.select(ROW_ID, LABEL, EMBEDDING)
    if text is None:
        raise InputError(f"{count} of {what} are not rows of this config's pool (their ids are "
                         "not in it), so they have no vectors; train on a run of this pool.")
    log(f"train: embedding {count} of {what} that the stored pool embeddings lack")
    return (joined.where(F.col(EMBEDDING).isNotNull()).select(ROW_ID, LABEL, EMBEDDING)
            .unionByName(_embedded(spark, cfg, missing.select(ROW_ID, LABEL, text), text)))


def selected_rows(spark, cfg: JobConfig, run_id: str, pool: Side) -> DataFrame:
    """The selected rows of ``run_id`` as (row_id, label[, text]), the ids computed as the
    pool's; null labels follow ``train.source.bad_rows``."""
    t = cfg.train
    df = selected_frame(spark, cfg.output.path, run_id, pool, "train.selection",
                        "train on a selection")
    nulls = df.where(F.col(t.label_column).isNull()).count()
    if nulls:
        if t.source.bad_rows == "reject":
            raise InputError(f"{nulls} selected rows of run {run_id} have a null label in "
                             f"train.label_column {t.label_column!r}; fill the labels in the "
                             "pool, or set train.source.bad_rows: drop to leave them out.")
        log(f"warning: train: dropping {nulls} selected rows with a null label; "
            "train.source.bad_rows is drop.")
        df = df.where(F.col(t.label_column).isNotNull())
    cols = [F.col(ROW_ID), F.col(t.label_column).cast("string").alias(LABEL)]
    if EMBEDDING not in pool.frame.columns:
        cols.append(F.col(pool.src.text_column))
    return df.select(*cols).dropDuplicates([ROW_ID])


def random_rows(cfg: JobConfig, pool: Side, n: int) -> DataFrame:
    """``n`` labelled pool rows with the smallest seeded hash of their ids (the baseline)."""
    t = cfg.train
    cols = [F.col(ROW_ID), F.col(t.label_column).cast("string").alias(LABEL)]
    if EMBEDDING not in pool.frame.columns:
        cols.append(F.col(pool.src.text_column))
    labelled = pool.frame.where(F.col(t.label_column).isNotNull()).select(*cols)
    return seeded_sample(labelled, n, t.seed + 1)


def _features(spark, cfg: JobConfig, rows: Rows) -> DataFrame:
    if rows.text is None:
        return rows.frame.select(ROW_ID, LABEL, EMBEDDING)
    return _embedded(spark, cfg, rows.frame, rows.text)


def collect_arrays(frame: DataFrame, seed: int, what: str):
    """``(row ids, features [n, d] float32, labels [n])`` in the order of a seeded hash of the
    ids: the same arrays whatever the source's row order or partitioning."""
    pdf = seeded_order(frame, seed).select(ROW_ID, LABEL, EMBEDDING).toPandas()
    if len(pdf) == 0:
        raise InputError(f"{what} has no rows to train or score on.")
    lengths = {len(v) for v in pdf[EMBEDDING]}
    if len(lengths) > 1:
        raise InputError(f"{what} holds vectors of different lengths ({min(lengths)} to "
                         f"{max(lengths)}); every vector must have the same dimension.")
    x = np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what} holds NaN or inf feature values; fix the vectors.")
    return pdf[ROW_ID].tolist(), x, pdf[LABEL].astype(str).to_numpy()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def fit_probe(cfg: JobConfig, x: np.ndarray, labels: np.ndarray, xv: np.ndarray,
              val_labels: np.ndarray, classes: list, progress: bool = False):
    """Trains one probe as the train section says (:func:`gio_core.gaf.fit_probe`); returns
    ``(Probe, epoch records)``. Options the trainer refuses, or a diverged training, are bad
    input."""
    try:
        return gaf.fit_probe(x, labels, xv, val_labels, classes, progress=progress,
                             **probe_options(cfg.train))
    except (ValueError, FloatingPointError) as err:
        raise InputError(f"train: {err}") from None


def _history(records: list) -> list:
    fields = tables.EPOCH.names
    return [tuple(None if r.get(f) is None else
                  (int(r[f]) if tables.EPOCH[f].dataType == T.IntegerType() else float(r[f]))
                  for f in fields) for r in records]


def run_train(spark, cfg: JobConfig, plan: reuse.Plan | None, tplan: reuse.TrainPlan,
              inp: TrainInput | None, reports: dict | None = None) -> dict:
    """Trains and commits the probes (unless done); returns ``{arm: validation accuracy}``."""
    t = cfg.train
    key, fp = tplan.train_id, tplan.fingerprint

    def compute():
        if inp is None:
            raise RuntimeError("train: the inputs were not checked; call check_train_input first.")
        configure_jax(cfg.runtime)
        started = dt.datetime.now()
        t0 = time.perf_counter()
        if inp.source is not None:
            frame, rows_from = _features(spark, cfg, inp.source), {"kind": "source",
                                                                   "path": t.source.path}
            what = f"train.source {t.source.path!r}"
        else:
            assert plan is not None and inp.pool is not None
            what = f"the selected rows of run {tplan.selection}"
            rows = selected_rows(spark, cfg, tplan.selection, inp.pool)
            frame = _with_pool_features(spark, cfg, plan, inp.pool, rows, what)
            rows_from = {"kind": "selection", "run_id": tplan.selection}
        n = frame.count()
        need = t.batch_size * t.microbatches
        if n < need:
            raise InputError(f"{what} hold {n} labelled rows, fewer than one step needs "
                             f"(train.batch_size {t.batch_size} x train.microbatches "
                             f"{t.microbatches} = {need}); lower them or select more rows.")
        if n > t.max_rows:
            raise InputError(f"{what} hold {n} rows, more than train.max_rows={t.max_rows} allows to "
                             "collect to the driver; raise train.max_rows (and the driver's memory).")
        if inp.source is not None:
            got = guarded(lambda: collect_arrays(frame, t.seed, what), SOURCE, t.source)
        else:
            got = collect_arrays(frame, t.seed, what)
        arms = {"selection": (got, rows_from)}
        val_ids, xv, yv = guarded(lambda: collect_arrays(_features(spark, cfg, inp.validation),
                                                         t.seed, VALIDATION), VALIDATION,
                                  t.validation)
        if t.baseline == "random":
            assert plan is not None and inp.pool is not None
            sample = random_rows(cfg, inp.pool, n)
            base = _with_pool_features(spark, cfg, plan, inp.pool, sample, f"{n} random pool rows")
            arms["random"] = (collect_arrays(base, t.seed, "the random pool rows"),
                              {"kind": "random", "rows": n, "seed": t.seed + 1})
        collect_s = time.perf_counter() - t0
        labels = set(arms["selection"][0][2])
        if len(labels) < 2:
            raise InputError(f"{what} all have the label {next(iter(labels))!r}: a classifier needs "
                             "at least two classes among its training rows.")
        classes = sorted(set().union(*[set(a[0][2]) for a in arms.values()], set(yv)))
        unseen = sorted(set(yv) - labels)
        if unseen:
            log(f"warning: train: {len(unseen)} validation label(s) never occur in {what} "
                f"({', '.join(map(repr, unseen[:5]))}); the probe cannot predict them.")
        model_rows, run_rows, accuracies = [], [], {}
        versions = json.dumps(library_versions())
        features = {"dim": inp.dim, "model": cfg.embed.model,
                    "validation": "vectors" if inp.validation.text is None else "embedded"}
        for arm, ((ids, x, y), source) in arms.items():
            log(f"train: {arm}: {t.model} probe on {len(ids)} rows, {len(classes)} classes, "
                f"{t.method} x{t.epochs} epochs")
            t1 = time.perf_counter()
            probe, records = fit_probe(cfg, x, y, xv, yv, classes)
            train_s = time.perf_counter() - t1
            last = records[-1]
            acc = float(last["val_accuracy"])
            accuracies[arm] = acc
            best = max(float(r["val_accuracy"]) for r in records)
            log(f"train: {arm}: validation accuracy {acc:.3f} (best epoch: {best:.3f}), loss "
                f"{last['val_loss']:.4f}; {train_s:.1f}s")
            sizes = gaf.probe_sizes(t.model, t.hidden, inp.dim, len(classes))
            model_rows.append((key, fp, arm, t.model, sizes, list(classes),
                               [float(v) for v in probe.mean], [float(v) for v in probe.scale],
                               json.dumps(features), gaf.PARAMS_FORMAT,
                               bytearray(gaf.mlp_to_bytes(probe.params))))
            run_rows.append((key, fp, arm, started, dt.datetime.now(),
                             json.dumps(cfg.recorded(), default=str), json.dumps(source), len(ids),
                             len(val_ids), list(classes), json.dumps({"kind": t.model, "sizes": sizes}),
                             t.method, _history(records), acc, float(last["val_loss"]), best,
                             json.dumps(reports if reports is not None else {
                                 "validation": inp.validation.report}, sort_keys=True),
                             json.dumps({"collect_s": round(collect_s, 3),
                                         "train_s": round(train_s, 3)}), versions))
        if "random" in accuracies:
            log(f"train: the selection's probe scores {accuracies['selection']:.3f} against "
                f"{accuracies['random']:.3f} for random pool rows "
                f"({accuracies['selection'] - accuracies['random']:+.3f})")
        return model_rows, run_rows, accuracies

    def commit(computed):
        model_rows, run_rows, accuracies = computed
        tables.replace_key(spark, spark.createDataFrame(model_rows, tables.MODELS),
                           cfg.output.path, "models", key)
        tables.replace_key(spark, spark.createDataFrame(run_rows, tables.TRAIN_RUNS),
                           cfg.output.path, "train_runs", key)
        log(f"train: probes {key} -> {tables.table_path(cfg.output.path, 'models')}")
        return accuracies, {"val_accuracy": accuracies}

    def reused():
        log(f"train: reusing the probes of {key}")
        return stored_accuracies(spark, cfg.output.path, key, fp)

    return run_stage(spark, cfg.output.path, "train", key, fp, compute, commit, reused)


def stored_accuracies(spark, output: str, train_id: str, fp: str) -> dict:
    rows = (tables.read_key(spark, output, "train_runs", train_id)
            .where(F.col("train_fingerprint") == fp).select("arm", "val_accuracy").collect())
    return {r["arm"]: r["val_accuracy"] for r in rows}


# ---------------------------------------------------------------------------
# Loading a trained probe back
# ---------------------------------------------------------------------------

def load_probe(spark, output: str, train_id: str | None = None, arm: str = "selection"):
    """The probe that ``gio-spark train`` committed, as a :class:`gio_core.gaf.Probe`
    (``probe.predict(vectors)`` gives class names).

    Raises:
      InputError: no such probe, one that is not complete, or several train runs under
        ``output`` and no ``train_id`` to say which.
    """
    train_id, fp = stored_run(
        spark, output, "models", "train", train_id,
        missing=f"there are no trained probes under {output!r} (no models table); run "
                "gio-spark train first.",
        several=("train runs", "name the one to load"),
        incomplete=lambda run_id, ids: f"train run {run_id!r} is not complete under "
                                       f"{output!r}; run gio-spark train first.")
    models = tables.read_table(spark, output, "models")
    row = (models.where((F.col("train_id") == train_id) & (F.col("arm") == arm)
                        & (F.col("train_fingerprint") == fp)).first())
    if row is None:
        arms = [r[0] for r in models.where(F.col("train_id") == train_id).select("arm")
                .distinct().collect()]
        if arms and arm not in arms:
            raise InputError(f"train run {train_id!r} has no {arm!r} probe; it has "
                             f"{', '.join(sorted(arms))}.")
        raise ConcurrentRunError(f"the probes of {train_id} under {output!r} were replaced by "
                                 "another run with the same id; load them again.")
    if row["params_format"] != gaf.PARAMS_FORMAT:
        raise InputError(f"probe {train_id} was stored as {row['params_format']!r}, which this "
                         f"version of gio-spark does not read ({gaf.PARAMS_FORMAT!r}).")
    return gaf.Probe(gaf.mlp_from_bytes(row["params"]), tuple(row["classes"]),
                 np.array(row["feature_mean"], np.float32),
                 np.array(row["feature_scale"], np.float32))


def train_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg) if cfg.train.needs_pool else None
    tplan = reuse.make_train_plan(spark, cfg, plan)
    check_outputs(spark, cfg, None)
    pool, dim = None, None
    if not stagelog.is_done(spark, cfg.output.path, "train", tplan.train_id, tplan.fingerprint):
        if plan is not None:
            pool = read_only(spark, cfg, plan, "pool", log)
            dim = side_dim(cfg, pool)
    inp = train_input_unless_done(spark, cfg, tplan, pool, dim)
    run_train(spark, cfg, plan, tplan, inp)


STAGE = Stage(
    "train", "the train stage alone: a probe trained on the selected rows (GAF)", "train",
    lambda cfg: ("pool", "target") if cfg.train.needs_pool else (), needs=("explode",),
    outputs=("models", "train_runs"), command=train_command,
    requires="the config has no train stage: set train.validation.path (and train.label_column) "
             "to the labelled rows that score the probe.",
    in_run=lambda cfg: cfg.train.enabled,
    plan=lambda run: reuse.make_train_plan(run.spark, run.cfg, run.plan, in_run=True),
    check=lambda run, pending, pool, dim: train_input_unless_done(
        run.spark, run.cfg, run.plans["train"], pool, dim),
    step=lambda run: run_train(run.spark, run.cfg, run.plan, run.plans["train"],
                               run.inputs.checked.get("train")))
