"""Stored outputs that a stage reads from another stage's tables: learnt feature weights (the
weigh stage's), committed embeddings (the embed stage's) and the clustering's centroids and
target bandwidth (quantize's, which select and explode read). A look-up never computes anything:
it finds what the stage log says is done, or raises with what to run first. Also what whole
clusters give for a run's selection (explode's cluster path, which evaluate compares with the row
step)."""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.frames import EMBEDDING, ROW_ID, seed_hash
from jobs.common.log import log
from jobs.config import JobConfig, row_budget, uses_own_weights
from jobs.io import tables
from jobs.io.sources import Side
from jobs.state import stagelog


def stored_embeddings(spark, cfg: JobConfig, side: Side, key: str, fp: str) -> DataFrame | None:
    """(row_id, embedding) of a side without computing anything: its vector column, or its
    committed ``<side>_embeddings`` under ``key`` with fingerprint ``fp`` (the run plan's
    ``embeddings_id[side]`` and ``embed[side]``); None when neither exists yet."""
    if EMBEDDING in side.frame.columns:
        return side.frame.select(ROW_ID, EMBEDDING)
    if not stagelog.is_done(spark, cfg.output.path, f"embed_{side.name}", key, fp):
        return None
    return tables.read_key(spark, cfg.output.path, f"{side.name}_embeddings", key).select(
        ROW_ID, EMBEDDING)


def stored_run(spark, where: str, table: str, stage: str, run_id: str | None, *,
               missing: str, several: tuple[str, str],
               incomplete: Callable[[str, list], str]) -> tuple[str, str]:
    """``(run id, fingerprint)`` of the stored run of ``stage`` that ``run_id`` names under
    ``where``, or of the only one there when ``run_id`` is None: the one look-up behind loading
    weights, probes and IMNN fits.

    Args:
      table: the stage's table whose keys are its runs.
      missing: the message when there is none.
      several: ``(what they are, what to do)`` when there are several and none is named:
        ``'out' holds 3 train runs (a, b, c); name the one to load.``
      incomplete: ``incomplete(run_id, ids)`` -> the message when the named run is not done.

    Raises:
      InputError: none there, several and none named, or the named one is not complete.
    """
    ids = tables.stored_keys(spark, where, table)
    if not ids:
        raise InputError(missing)
    if run_id is None:
        if len(ids) != 1:
            raise InputError(f"{where!r} holds {len(ids)} {several[0]} ({', '.join(ids[:10])}); "
                             f"{several[1]}.")
        run_id = ids[0]
    last = stagelog.latest(spark, where, stage, run_id)
    if last is None or last["status"] != "done":
        raise InputError(incomplete(run_id, ids))
    return run_id, last["fingerprint"]


def weights_location(cfg: JobConfig) -> str:
    return cfg.weights.path or cfg.output.path


def stored_weights(spark, cfg: JobConfig) -> tuple[str, str]:
    """``(weights_id, fingerprint)`` of the stored weights that ``weights`` names.

    Raises:
      InputError: no such weights, or they are not complete, or ``weights.path`` holds several
        runs and ``weights.run_id`` does not say which.
    """
    where = weights_location(cfg)
    return stored_run(
        spark, where, "weight_runs", "weigh", cfg.weights.run_id,
        missing=f"there are no learnt weights under {where!r} (no weight_runs table); run "
                "gio-spark weigh first, or correct weights.path.",
        several=("weights runs", "set weights.run_id to the one to use"),
        incomplete=lambda run_id, ids: f"weights.run_id {run_id!r} names no complete weights "
                                       f"under {where!r}. It holds: {', '.join(ids[:10])}. Run "
                                       "gio-spark weigh first.")


def weights_dim(spark, cfg: JobConfig, weights_id: str, weights_fp: str,
                own_dim: int | None = None) -> int:
    """The number of features of the weights quantize uses (before anything heavy runs).
    ``own_dim``: the features of this config's own weigh input, when the weigh stage runs now."""
    if uses_own_weights(cfg) and own_dim is not None:
        return own_dim
    where = weights_location(cfg)
    if uses_own_weights(cfg) and not stagelog.is_done(spark, where, "weigh", weights_id,
                                                   weights_fp):
        raise InputError(f"the weights {weights_id} of this config's weigh section are not "
                         f"learnt yet under {where!r}; run gio-spark weigh (or run) first.")
    record = (tables.read_key(spark, where, "weight_runs", weights_id)
              .where(F.col("weights_fingerprint") == weights_fp)
              .select("features", "space_a", "params")
              .first())
    if record is None:
        raise ConcurrentRunError(f"the record of weights {weights_id} under {where!r} was "
                                 "replaced by another run with the same id; run again.")
    space_a = json.loads(record["space_a"])
    periods = json.loads(record["params"]).get("weigh", {}).get("periods_A")
    if periods and any(periods):
        raise InputError(f"the weights {weights_id} were learnt with periodic features "
                         "(weigh.periods_A), but K-means has no periodic distance; use weights "
                         "learnt without periods_A.")
    return int(space_a["features"])


def load_weights(spark, cfg: JobConfig, weights_id: str, weights_fp: str) -> np.ndarray:
    """The scale factors (``scaled``) of the weights quantize uses, by feature index."""
    where = weights_location(cfg)
    rows = (tables.read_key(spark, where, "feature_weights", weights_id)
            .where(F.col("weights_fingerprint") == weights_fp)
            .orderBy("feature").select("feature", "scaled").collect())
    if not rows or [r["feature"] for r in rows] != list(range(len(rows))):
        raise ConcurrentRunError(f"the feature weights {weights_id} under {where!r} were "
                                 "replaced by another run with the same id while this one ran; "
                                 "give each weigh config its own run_id (or none) and run again.")
    return np.array([r["scaled"] for r in rows], np.float64)


def apply_weights(embeddings: DataFrame, scale: np.ndarray) -> DataFrame:
    """``(row_id, embedding)`` with feature a of every embedding multiplied by ``scale[a]``."""
    factors = F.array(*[F.lit(float(v)) for v in scale])
    return embeddings.select(ROW_ID, F.zip_with(F.col(EMBEDDING), factors,
                                                lambda x, s: (x * s).cast("float"))
                             .alias(EMBEDDING))


# Centroids this process collected: (centroids table, clustering id) -> (the table's local
# version when they were read, {side: (ids, centroids, sizes)}). Used again while the table has
# no newer commit (a notebook's next run with other select options); remote tables are read
# each time.
_CENTROIDS: dict = {}


def _centroids_read(spark, cfg: JobConfig, clustering_id: str) -> dict | None:
    """The centroids of ``clustering_id`` as this process read them, while still current."""
    path = tables.table_path(cfg.output.path, "centroids")
    memo = _CENTROIDS.get((path, clustering_id))
    if memo is None:
        return None
    version = tables.local_version(path)
    return memo[1] if version is not None and len(version) == 3 and memo[0] == version else None


def centroid_counts(spark, cfg: JobConfig, clustering_id: str) -> dict:
    """``{side: centroids}`` of a stored clustering (from what this process collected, while
    the table has no newer commit)."""
    known = _centroids_read(spark, cfg, clustering_id)
    if known is not None:
        return {side: len(ids) for side, (ids, _, _) in known.items()}
    return {r["side"]: r["n"] for r in
            tables.read_key(spark, cfg.output.path, "centroids", clustering_id)
            .groupBy("side").agg(F.count("*").alias("n")).collect()}


def collect_centroids(spark, cfg: JobConfig, clustering_id: str) -> dict:
    """Both sides' centroids as arrays ``{side: (cluster ids, centroids, sizes)}`` in cluster
    order, after checking that they may be collected."""
    path = tables.table_path(cfg.output.path, "centroids")
    out = _centroids_read(spark, cfg, clustering_id)
    version = tables.local_version(path)          # before reading: a later commit reads again
    df = None
    if out is None:
        df = tables.read_key(spark, cfg.output.path, "centroids", clustering_id)
        counts = centroid_counts(spark, cfg, clustering_id)
    else:
        counts = {side: len(ids) for side, (ids, _, _) in out.items()}
    limit = cfg.select.max_centroids
    for side in ("pool", "target"):
        if counts.get(side, 0) == 0:
            raise InputError(f"the centroids of clustering {clustering_id} have no {side} rows; "
                             "run quantize again.")
        if counts[side] > limit:
            raise InputError(f"{counts[side]} {side} centroids are more than "
                             f"select.max_centroids={limit} allows to collect to the driver; "
                             "lower quantize.pool_k/target_k or raise select.max_centroids "
                             "(and the driver's memory).")
    if out is not None:
        return {side: tuple(a.copy() for a in arrays) for side, arrays in out.items()}
    rows = df.select("side", "cluster_id", "centroid", "size").collect()   # both sides at once
    out = _arrays([tuple(r) for r in rows])
    if version is not None and len(version) == 3:
        _CENTROIDS[(path, clustering_id)] = (version, {side: tuple(a.copy() for a in arrays)
                                                       for side, arrays in out.items()})
    return out


def _arrays(rows: list) -> dict:
    """``{side: (ids, centroids, sizes)}`` in cluster order from ``(side, cluster_id, centroid,
    size)`` rows."""
    out = {}
    for side in ("pool", "target"):
        mine = sorted((r for r in rows if r[0] == side), key=lambda r: r[1])
        out[side] = (np.array([r[1] for r in mine], np.int32),
                     np.array([r[2] for r in mine], np.float32),
                     np.array([r[3] for r in mine], np.int64))
    return out


def remember_centroids(cfg: JobConfig, clustering_id: str, version: tuple, rows: list) -> None:
    """What quantize committed as the centroids table's local ``version`` (``(side,
    cluster_id, centroid, size)`` rows, the centroids float32 as stored): what
    :func:`collect_centroids` gives while no other commit comes."""
    path = tables.table_path(cfg.output.path, "centroids")
    _CENTROIDS[(path, clustering_id)] = (version, _arrays(rows))


def target_domains_of(spark, cfg: JobConfig, plan, target_ids) -> np.ndarray:
    """The domain of each target centroid (``target_ids``, in order), from the stage record of
    the clustering of ``plan``: the target was clustered domain by domain.

    Raises:
      InputError: the clustering has no record of its target's domains.
    """
    last = stagelog.latest(spark, cfg.output.path, "quantize", plan.clustering_id)
    detail = json.loads(last["detail"]) if last is not None and last["detail"] else {}
    by_domain = detail.get("target_domains")
    if not by_domain:
        raise InputError(f"clustering {plan.clustering_id} has no record of the target's domains "
                         "(target.domain_column); run quantize again.")
    of = {int(cid): name for name, ids in by_domain.items() for cid in ids}
    return np.array([of[int(i)] for i in target_ids], dtype=object)


def target_bandwidth_of(spark, cfg: JobConfig, plan) -> float | None:
    """The target rows' median squared distance, from the stage record of the clustering of
    ``plan`` (a :class:`jobs.state.reuse.Plan`); None for a clustering made before it was
    recorded (the rule then uses the centroids' own)."""
    last = stagelog.latest(spark, cfg.output.path, "quantize", plan.clustering_id)
    detail = json.loads(last["detail"]) if last is not None and last["detail"] else {}
    value = detail.get("target_bandwidth")
    if value is None:
        log("select: this clustering has no recorded target bandwidth (quantized by an earlier "
            "version); the mmd rule uses the target centroids' median distance")
    return value


def explode_frame(selection: DataFrame, assignments: DataFrame, pool_rows: DataFrame,
                  own_columns: list[str], cut: tuple[int, int, int] | None = None) -> DataFrame:
    """The selected rows, as a DataFrame (no I/O). A cluster picked twice (after a reset)
    keeps its first rank. ``cut``: ``(cluster_id, rows, seed)``, that cluster sampled down to
    ``rows`` rows: those first by a seeded hash of their row id (so the sample does not depend
    on the pool's row order)."""
    chosen = selection.groupBy("cluster_id").agg(F.min("rank").alias("rank"),
                                                 F.first("run_id").alias("run_id"))
    rows = (F.broadcast(chosen).join(assignments, "cluster_id")
            .select(ROW_ID, "cluster_id", "rank", "run_id"))
    if cut is not None:
        cluster, keep, seed = cut
        order = Window.partitionBy("cluster_id").orderBy(seed_hash(seed), F.col(ROW_ID))
        sampled = (rows.where(F.col("cluster_id") == cluster)
                   .withColumn("_n", F.row_number().over(order))
                   .where(F.col("_n") <= keep).drop("_n"))
        rows = rows.where(F.col("cluster_id") != cluster).unionByName(sampled)
    return pool_rows.join(rows, ROW_ID).select(*own_columns, "cluster_id", "rank", "run_id")


def clustered_rows(spark, cfg: JobConfig, plan) -> int:
    """The pool rows the run's clustering holds."""
    known = _centroids_read(spark, cfg, plan.clustering_id)
    if known is not None:
        return int(known["pool"][2].sum())
    return int(tables.read_key(spark, cfg.output.path, "centroids", plan.clustering_id)
               .where(F.col("side") == "pool").agg(F.sum("size")).first()[0] or 0)


def cluster_cut(picks: list, budget: int | None, seed: int):
    """``(cluster_id, rows, seed)`` when ``budget`` ends inside a picked cluster (``picks``:
    ``(cluster_id, cluster_size)`` in rank order), else None; and the rows the picks give."""
    seen, total = set(), 0
    for cluster, size in picks:
        if cluster in seen:
            continue
        seen.add(cluster)
        if budget is not None and total + size > budget:
            return (int(cluster), budget - total, seed), budget
        total += size
    return None, total


def cluster_picks(selection: DataFrame) -> list:
    """``(cluster_id, cluster_size)`` of a run's selection, in rank order."""
    return [(int(r["cluster_id"]), int(r["cluster_size"])) for r in
            selection.select("rank", "cluster_id", "cluster_size").orderBy("rank").collect()]


def whole_cluster_rows(spark, cfg: JobConfig, plan, pool_frame: DataFrame) -> DataFrame:
    """``ROW_ID`` of the rows whole clusters give for the run's committed selection (the row
    budget's cut as explode makes it): what ``select.refine: clusters`` would have written."""
    selection = (tables.read_key(spark, cfg.output.path, "selection", plan.run_id)
                 .where(F.col("select_fingerprint") == plan.select))
    assignments = tables.read_key(spark, cfg.output.path, "pool_assignments", plan.clustering_id)
    budget = row_budget(cfg.select, clustered_rows(spark, cfg, plan))
    cut, _ = cluster_cut(cluster_picks(selection), budget, int(cfg.select.seed))
    return explode_frame(selection, assignments, pool_frame.select(ROW_ID), [ROW_ID], cut)
