"""The explode stage: from chosen clusters back to rows.

Two ways, by ``select.refine`` (see :func:`row_step_plan`):

* **the row step** (``auto`` with a row budget or, without one, where the selection sizes
  itself, ``select.own_size`` ``auto`` (the default) or ``density``; or ``rows``): the
  candidates are the rows of the
  chosen clusters and of the pool clusters nearest the target's centroids
  (:func:`gio_core.candidate_clusters`), ``select.candidates`` times as many rows as the
  selection takes; ``gio_core.select`` picks among them, against a seeded sample of at most
  ``select.max_target_rows`` target rows, with the select section's options, the ``mmd`` rule
  and its fill, exactly as many rows as whole clusters would have given. Where the candidate
  clusters hold at most ``select.max_candidates`` rows, on the driver (:func:`row_picks`);
  else first in Spark tasks, one per part of space (:func:`_task_picks`), then on the driver
  over the parts' picks where those fit; where they do not, ``auto`` takes whole clusters
  and ``rows`` has the tasks pick the selection (:func:`rounds`). Without a row budget the
  driver sizes the selection itself (:func:`gio_core.proportional_size` of the candidate
  rows) where the candidates fit it; under ``select.own_size: auto`` select's chosen clusters
  size it where they do not. Rows are sorted by row id wherever they are
  collected, so the same rows give the same picks whatever the sources' order. ``rank`` is
  then the row's pick, ``cluster_id`` its cluster.
* **whole clusters** (``clusters``, or ``auto`` without a budget where select's clusters
  size the selection: ``select.own_size: clusters``, or candidates too many for the driver;
  and with ``select.shares``, which need a budget, each cluster serving one domain):
  ``broadcast(selection of this run) JOIN pool_assignments (of the run's clustering) JOIN pool
  rows``, every usable pool row of every chosen cluster (with a row budget, the last cluster
  sampled down to what is left of it); ``rank`` is the pick that chose the row's cluster.

Either way the rows carry the pool's own columns plus ``cluster_id``, ``rank`` and ``run_id``,
are written to ``selected_rows``, replacing this run's rows in one transaction, and summarised
on stdout; the row step's figures (where it ran, candidate rows and clusters, target rows, MMD²
to the target, seconds) go into the stage log's record.

Before it writes, it checks that the run's ``selection`` and ``runs`` rows are the ones this run's
select committed; if a concurrent run with the same ``run_id`` and other parameters replaced them,
it stops with a :class:`ConcurrentRunError` instead of mixing the two.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T

import gio_core
from jobs.common import faults
from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.frames import EMBEDDING, ROW_ID, seed_hash, seeded_sample
from jobs.common.log import bar, detail, log, took
from jobs.common.runtime import PeakMemory, configure_jax
from jobs.config import JobConfig, engine_options, row_budget, sizes_itself
from jobs.io import tables
from jobs.io.session import is_connect
from jobs.io.sources import Side, check_outputs
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.inputs import read_only
from jobs.state.stored import (
    cluster_cut, clustered_rows, collect_centroids, explode_frame, load_weights,
    stored_embeddings)


@dataclass(frozen=True)
class RowStep:
    """What the row step does: pick ``size`` rows among at least ``candidates`` candidate rows
    (``run`` False: whole clusters, and ``why`` says why, or is empty); ``sized``: the row step
    decides the size itself (``select.own_size`` ``auto`` or ``density`` without a row
    budget), ``size`` being then what whole clusters give, which sets the candidates."""
    run: bool
    size: int
    candidates: int
    why: str = ""
    sized: bool = False


def row_step_plan(s, budget: int | None, size: int, pool_rows: int) -> RowStep:
    """Whether the row step runs for a selection of ``size`` rows (what whole clusters give,
    with the row budget's cut) out of ``pool_rows``: ``select.refine`` ``clusters`` never,
    ``auto`` when there is a row budget or the selection sizes itself
    (:func:`jobs.config.sizes_itself`: ``select.own_size`` ``auto``, the default, or
    ``density``, without a budget), ``rows`` always; and only where it has a choice (``size``
    rows, more than none and fewer than the pool's). Its candidates: ``ceil(select.candidates
    * size)`` rows, at most the pool. Without a budget under ``auto`` or ``density``: the row
    step sizes the selection (``sized``)."""
    want = min(int(math.ceil(round(s.candidates * size, 9))), pool_rows)
    sized = sizes_itself(s)
    if s.refine == "clusters" or (s.refine == "auto" and budget is None and not sized) or \
            getattr(s, "shares", None) is not None:      # shares: whole clusters, one domain each
        return RowStep(False, size, want)
    if size == 0:
        return RowStep(False, size, want, "select chose no rows")
    if size >= pool_rows:
        return RowStep(False, size, want, f"the selection is the whole pool ({pool_rows} rows)")
    return RowStep(True, size, want, sized=sized)


def placed(s, step: RowStep, held: int) -> tuple[RowStep, str | None]:
    """``step`` and where it runs (:func:`rounds`) for candidate clusters holding ``held``
    rows. Where a step that sizes the selection under ``select.own_size: auto`` cannot run on
    the driver, select's chosen clusters size it instead (said in the log): whole clusters
    under ``select.refine: auto``, the row step as with a budget under ``rows``. A step that
    cannot run comes back with ``run`` False and its reason."""
    where, why = rounds(s, held, step.size, step.sized)
    if where is None and step.sized and s.own_size == "auto":
        log(f"explode: the selection's own size by density needs its {held} candidate rows on "
            f"the driver, more than select.max_candidates={s.max_candidates}; select's chosen "
            f"clusters decide it instead ({step.size} rows; select.own_size: auto). Raise "
            "select.max_candidates to size it by density, or set a row budget")
        step = dataclasses.replace(step, sized=False)
        where, why = rounds(s, held, step.size) if s.refine == "rows" else (None, "")
    if where is None:
        step = RowStep(False, step.size, step.candidates, why)
    return step, where


@dataclass(frozen=True)
class Candidates:
    """The candidate clusters (ids, in order: select's picks first), their centroids (in the
    clusters' space) and rows, and how many of them select chose."""
    ids: list
    centroids: np.ndarray
    sizes: np.ndarray
    chosen: int

    @property
    def rows(self) -> int:
        return int(self.sizes.sum())


def rounds(s, held: int, size: int, sized: bool = False) -> tuple[str | None, str]:
    """Where the row step runs for candidate clusters holding ``held`` rows: ``driver`` (they
    fit ``select.max_candidates``), ``tasks+driver`` (Spark tasks pick :func:`part_picks`
    rows, which fit, and the driver the selection among them), ``tasks`` (the tasks pick the
    selection itself: ``select.refine: rows`` only), or None (``auto``: whole clusters; the
    reason comes second). ``sized`` (the step decides the size): the driver only (under
    ``select.own_size: auto`` the caller then lets select's clusters decide the size)."""
    if held <= s.max_candidates:
        return "driver", ""
    if sized:
        return None, (f"select.own_size: density sizes the selection on the driver, and its "
                      f"candidate clusters hold {held} rows, more than select.max_candidates="
                      f"{s.max_candidates}; raise select.max_candidates, or set a row budget "
                      "(select.max_rows or select.max_fraction)")
    picks = part_picks(s, size, held)
    if size < picks <= s.max_candidates:
        return "tasks+driver", ""
    if s.refine == "rows":
        return "tasks", ""
    over = (f"its candidate clusters hold {held} rows, more than select.max_candidates="
            f"{s.max_candidates}, and ")
    if picks <= size:
        over += (f"select.candidates={s.candidates:g} leaves Spark tasks nothing to narrow "
                 "for a second round on the driver")
    else:
        over += (f"the {picks} rows Spark tasks would pick for the driver's second round do "
                 "not fit it either")
    return None, (over + " (the tasks alone, select.refine: rows, were measured further from "
                  "held-out rows than whole clusters at 1,000,000 rows); raise "
                  "select.max_candidates for the row step")


def part_picks(s, size: int, held: int) -> int:
    """The rows Spark tasks pick for the driver's second round: ``(1 + select.candidates) / 2``
    times the selection (halfway between it and its candidates), at most ``held``."""
    return min(held, int(math.ceil(round((1 + s.candidates) / 2 * size, 9))))


def candidates_of(spark, cfg: JobConfig, plan: reuse.Plan, picks: list,
                  step: RowStep) -> Candidates:
    """The chosen clusters and those nearest the target (:func:`gio_core.candidate_clusters`).

    Raises:
      ConcurrentRunError: a chosen cluster is not among the clustering's centroids.
    """
    cents = collect_centroids(spark, cfg, plan.clustering_id)
    pool_ids, pool_c, pool_sizes = cents["pool"]
    index = {int(c): i for i, c in enumerate(pool_ids)}
    missing = sorted({c for c, _ in picks if c not in index})
    if missing:
        raise ConcurrentRunError(
            f"run {plan.run_id} chose cluster(s) {missing[:5]} that clustering "
            f"{plan.clustering_id} does not hold: its tables were replaced while this run ran. "
            "Run again (give each config its own run_id, or none).")
    chosen = [index[c] for c, _ in picks]
    near = gio_core.candidate_clusters(pool_c, cents["target"][1], pool_sizes, chosen,
                                       step.candidates)
    return Candidates([int(pool_ids[i]) for i in near], np.asarray(pool_c)[near],
                      np.asarray(pool_sizes, np.int64)[near], len(dict.fromkeys(chosen)))


def _matrix(frame: DataFrame, what: str, *extra: str):
    """``(pandas frame of row_id and extra, float32 [n, d])`` of rows with an embedding, in row
    id order."""
    pdf = (frame.select(ROW_ID, *extra,
                        F.col(EMBEDDING).cast("array<float>").alias(EMBEDDING))
           .orderBy(ROW_ID).toPandas())
    if len(pdf) == 0:
        raise InputError(f"the row step found no {what}; run quantize again.")
    return pdf.drop(columns=[EMBEDDING]), np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32)


def _in_space(x: np.ndarray, scale, cosine: bool) -> np.ndarray:
    """Rows in the clusters' space: scaled by learnt weights (``scale``, or None) and, for
    ``cosine``, at unit length, as quantize put them."""
    if scale is not None:
        x = x * scale
    if cosine:
        from gio_core.kmeans import normalise
        x = normalise(x)
    return x


def _row_options(s, size: int, bandwidth: float | None) -> dict:
    """gio_core.select's options for the row step: the select section's, the ``mmd`` rule and
    fill to ``size`` picks; ``bandwidth`` None: the median squared distance between the target
    rows it matches."""
    options = engine_options(s)
    options.update(stop_criterion="mmd", fill="mmd", max_iter=size, max_rows=None,
                   resets_allowed=False, mmd_bandwidth=bandwidth)
    return options


def row_picks(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side, target: Side,
              assignments: DataFrame, cands: Candidates, step: RowStep,
              where: str = "driver") -> tuple[DataFrame, dict]:
    """The row step on the rows of the candidate clusters: ``(ROW_ID, cluster_id, rank)`` of
    the rows it picks, and its figures. ``where``: see :func:`rounds` (Spark tasks:
    :func:`_task_picks`)."""
    s = cfg.select
    with PeakMemory() as memory:      # the driver's memory for the step
        t0 = time.perf_counter()
        wanted = spark.createDataFrame([(c,) for c in cands.ids], "cluster_id int")
        members = F.broadcast(wanted).join(assignments.select(ROW_ID, "cluster_id"), "cluster_id")
        pool_e = stored_embeddings(spark, cfg, pool, *plan.embeddings_of("pool"))
        target_e = stored_embeddings(spark, cfg, target, *plan.embeddings_of("target"))
        if pool_e is None or target_e is None:
            raise InputError(f"the embeddings of clustering {plan.clustering_id} are gone from "
                             f"{cfg.output.path!r}; run quantize (or the whole pipeline) again.")
        scale = (load_weights(spark, cfg, plan.weights_id, plan.weights).astype(np.float32)
                 if plan.weights_id is not None else None)
        cosine = cfg.quantize.distance == "cosine"
        target_ids, y = _matrix(seeded_sample(target_e, s.max_target_rows, s.seed), "target rows")
        y = _in_space(y, scale, cosine)
        configure_jax(cfg.runtime)
        id_field = assignments.schema[ROW_ID]
        if where == "driver":
            cand, x = _matrix(members.join(pool_e, ROW_ID), "candidate rows", "cluster_id")
            ids, clusters, x = cand[ROW_ID].tolist(), cand["cluster_id"].tolist(), \
                _in_space(x, scale, cosine)
            figures = {"where": where, "candidate_rows": len(ids)}
            if step.sized:
                size = _own_size(y, x, step.size, figures, s.own_size)
            else:
                size = _usable(step.size, len(ids))
            _announce(size, len(ids), cands, len(y))
        else:
            ids, clusters, x, figures, size = _task_picks(spark, members, pool_e, y, scale, cosine,
                                                          cfg, step, cands, id_field, where)
            if x is not None:
                log(f"explode: the row step on the driver: {size} of the parts' {len(ids)} picks")
        figures["collect_s"] = round(time.perf_counter() - t0 - figures.get("tasks_s", 0)
                                     - figures.get("own_size_s", 0), 3)
        if x is not None:                      # one selection on the driver: all candidates or
            t1 = time.perf_counter()           # the parts' picks
            result = _select_rows(y, x, s, size)
            ids, clusters = [ids[i] for i in result.indices], [clusters[i] for i in result.indices]
            if "tasks_s" in figures:
                figures["parts_fill_picks"] = figures["fill_picks"]
            figures.update(mmd=float(result.mmd[-1]) if len(result.mmd) else None,
                           fill_picks=int(result.filled), select_s=round(time.perf_counter() - t1, 3))
    figures["driver_peak_mib"] = None if memory.grown is None else round(memory.grown, 1)
    schema = T.StructType([T.StructField(ROW_ID, id_field.dataType, False),
                           T.StructField("cluster_id", T.IntegerType(), False),
                           T.StructField("rank", T.IntegerType(), False)])
    rows = spark.createDataFrame(
        [(rid, int(c), rank + 1) for rank, (rid, c) in enumerate(zip(ids, clusters,
                                                                       strict=True))], schema)
    figures.update(candidate_clusters=len(cands.ids), target_rows=len(target_ids),
                   rows=len(ids))
    mmd = figures.get("mmd")
    spent = took(figures["select_s"])
    if "tasks_s" in figures:
        spent = f"{took(figures['tasks_s'])} in Spark tasks" + (
            f" and {spent} on the driver" if x is not None else "")
    log(f"explode: the row step picked {len(ids)} rows in {spent} "
        f"(collect {took(figures['collect_s'])})"
        + (f", MMD² to the target {mmd:.5f}" if mmd is not None else ""))
    return rows, figures


def _own_size(y, x, clusters: int, figures: dict, setting: str) -> int:
    """The selection's size without a row budget (``select.own_size`` ``density``, or ``auto``
    where the row step can run): :func:`gio_core.proportional_size` of the candidate rows
    ``x`` for the target rows ``y``; ``setting``: ``select.own_size``, for the log."""
    t = time.perf_counter()
    size = gio_core.proportional_size(y, x)
    figures.update(own_size=size, clusters_size=clusters,
                   own_size_s=round(time.perf_counter() - t, 3))
    log(f"explode: the selection's own size: {size} rows, as many as the candidates hold in "
        f"the target's proportions (whole clusters: {clusters}; select.own_size: {setting})")
    if size >= len(x):
        log(f"explode: warning: the own size takes every one of the {len(x)} candidate rows, "
            "so the candidates may be what limits it; raise select.candidates to let it grow")
    return size


def _usable(size: int, rows: int) -> int:
    if rows < size:
        log(f"explode: warning: the candidate clusters hold {rows} usable rows, fewer than the "
            f"{size} to select; the row step selects them all")
    return min(size, rows)


def _announce(size: int, rows: int, cands: Candidates, target_rows: int,
              tasks: str = "") -> None:
    log(f"explode: the row step{' in Spark tasks' if tasks else ''}: {size} of {rows} candidate "
        f"rows from {len(cands.ids)} clusters ({cands.chosen} chosen, the rest nearest the "
        f"target), against {target_rows} target rows{tasks}")


def _select_rows(y, x, s, size: int):
    """``gio_core.select`` of ``size`` rows of ``x`` against ``y``, with a progress bar."""
    picks_bar = bar("explode: rows", total=size, unit="row")
    every = max(1, size // 20)

    def progress(pick, row, kl):
        picks_bar.update(pick - picks_bar.n)
        if pick % every == 0:
            detail(f"explode: row pick {pick}: KL {kl:.4f}")

    try:
        return gio_core.select(y, x, callback=progress, **_row_options(s, size, None))
    finally:
        picks_bar.close()


def _task_picks(spark, members: DataFrame, pool_e: DataFrame, y, scale, cosine: bool,
                cfg: JobConfig, step: RowStep, cands: Candidates, id_field, where: str):
    """The row step's first round, in Spark tasks, for candidates over
    ``select.max_candidates`` rows: ``(row ids, cluster ids, their rows in the clusters'
    space or None, figures, the selection's size)`` of the parts' picks (``members``: the
    candidate rows' ids and clusters; ``pool_e``: the pool's stored embeddings).

    :func:`gio_core.row_regions` cuts the candidate clusters and the target rows into regions
    of space whose clusters hold at most ``select.max_candidates`` rows, each with at least
    ``select.k + 1`` target rows (a region that cannot be cut further and is still over the
    cap is dealt into equal parts by a seeded hash of the row ids, each with the region's
    target rows). Each part is one ``applyInPandas`` group: its rows sorted by row id,
    ``gio_core.select`` against its target rows with the kernel width of all of them.

    Picks are shared out among the parts in proportion to their regions' target rows (a
    region's parts by their rows; :func:`gio_core.share_out`: a part that holds fewer rows
    passes the rest on). With ``where`` ``tasks+driver``, the parts pick :func:`part_picks`
    rows and return them with their vectors, sorted by row id, for a second round on the
    driver over their union; else they pick the selection itself and the driver interleaves
    their picks into one rank order (pick i of a part's n at ``(i - 0.5) / n``, ties by
    part), and the rows stay in the tasks (x None)."""
    s = cfg.select
    cap = s.max_candidates
    regions = gio_core.row_regions(cands.centroids, cands.sizes, y, cap, s.k + 1)
    parts = np.maximum(1, -(-regions.rows // cap))              # each region's parts
    first = np.r_[0, np.cumsum(parts)[:-1]]
    deal = spark.createDataFrame(
        [(cid, int(first[r]), int(parts[r]))
         for cid, r in zip(cands.ids, regions.cluster_region.tolist(), strict=True)],
        "cluster_id int, _first int, _parts int")
    dealt = (members.join(F.broadcast(deal), "cluster_id")
             .withColumn("part", (F.col("_first") + F.pmod(seed_hash(s.seed), F.col("_parts")))
                         .cast("int"))
             .select(ROW_ID, "cluster_id", "part"))
    counted = dict(dealt.join(pool_e.select(ROW_ID), ROW_ID).groupBy("part").count().collect())
    dealt = dealt.join(pool_e.select(ROW_ID, F.col(EMBEDDING).cast("array<float>")
                                     .alias(EMBEDDING)), ROW_ID)
    held = np.asarray([counted.get(r, 0) for r in range(int(parts.sum()))], np.int64)
    region_of = np.repeat(np.arange(len(parts)), parts)         # each part's region
    region_rows = np.bincount(region_of, weights=held, minlength=len(parts))
    targets = np.bincount(regions.target_region, minlength=len(parts))
    share = targets[region_of] * held / np.maximum(region_rows[region_of], 1)
    size = _usable(step.size, int(held.sum()))
    picks = part_picks(s, size, int(held.sum()))
    second = where == "tasks+driver" and picks > size
    quota = gio_core.share_out(picks if second else size, share, held)
    _announce(int(quota.sum()), int(held.sum()), cands, len(y),
              f", in {len(held)} parts of {cap} rows or about that ({len(parts)} regions)")
    task = partial(_part_task, y, regions.target_region, region_of, quota,
                   _row_options(s, size, gio_core.median_bandwidth(y)), scale, cosine,
                   cfg.runtime, second)
    fields = [("cluster_id", T.IntegerType()), ("part", T.IntegerType()),
              ("pick", T.IntegerType()), ("mmd", T.DoubleType()), ("filled", T.IntegerType()),
              (EMBEDDING, T.ArrayType(T.FloatType(), False))]
    schema = T.StructType([id_field] + [T.StructField(n, k, n == EMBEDDING)
                                        for n, k in fields])
    t1 = time.perf_counter()
    got = dealt.groupBy("part").applyInPandas(task, schema).toPandas()
    select_s = time.perf_counter() - t1
    got = got.assign(_at=(got["pick"] - 0.5) / quota[got["part"].to_numpy()])
    got = got.sort_values([ROW_ID] if second else ["_at", "part"], kind="stable")
    per_part = got.groupby("part").first()
    figures = {"where": where, "candidate_rows": int(held.sum()), "parts": len(held),
               "regions": len(parts), "largest_part": int(held.max()) if len(held) else 0,
               "part_picks": int(quota.sum()), "second_round": bool(second),
               "parts_mmd": (float(np.average(per_part["mmd"],
                                              weights=quota[per_part.index.to_numpy()]))
                             if len(per_part) else None),
               "fill_picks": int(per_part["filled"].sum()), "mmd": None,
               "tasks_s": round(select_s, 3), "select_s": 0.0}
    x = (_in_space(np.stack(got[EMBEDDING].to_numpy()).astype(np.float32), scale, cosine)
         if second and len(got) else None)
    return got[ROW_ID].tolist(), got["cluster_id"].tolist(), x, figures, size


def _part_task(y, target_region, region_of, quota, options, scale, cosine, runtime,
               with_rows: bool, pdf):
    """applyInPandas: one part's picks, ``(row_id, cluster_id, part, pick, mmd, filled,
    embedding)`` (the embedding null unless ``with_rows``)."""
    import pandas as pd

    faults.point("row_step:part")          # in the Python worker: a crash test kills it here
    part = int(pdf["part"].iloc[0])
    want = int(quota[part])
    pdf = pdf.sort_values(ROW_ID, kind="stable")
    vectors = np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32)
    idx, mmd, filled = np.zeros(0, np.int64), float("nan"), 0
    if want > 0:
        configure_jax(runtime)
        result = gio_core.select(y[target_region == region_of[part]],
                                 _in_space(vectors, scale, cosine),
                                 **dict(options, max_iter=want))
        idx, filled = np.asarray(result.indices, np.int64), int(result.filled)
        mmd = float(result.mmd[-1]) if len(result.mmd) else mmd
    return pd.DataFrame({
        ROW_ID: pdf[ROW_ID].to_numpy()[idx], "cluster_id": pdf["cluster_id"].to_numpy()[idx],
        "part": np.full(len(idx), part, np.int32),
        "pick": np.arange(1, len(idx) + 1, dtype=np.int32), "mmd": np.full(len(idx), mmd),
        "filled": np.full(len(idx), filled, np.int32),
        EMBEDDING: list(vectors[idx]) if with_rows else [None] * len(idx)})


def _checked_selection(spark, cfg: JobConfig, plan: reuse.Plan) -> tuple[DataFrame, list]:
    """The run's committed selection and its picks (``(cluster_id, cluster_size)`` in rank
    order), after checking that they are the ones its record describes."""
    run_id = plan.run_id
    if not stagelog.is_done(spark, cfg.output.path, "select", run_id, plan.select):
        raise InputError(f"run {run_id} has no selection for these inputs and select settings "
                         f"under {cfg.output.path!r}; run select (or the whole pipeline) first.")
    records = tables.key_rows(spark, cfg.output.path, "runs", run_id)
    record = records[0] if records else None
    rows = [r for r in tables.key_rows(spark, cfg.output.path, "selection", run_id)
            if r["select_fingerprint"] == plan.select]                   # a few hundred
    if (record is None or record["select_fingerprint"] != plan.select
            or len(rows) != record["picks"]):
        raise ConcurrentRunError(
            f"the selection of run {run_id} was replaced by another run with the same run_id and "
            "other parameters while this one ran. Give each config its own run_id (or none), "
            "then run again.")
    picks = [(int(r["cluster_id"]), int(r["cluster_size"]))
             for r in sorted(rows, key=lambda r: r["rank"])]
    # The rows checked are the rows used: a frame of them, not a second read of the table.
    return spark.createDataFrame(rows, tables.SELECTION), picks


def run_explode(spark, cfg: JobConfig, plan: reuse.Plan, pool: Side,
                target: Side | None = None) -> dict:
    """Commits ``selected_rows`` for the run (unless done); returns the summary it prints.
    ``target``: the target side, which the row step matches (read here when it runs and
    ``target`` is None)."""
    run_id, fp = plan.run_id, plan.explode
    t0 = time.perf_counter()
    schema = tables.selected_rows_schema(pool.schema)
    selection, picks = _checked_selection(spark, cfg, plan)
    assignments = tables.read_key(spark, cfg.output.path, "pool_assignments", plan.clustering_id)

    def compute():
        own = [f.name for f in pool.schema.fields]
        pool_rows = clustered_rows(spark, cfg, plan)
        budget = row_budget(cfg.select, pool_rows)
        cut, size = cluster_cut(picks, budget, int(cfg.select.seed))
        step = row_step_plan(cfg.select, budget, size, pool_rows)
        if step.run:
            cands = candidates_of(spark, cfg, plan, picks, step)
            step, where = placed(cfg.select, step, cands.rows)
        if step.run:
            side = target if target is not None else read_only(spark, cfg, plan, "target", log)
            rows, figures = row_picks(spark, cfg, plan, pool, side, assignments, cands, step,
                                      where)
            out = (pool.frame.join(F.broadcast(rows), ROW_ID)
                   .withColumn("run_id", F.lit(run_id))
                   .select(*own, "cluster_id", "rank", "run_id"))
            return out, {"row_step": figures}
        if step.why:
            log(f"explode: whole clusters, not the row step: {step.why}")
        if cut is not None:
            log(f"explode: the row budget ends inside cluster {cut[0]}: {cut[1]} of its rows "
                "taken (seeded by select.seed)")
        return explode_frame(selection, assignments, pool.frame, own, cut), {"row_step": None}

    def commit(computed):
        out, figures = computed
        out, counted = _counted(spark, out)
        tables.replace_key(spark, out, cfg.output.path, "selected_rows", run_id, schema)
        return _counts(counted), figures

    counts = run_stage(spark, cfg.output.path, "explode", run_id, fp, compute, commit,
                       reused=lambda: log(f"explode: reusing the selected rows of run {run_id}"))
    path = tables.table_path(cfg.output.path, "selected_rows")
    written = tables.read_key(spark, cfg.output.path, "selected_rows", run_id)
    if counts is None:                 # reused, or counted by no observation: read them back
        counts = written.agg(F.count("*").alias("rows"),
                             F.countDistinct("cluster_id").alias("clusters")).first().asDict()
    summary = {"run_id": run_id, "selected_rows": int(counts["rows"]),
               "pool_rows": pool.report["kept"], "clusters": int(counts["clusters"]),
               "table": path}
    summary["fraction_of_pool"] = summary["selected_rows"] / max(1, summary["pool_rows"])
    if cfg.output.table:
        name = cfg.output.table
        if tables.publish_rows(spark, name, written, run_id):
            log(f"explode: run {run_id}'s rows written into the table {name}")
        summary["output_table"] = name
    log(f"explode: run {run_id}: {summary['selected_rows']} rows "
        f"({100 * summary['fraction_of_pool']:.2f}% of the pool's "
        f"{summary['pool_rows']}) from {summary['clusters']} clusters -> {path} "
        f"({took(time.perf_counter() - t0)})")
    return summary


def _counted(spark, out: DataFrame) -> tuple[DataFrame, object]:
    """``out`` counting its rows and clusters as it is written (an ``Observation``: no second
    pass over the written rows), and the observation; on Spark Connect ``(out, None)``."""
    if is_connect(spark):
        return out, None
    counted = Observation()
    return out.observe(counted, F.count(F.lit(1)).alias("rows"),
                       F.size(F.collect_set("cluster_id")).alias("clusters")), counted


def _counts(counted, wait_s: float = 2.0) -> dict | None:
    """The rows and clusters :func:`_counted` observed, once the write has reported them (Spark
    hands them over on its listener bus: waited for up to ``wait_s``, never blocked on); None
    where it has not (the summary then reads them back)."""
    java = getattr(counted, "_jo", None)      # pyspark's handle on the JVM's Observation
    if java is None:
        return None
    future = java.future()
    deadline = time.monotonic() + wait_s
    while not future.isCompleted():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    found = counted.get
    return {"rows": int(found["rows"]), "clusters": int(found["clusters"])}


def explode_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    pool = read_only(spark, cfg, plan, "pool", log)
    check_outputs(spark, cfg, pool.schema)
    run_explode(spark, cfg, plan, pool)


STAGE = Stage(
    "explode", "the explode stage alone: chosen clusters back to rows", None, both_sides,
    needs=("select",), outputs=("selected_rows",), command=explode_command,
    in_run=lambda cfg: True,
    step=lambda run: run_explode(run.spark, run.cfg, run.plan, run.inputs.pool,
                                 run.inputs.target),
    connect=True)
