"""The evaluate stage: a run's selection measured against what a user would pick instead.

    gio-spark evaluate --config my.yaml     (or as the last stage of ``gio-spark run``)

Every method chooses from the same rows: ``evaluate.sample_rows`` usable pool rows, the ones
with the smallest seeded hash of their ids (so the sample does not depend on the pool's row
order or files), with their stored embeddings (or vector column). Pool rows that are also
held-out rows (the same row id) are left out: no method may score by picking the very rows it
is measured against; with ``decontaminate.threshold`` set, so are the rows the run's clustering
set aside as copies of target or held-out rows (``set_aside``), which the selection cannot
hold either. The selection evaluated
(``evaluate.selection``, or this config's run) holds some of them; each method picks as many
from the sample, knowing only the target sample's rows (at most ``sample_rows`` of them, the
same way):

* ``gio_rows``: :func:`gio_core.select` on the rows themselves (knn estimator, no clustering):
  against the selection it says what the pipeline's clustering costs;
* ``random``, ``k_center`` (farthest-first), ``nn_round_robin`` (each target row in turn
  takes its nearest untaken row): :mod:`gio_core.quality`;
* ``dsir``: hashed n-gram importance resampling of the texts (the ``data-selection`` package,
  minimum length 1 token; the ``quality`` extra);
* ``whole_clusters``, where explode's row step made this config's run: the sampled rows of
  select's cluster picks, as the cluster path would have written them (at most as many, the
  first in the sample's order; :func:`jobs.state.stored.whole_cluster_rows`).

Each selection is scored against at most ``evaluate.max_heldout`` rows of ``evaluate.heldout``
(rows of the target's distribution that the target sample left out), by
:func:`gio_core.quality.compare`: MMD² (RBF, the held-out rows' median width, the same for
every method), the kNN KL, with ``domain_column`` the share of rows from the target's domains
and their recall in the sample, and with ``label_column`` the held-out accuracy of a probe
trained on the selection (``evaluate.probe``: a scikit-learn logistic regression, or ``gaf``:
the train stage's trainer, with the train section's settings).

Written under the evaluation id (``evaluate.run_id`` or ``eval-<fingerprint>``), in one
transaction: ``evaluations``, one row per method; for a local output also
``reports/<eval_id>_evaluation.md`` (the table) and ``plots/<eval_id>_evaluation.png``. The
stage is reused while the selection, the held-out rows and every evaluate option are unchanged.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gio_core import gaf
from jobs.common.errors import InputError
from jobs.common.extras import plotting
from jobs.common.frames import EMBEDDING, ROW_ID, seeded_sample
from jobs.common.log import log
from jobs.common.runtime import configure_jax, library_versions
from jobs.config import JobConfig, effective_embedding_column, probe_options
from jobs.io import tables
from jobs.io.encoders import embedded_rows
from jobs.io.sources import (Side, check_class_column, check_outputs, checked_model_dim,
                             guarded, read_side, selected_frame, side_dim)
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import checked_rows, read_only
from jobs.state.stored import stored_embeddings, whole_cluster_rows

HELDOUT = "evaluate.heldout"
LABEL, DOMAIN, IN_SELECTION = "__gio_label", "__gio_domain", "__gio_selected"
TARGET_DOMAIN, SERVED = "__gio_target_domain", "__gio_served"   # several targets
IN_CLUSTERS = "__gio_in_whole_clusters"
HASH = "__gio_eval_hash"


@dataclass
class EvaluateInput:
    """The held-out rows, checked: row_id, the label and domain (as text, when configured) and
    either the embedding or the text column to embed."""
    heldout: DataFrame
    text: str | None
    report: dict
    target_domains: list | None      # as configured; None: taken from the held-out rows
    dim: int


# ---------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------

def _check_column(schema: T.StructType, column: str, key: str, where: str) -> None:
    check_class_column(schema, column, f"evaluate.{key}", where, schema.names,
                       "class labels" if key == "label_column" else "domains")


def check_evaluate_input(spark, cfg: JobConfig, pool: Side, pool_dim: int) -> EvaluateInput:
    """Reads and checks the held-out rows and the columns the metrics need (writes nothing).

    Raises:
      InputError: held-out rows it cannot read, bad rows under ``bad_rows: reject``, a label or
        domain column missing from the pool or the held-out rows, vectors of another dimension.
    """
    v = cfg.evaluate
    df = read_side(spark, HELDOUT, v.heldout)
    where = f"{HELDOUT} {v.heldout.path!r}"
    extra = {}
    if v.label_column is not None:
        _check_column(pool.schema, v.label_column, "label_column", "the pool")
        _check_column(df.schema, v.label_column, "label_column", where)
        extra["null_label"] = F.col(v.label_column).isNull()
    if v.domain_column is not None:
        _check_column(pool.schema, v.domain_column, "domain_column", "the pool")
        if v.target_domains is None:
            if v.domain_column not in df.columns:
                raise InputError(f"evaluate.target_domains is null, so the target's domains are "
                                 f"the held-out rows' values of {v.domain_column!r}, but {where} "
                                 "has no such column; list the domains in "
                                 "evaluate.target_domains.")
            _check_column(df.schema, v.domain_column, "domain_column", where)
            extra["null_domain"] = F.col(v.domain_column).isNull()
    clean, report = checked_rows(df, HELDOUT, v.heldout, log, extra)
    vector = effective_embedding_column(v.heldout) is not None
    dim = report["dim_min"] if vector else checked_model_dim(cfg)
    if int(dim) != int(pool_dim):
        raise InputError(f"{HELDOUT} has {dim} features but the pool's embeddings have "
                         f"{pool_dim}; embed both with the same model (or give vectors of one "
                         "dimension).")
    cols = [F.col(ROW_ID)]
    if v.label_column is not None:
        cols.append(F.col(v.label_column).cast("string").alias(LABEL))
    if v.domain_column is not None and v.target_domains is None:
        cols.append(F.col(v.domain_column).cast("string").alias(DOMAIN))
    by = cfg.target.domain_column
    if by is not None and by in df.columns:      # per-domain metrics against these rows
        cols.append(F.col(by).cast("string").alias(TARGET_DOMAIN))
    cols.append(F.col(EMBEDDING) if vector else F.col(v.heldout.text_column))
    log(f"{HELDOUT}: {report['rows']} rows checked, {report['kept']} used")
    return EvaluateInput(clean.select(*cols), None if vector else v.heldout.text_column, report,
                         v.target_domains, int(dim))


def evaluate_input_unless_done(spark, cfg: JobConfig, eplan: reuse.EvaluatePlan, pool: Side,
                               pool_dim: int) -> EvaluateInput | None:
    """The checked inputs, or None when the stage's output is committed already."""
    if stagelog.is_done(spark, cfg.output.path, "evaluate", eplan.eval_id, eplan.fingerprint):
        return None
    return check_evaluate_input(spark, cfg, pool, pool_dim)


# ---------------------------------------------------------------------------
# The rows, with their features, on the driver
# ---------------------------------------------------------------------------

def _with_features(spark, cfg: JobConfig, rows: DataFrame, stored: DataFrame | None,
                   text: str | None, what: str) -> DataFrame:
    """``rows`` with an embedding column: the stored one, or their texts embedded now."""
    if stored is not None:
        joined = rows.join(stored, ROW_ID, "left")
        if text is None:
            return joined.where(F.col(EMBEDDING).isNotNull())
        missing = joined.where(F.col(EMBEDDING).isNull()).drop(EMBEDDING)
        if missing.limit(1).count() == 0:
            return joined.where(F.col(EMBEDDING).isNotNull())
        return joined.where(F.col(EMBEDDING).isNotNull()).unionByName(
            embedded_rows(spark, cfg, missing, text))
    if text is None:
        raise InputError(f"{what} have neither vectors nor texts to embed.")
    log(f"evaluate: embedding {what}")
    return embedded_rows(spark, cfg, rows, text)


def _sample(frame: DataFrame, n: int, seed: int) -> DataFrame:
    """The ``n`` rows first in the seeded order, with their hash (``HASH``) to order by later."""
    return seeded_sample(frame, n, seed, keep_hash=HASH)


def _collect(frame: DataFrame, what: str):
    """A pandas frame in hash order, and its embeddings as float32 ``[n, d]``."""
    pdf = frame.orderBy(HASH, ROW_ID).drop(HASH).toPandas()
    if len(pdf) == 0:
        raise InputError(f"{what} has no rows to evaluate with.")
    x = np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what} holds NaN or inf feature values; fix the vectors.")
    return pdf, x


def row_step_ran(spark, cfg: JobConfig, plan: reuse.Plan, eplan: reuse.EvaluatePlan) -> bool:
    """Whether the selection evaluated is this config's run and explode's row step made it
    (then whole clusters, what ``select.refine: clusters`` gives, are compared too)."""
    if eplan.selection != plan.run_id:
        return False
    last = stagelog.latest(spark, cfg.output.path, "explode", plan.run_id)
    if last is None or last["status"] != "done" or last["fingerprint"] != plan.explode:
        return False
    return bool(json.loads(last["detail"] or "{}").get("row_step"))


def selected_ids(spark, cfg: JobConfig, run_id: str, pool: Side) -> DataFrame:
    """The row ids of run ``run_id``'s selected rows, computed as the pool's."""
    return selected_frame(spark, cfg.output.path, run_id, pool, "evaluate.selection",
                          "evaluate a selection").select(ROW_ID).distinct()


# ---------------------------------------------------------------------------
# DSIR (the data-selection package), on the driver
# ---------------------------------------------------------------------------

def _gaf_probe(cfg: JobConfig, classes: list):
    """``probe(x, y, test_x, test_y) -> accuracy`` for :func:`gio_core.quality.compare`: the
    train stage's probe (GAF or SGD, logistic or MLP, as the train section says), scored on the
    held-out rows after its last epoch."""
    options = probe_options(cfg.train)

    def probe(x, y, test_x, test_y) -> float:
        try:
            _, records = gaf.fit_probe(np.asarray(x, np.float32), np.asarray(y).astype(str),
                                       np.asarray(test_x, np.float32),
                                       np.asarray(test_y).astype(str), classes, **options)
        except (ValueError, FloatingPointError) as err:
            raise InputError(f"train: {err}") from None
        return float(records[-1]["val_accuracy"])
    return probe


def dsir_rows(pool_texts: list, target_texts: list, budget: int, seed: int = 0) -> np.ndarray:
    """``budget`` pool rows (indices) resampled by DSIR's hashed n-gram importance weights
    against ``target_texts`` (``data_selection.HashedNgramDSIR``, minimum length 1 token, so
    short texts are kept; DSIR draws with NumPy's global generator, seeded here)."""
    from data_selection import HashedNgramDSIR
    with contextlib.redirect_stderr(io.StringIO()):     # its progress bars, one per pass
        return _dsir(HashedNgramDSIR, pool_texts, target_texts, budget, seed)


def _dsir(dsir_class, pool_texts: list, target_texts: list, budget: int, seed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw, tgt = os.path.join(tmp, "raw.jsonl"), os.path.join(tmp, "target.jsonl")
        for path, texts in ((raw, pool_texts), (tgt, target_texts)):
            with open(path, "w", encoding="utf-8") as f:
                for i, t in enumerate(texts):
                    f.write(json.dumps({"text": str(t), "i": i}) + "\n")
        d = dsir_class([raw], [tgt], cache_dir=os.path.join(tmp, "cache"), num_proc=1,
                            min_example_length=1)
        d.fit_importance_estimator(num_tokens_to_fit="all")
        d.compute_importance_weights()
        np.random.seed(seed)
        d.resample(out_dir=os.path.join(tmp, "out"), num_to_sample=budget,
                   cache_dir=os.path.join(tmp, "resample"))
        picked: list = []
        for name in sorted(os.listdir(os.path.join(tmp, "out"))):
            with open(os.path.join(tmp, "out", name), encoding="utf-8") as f:
                picked += [json.loads(line)["i"] for line in f if line.strip()]
    return np.asarray(picked, np.int64)


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------

NAMES = {"selection": "the selection", "gio_rows": "GIO on rows", "random": "random",
         "k_center": "k-center", "nn_round_robin": "NN round robin", "dsir": "DSIR",
         "whole_clusters": "whole clusters"}


def _served_by_share(spark, cfg: JobConfig, plan: reuse.Plan, run_id: str) -> DataFrame:
    """``(row_id, SERVED)``: the domain whose share chose each selected row's cluster
    (``selection_domains`` through the clustering's ``pool_assignments``)."""
    domains = tables.read_key(spark, cfg.output.path, "selection_domains", run_id) \
        .select("cluster_id", F.col("domain").alias(SERVED)).distinct()
    return (tables.read_key(spark, cfg.output.path, "pool_assignments", plan.clustering_id)
            .select(ROW_ID, "cluster_id").join(domains, "cluster_id").drop("cluster_id"))


def per_domain(cfg: JobConfig, pdf, x, marked, tpdf, tx, hpdf, hx, bandwidth: float) -> dict:
    """Per target domain: the selection's rows in the pool's sample that serve it (with
    ``select.shares``, those its share chose; else those whose nearest target row is of the
    domain), their share of the selection's rows there and the share asked, and, where the
    held-out rows carry the target's domain column, the MMD² between those rows and the
    domain's held-out rows, beside that of as many of the sample's rows taken at random (seeded)."""
    from gio_core import mmd_rbf, nearest_domain
    chosen = np.flatnonzero(marked)
    target_domains = tpdf[TARGET_DOMAIN].astype(str).to_numpy()
    if cfg.select.shares is not None and SERVED in pdf.columns:
        served = pdf[SERVED].fillna("(none)").astype(str).to_numpy()[chosen]
    else:
        served = nearest_domain(x[chosen], tx, target_domains).astype(str)
    held = (hpdf[TARGET_DOMAIN].astype(str).to_numpy() if TARGET_DOMAIN in hpdf.columns
            else None)
    asked = {str(k): float(v) for k, v in (cfg.select.shares or {}).items()}
    rng = np.random.default_rng(cfg.evaluate.seed)
    out = {}
    for name in sorted(set(target_domains)):
        rows = chosen[served == name]
        entry = {"rows": int(len(rows)), "share": len(rows) / max(1, len(chosen)),
                 "asked": asked.get(name), "mmd": None, "random_mmd": None}
        mine = None if held is None else hx[held == name]
        if len(rows) and mine is not None and len(mine):
            entry["mmd"] = float(mmd_rbf(x[rows], mine, bandwidth=bandwidth))
            pick = rng.choice(len(x), size=len(rows), replace=False)
            entry["random_mmd"] = float(mmd_rbf(x[pick], mine, bandwidth=bandwidth))
        out[name] = entry
    return out


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(eval_id: str, run_id: str, results: list, detail: dict) -> str:
    """The results as a Markdown table, with the sample's sizes."""
    lines = [f"### {eval_id}: run {run_id}", "",
             f"{detail['sample_rows']} pool rows sampled ({detail['selected_in_sample']} of them "
             f"in the selection, which holds {detail['selected_rows']} rows; "
             f"{detail['heldout_in_pool']} pool rows left out as held-out rows); "
             f"{detail['target_rows']} target rows; {detail['heldout_rows']} held-out rows; "
             f"RBF width {detail['bandwidth']:.4g}.", "",
             "| method | rows | MMD² | kNN KL | share | recall | accuracy | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['method']} | {r['rows']} | {r['mmd']:.5f} | {_fmt(r['knn_kl'])} | "
                     f"{_fmt(r['share'])} | {_fmt(r['recall'])} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['wall_s'], 2)} |")
    if detail.get("per_domain"):
        lines += ["", "Per target domain (the selection's rows in the sample that serve it):", "",
                  "| domain | rows | share | asked | MMD² to its held-out rows | random rows |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, d in detail["per_domain"].items():
            lines.append(f"| {name} | {d['rows']} | {d['share']:.3f} | {_fmt(d['asked'])} | "
                         f"{_fmt(d['mmd'], 5)} | {_fmt(d['random_mmd'], 5)} |")
    return "\n".join(lines) + "\n"


def save_plot(path: str, eval_id: str, results: list) -> bool:
    """MMD² (and accuracy, when measured) per method as bars; written to a temporary name
    first, then renamed into place. Skipped, with a warning, where matplotlib is not
    installed."""
    if plotting("evaluate: the plot", log) is None:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    os.makedirs(os.path.dirname(path), exist_ok=True)
    accuracy = all(r["accuracy"] is not None for r in results)
    fig = Figure(figsize=(9 if accuracy else 5, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if accuracy else 1)
    axes = list(axes) if accuracy else [axes]
    names = [r["method"] for r in results]
    colours = ["C3" if n == "selection" else "C0" for n in names]
    axes[0].barh(names, [r["mmd"] for r in results], color=colours)
    axes[0].set_xlabel("MMD² to the held-out rows (lower is closer)")
    axes[0].invert_yaxis()
    if accuracy:
        axes[1].barh(names, [r["accuracy"] for r in results], color=colours)
        axes[1].set_xlabel("probe accuracy on the held-out rows")
        axes[1].invert_yaxis()
        axes[1].set_yticklabels([])
    fig.suptitle(f"{eval_id}: {results[0]['rows']} rows each", fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.part.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    return True


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def stored_results(spark, output: str, eval_id: str, fp: str) -> list:
    rows = (tables.read_key(spark, output, "evaluations", eval_id)
            .where(F.col("eval_fingerprint") == fp).collect())
    order = {m: i for i, m in enumerate(NAMES)}
    return sorted(({k: r[k] for k in ("method", "rows", "mmd", "knn_kl", "share", "recall",
                                      "accuracy", "wall_s")} for r in rows),
                  key=lambda r: order.get(r["method"], len(order)))


def run_evaluate(spark, cfg: JobConfig, plan: reuse.Plan, eplan: reuse.EvaluatePlan,
                 inp: EvaluateInput | None, pool: Side, target: Side) -> list:
    """Evaluates and commits (unless done); returns one dict of metrics per method."""
    from gio_core.quality import compare
    v = cfg.evaluate
    key, fp = eplan.eval_id, eplan.fingerprint

    def compute():
        if inp is None:
            raise RuntimeError("evaluate: the inputs were not checked; call check_evaluate_input "
                               "first.")
        configure_jax(cfg.runtime)
        started = dt.datetime.now()
        t0 = time.perf_counter()
        dsir = "dsir" in v.methods
        pool_text = None if EMBEDDING in pool.frame.columns else pool.src.text_column
        target_text = None if EMBEDDING in target.frame.columns else target.src.text_column

        # The pool's sample, each row marked when the selection holds it.
        cols = [F.col(ROW_ID)]
        if v.label_column is not None:
            cols.append(F.coalesce(F.col(v.label_column).cast("string"), F.lit("(null)"))
                        .alias(LABEL))
        if v.domain_column is not None:
            cols.append(F.col(v.domain_column).cast("string").alias(DOMAIN))
        if pool_text is not None:
            cols.append(F.col(pool_text))
        # Held-out rows that are pool rows too (the same row id) are left out of what the methods
        # choose from: none may score by picking the rows it is measured against.
        candidates = pool.frame.select(*cols).join(inp.heldout.select(ROW_ID), ROW_ID, "left_anti")
        if cfg.decontaminate.enabled:      # nor the rows the clustering set aside as copies
            candidates = candidates.join(
                tables.read_key(spark, cfg.output.path, "set_aside", plan.clustering_id)
                .select(F.col("row_id").alias("_aside")), F.col(ROW_ID).cast("string")
                == F.col("_aside"), "left_anti")
        sample = _sample(candidates, v.sample_rows, v.seed)
        chosen = selected_ids(spark, cfg, eplan.selection, pool)
        selected_total = chosen.count()
        stored_pool = stored_embeddings(spark, cfg, pool, *plan.embeddings_of("pool"))
        sample = (_with_features(spark, cfg, sample, stored_pool, pool_text, "the pool's sample")
                  .join(chosen.withColumn(IN_SELECTION, F.lit(True)), ROW_ID, "left"))
        clusters = row_step_ran(spark, cfg, plan, eplan)
        if clusters:
            sample = sample.join(whole_cluster_rows(spark, cfg, plan, pool.frame)
                                 .withColumn(IN_CLUSTERS, F.lit(True)), ROW_ID, "left")
        if cfg.target.domain_column is not None and cfg.select.shares is not None:
            sample = sample.join(_served_by_share(spark, cfg, plan, eplan.selection), ROW_ID,
                                 "left")
        pdf, x = _collect(sample, "the pool's sample")
        heldout_in_pool = pool.frame.join(inp.heldout.select(ROW_ID), ROW_ID, "left_semi").count()
        marked = pdf[IN_SELECTION].eq(True).to_numpy(bool)
        if not marked.any():
            raise InputError(f"none of run {eplan.selection}'s {selected_total} selected rows is "
                             f"among the {len(pdf)} pool rows sampled; raise evaluate.sample_rows "
                             f"(now {v.sample_rows}) so that the sample holds some of them.")

        tcols = [F.col(ROW_ID)] + ([F.col(target_text)] if target_text is not None else [])
        if cfg.target.domain_column is not None:
            tcols.append(F.col(cfg.target.domain_column).cast("string").alias(TARGET_DOMAIN))
        tsample = _sample(target.frame.select(*tcols), v.sample_rows, v.seed)
        stored_target = stored_embeddings(spark, cfg, target, *plan.embeddings_of("target"))
        tpdf, tx = _collect(_with_features(spark, cfg, tsample, stored_target, target_text,
                                           "the target's rows"), "the target sample")
        hsample = _sample(inp.heldout, v.max_heldout, v.seed)
        if inp.text is not None:
            hsample = _with_features(spark, cfg, hsample, None, inp.text,
                                     f"{HELDOUT}'s rows")
        hpdf, hx = guarded(lambda: _collect(hsample, HELDOUT), HELDOUT, v.heldout)
        collect_s = time.perf_counter() - t0
        if hx.shape[0] <= 10:
            raise InputError(f"{HELDOUT} holds {hx.shape[0]} usable rows; the metrics need at least "
                             "11 (the kNN estimates look at 10 neighbours).")

        domains = None
        if v.domain_column is not None:
            domains = ([str(d) for d in inp.target_domains] if inp.target_domains is not None
                       else sorted(set(hpdf[DOMAIN].astype(str))))
        extra = {}
        whole = (np.flatnonzero(pdf[IN_CLUSTERS].eq(True).to_numpy(bool)) if clusters
                 else np.zeros(0, np.int64))
        if whole.size:          # the rows whole clusters give, at most as many as the others
            extra["whole_clusters"] = lambda budget: whole[:budget]
        if dsir:
            ptexts, ttexts = pdf[pool_text].astype(str).tolist(), tpdf[target_text].astype(str).tolist()
            extra["dsir"] = lambda budget: dsir_rows(ptexts, ttexts, budget, v.seed)
        from gio_core import median_bandwidth
        bandwidth = median_bandwidth(hx)
        probe = None
        if v.label_column is not None and v.probe == "gaf":
            probe = _gaf_probe(cfg, sorted(set(pdf[LABEL].astype(str)) | set(hpdf[LABEL].astype(str))))
            need = cfg.train.batch_size * cfg.train.microbatches
            if int(marked.sum()) < need:
                raise InputError(f"evaluate.probe gaf trains on the {int(marked.sum())} sampled rows "
                                 f"each method picks, fewer than one step needs (train.batch_size "
                                 f"{cfg.train.batch_size} x train.microbatches "
                                 f"{cfg.train.microbatches} = {need}); lower them, raise "
                                 "evaluate.sample_rows, or use evaluate.probe: logistic.")
        log(f"evaluate: run {eplan.selection}: {int(marked.sum())} of its {selected_total} rows are "
            f"in the {len(pdf)} pool rows sampled ({heldout_in_pool} pool rows left out: they are "
            f"held-out rows); comparing with "
            f"{', '.join(v.methods) or 'no other method'} at that budget on {hx.shape[0]} held-out "
            "rows")
        t1 = time.perf_counter()
        results = compare(
            x, tx, hx, np.flatnonzero(marked), [m for m in v.methods if m != "dsir"],
            pool_labels=pdf[LABEL].astype(str).to_numpy() if v.label_column else None,
            heldout_labels=hpdf[LABEL].astype(str).to_numpy() if v.label_column else None,
            pool_domains=pdf[DOMAIN].astype(str).to_numpy() if domains is not None else None,
            target_domains=domains, seed=v.seed, bandwidth=bandwidth, extra=extra, probe=probe)
        compare_s = time.perf_counter() - t1
        by = {r["method"]: r for r in results}
        detail = {"sample_rows": len(pdf), "selected_in_sample": int(marked.sum()),
                  "heldout_in_pool": int(heldout_in_pool),
                  "selected_rows": int(selected_total), "target_rows": int(tx.shape[0]),
                  "heldout_rows": int(hx.shape[0]), "bandwidth": bandwidth,
                  "target_domains": domains, "heldout": inp.report,
                  "timings": {"collect_s": round(collect_s, 3), "compare_s": round(compare_s, 3)}}
        if cfg.target.domain_column is not None:
            detail["per_domain"] = per_domain(cfg, pdf, x, marked, tpdf, tx, hpdf, hx, bandwidth)
            for name, d in detail["per_domain"].items():
                log(f"evaluate: domain {name!r}: {d['rows']} selected rows in the sample, share "
                    f"{d['share']:.3f}" + (f" (asked {d['asked']:g})" if d["asked"] else "")
                    + (f", MMD² {d['mmd']:.5f} to its held-out rows (random rows as many: "
                       f"{d['random_mmd']:.5f})" if d["mmd"] is not None else ""))
        if "gio_rows" in by and by["gio_rows"]["mmd"] > 0:
            detail["clustering_cost"] = by["selection"]["mmd"] / by["gio_rows"]["mmd"]
        for r in results:
            log(f"evaluate: {NAMES.get(r['method'], r['method']):<15} {r['rows']:>6} rows  MMD² "
                f"{r['mmd']:.5f}" + (f"  kNN KL {r['knn_kl']:.3f}" if r["knn_kl"] is not None else "")
                + (f"  share {r['share']:.3f}" if r["share"] is not None else "")
                + (f"  accuracy {r['accuracy']:.3f}" if r["accuracy"] is not None else ""))
        if "clustering_cost" in detail:
            log(f"evaluate: the selection's MMD² is {detail['clustering_cost']:.2f}x that of GIO on "
                "the sampled rows themselves (what clustering costs, or gains)")

        versions = json.dumps(library_versions())
        params = json.dumps(cfg.recorded(), default=str)
        finished = dt.datetime.now()
        rows = [(key, fp, eplan.selection, r["method"], int(r["rows"]), float(r["mmd"]),
                 r["knn_kl"], r["share"], r["recall"], r["accuracy"], r["wall_s"], started, finished,
                 params, json.dumps(detail, sort_keys=True, default=str), versions)
                for r in results]
        return rows, results, detail

    def commit(computed):
        rows, results, detail = computed
        tables.replace_key(spark, spark.createDataFrame(rows, tables.EVALUATIONS), cfg.output.path,
                           "evaluations", key)
        report = os.path.join(cfg.output.path, "reports", f"{key}_evaluation.md")
        tables.put_file(spark, report, lambda path: _write_text(
            path, markdown(key, eplan.selection, results, detail)))
        tables.put_file(spark, os.path.join(cfg.output.path, "plots", f"{key}_evaluation.png"),
                        lambda path: save_plot(path, key, results))
        log(f"evaluate: table in {report}")
        log(f"evaluate: {key} -> {tables.table_path(cfg.output.path, 'evaluations')}")
        return results, {"methods": [r["method"] for r in results], "rows": results[0]["rows"]}

    def reused():
        log(f"evaluate: reusing {key}")
        return stored_results(spark, cfg.output.path, key, fp)

    return run_stage(spark, cfg.output.path, "evaluate", key, fp, compute, commit, reused)


def evaluate_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    eplan = reuse.make_evaluate_plan(spark, cfg, plan)
    pool = read_only(spark, cfg, plan, "pool", log)
    target = read_only(spark, cfg, plan, "target", log)
    check_outputs(spark, cfg, pool.schema)
    inp = evaluate_input_unless_done(spark, cfg, eplan, pool, side_dim(cfg, pool))
    run_evaluate(spark, cfg, plan, eplan, inp, pool, target)


STAGE = Stage(
    "evaluate", "the evaluate stage alone: the selection against random, k-center, nearest "
    "neighbours, GIO on rows (and DSIR) on held-out target rows", "evaluate", both_sides,
    needs=("explode",), outputs=("evaluations",), command=evaluate_command,
    requires="the config has no evaluate stage: set evaluate.heldout.path to rows of the "
             "target's distribution that the target sample left out.",
    in_run=lambda cfg: cfg.evaluate.enabled,
    plan=lambda run: reuse.make_evaluate_plan(run.spark, run.cfg, run.plan, in_run=True),
    check=lambda run, pending, pool, dim: evaluate_input_unless_done(
        run.spark, run.cfg, run.plans["evaluate"], pool, dim),
    step=lambda run: run_evaluate(run.spark, run.cfg, run.plan, run.plans["evaluate"],
                                  run.inputs.checked.get("evaluate"), run.inputs.pool,
                                  run.inputs.target))
