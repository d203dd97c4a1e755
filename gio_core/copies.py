"""Near copies found through clusters: the numerics of quantize's decontamination step.

A pool row is a *copy* of a reference row (a target row) when their cosine similarity is at
least a threshold: exact copies (the same text embeds to the same vector, up to float32's
rounding) and near ones (a line reworded, a header added). Comparing every pool row with every
reference row costs ``n * m`` dot products. Here the reference rows are grouped by the clusters
K-means already made of them, and each pool row is compared only with the rows of its
``probes`` nearest clusters: ``probes * m / k`` rows on average instead of ``m``.

What it finds: a pool row that is the same vector as a reference row has that row's cluster as
its nearest (the same distances to the same centres; with ``probes`` >= 2 not even a rounding
tie between its two nearest clusters can hide it), so exact copies are always found; a near
copy is found when its reference row's cluster is among its ``probes`` nearest, which more
probes make likelier (``bench/decontaminate.py`` measures it against all pairs).

The functions are pure NumPy; the Spark step (:mod:`jobs.stages.quantize`) builds a
:class:`CopyIndex` once on the driver and calls :func:`near_copies` on each batch of pool rows
in its tasks.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gio_core.kmeans import normalise

# float32 rounding: an exact copy's cosine is 1 within about 1e-6, so a threshold of 1 means
# "the same vector" only with this slack.
SLACK = 1e-5


class CopyIndex(NamedTuple):
    """The reference rows grouped by cluster: ``rows`` (unit length, float32, cluster by
    cluster), ``order`` (each of them's index among the reference rows as given),
    ``starts`` (cluster c's rows are ``rows[starts[c]:starts[c + 1]]``) and the
    ``centres`` [k, d] the pool rows are probed against."""
    rows: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    centres: np.ndarray
    distance: str


class Copies(NamedTuple):
    """For each pool row with a copy: its index (``rows``), the reference row it copies most
    closely (``refs``, ties to the lowest index) and their cosine (``cosine``); ``compared``:
    the reference rows compared in all (for the scale of the search)."""
    rows: np.ndarray
    refs: np.ndarray
    cosine: np.ndarray
    compared: int


def copy_index(refs: np.ndarray, centres: np.ndarray, distance: str = "euclidean") -> CopyIndex:
    """Groups the reference rows ``refs`` [m, d] by their nearest of ``centres`` [k, d] (the
    K-means clusters of the same rows, in the same space; unit-length for ``cosine``)."""
    refs = np.asarray(refs, np.float32)
    centres = np.asarray(centres, np.float32)
    labels = probe(refs, centres, 1, distance)[:, 0]     # as the pool rows are probed
    order = np.argsort(labels, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(labels, minlength=len(centres)))]
    return CopyIndex(normalise(refs)[order], order.astype(np.int64), starts.astype(np.int64),
                     centres, distance)


def probe(x: np.ndarray, centres: np.ndarray, probes: int,
          distance: str = "euclidean") -> np.ndarray:
    """Each row's ``probes`` nearest centres, nearest first: int64 [n, min(probes, k)]."""
    x = np.asarray(x, np.float32)
    if distance == "cosine":
        scores = -(normalise(x) @ centres.T)
    else:
        scores = np.einsum("kd,kd->k", centres, centres)[None, :] - 2.0 * (x @ centres.T)
    p = min(probes, centres.shape[0])
    near = np.argpartition(scores, p - 1, axis=1)[:, :p] if p < centres.shape[0] else \
        np.tile(np.arange(centres.shape[0]), (len(x), 1))
    at = np.take_along_axis(scores, near, axis=1)
    return np.take_along_axis(near, np.argsort(at, axis=1, kind="stable"), axis=1)


def near_copies(index: CopyIndex, x: np.ndarray, threshold: float,
                probes: int = 3) -> Copies:
    """The rows of ``x`` [n, d] (in the space ``index`` was built in) that are copies of a
    reference row: cosine at least ``threshold`` (less :data:`SLACK`) with a reference row of
    one of their ``probes`` nearest clusters."""
    x = np.asarray(x, np.float32)
    n = len(x)
    best = np.full(n, -np.inf, np.float32)
    best_ref = np.full(n, -1, np.int64)
    if n == 0:
        return Copies(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0)
    near = probe(x, index.centres, probes, index.distance)
    unit = normalise(x)
    pairs_row = np.repeat(np.arange(n), near.shape[1])
    pairs_cluster = near.ravel()
    by_cluster = np.argsort(pairs_cluster, kind="stable")
    clusters, firsts = np.unique(pairs_cluster[by_cluster], return_index=True)
    bounds = np.r_[firsts, len(by_cluster)]
    compared = 0
    for i, c in enumerate(clusters):
        lo, hi = index.starts[c], index.starts[c + 1]
        if hi == lo:
            continue
        rows = pairs_row[by_cluster[bounds[i]:bounds[i + 1]]]
        sims = unit[rows] @ index.rows[lo:hi].T
        compared += sims.size
        top = np.argmax(sims, axis=1)              # the first of equal maxima: the lowest index
        value = sims[np.arange(len(rows)), top]
        ref = index.order[lo + top]
        better = (value > best[rows]) | ((value == best[rows]) & (ref < best_ref[rows]))
        best[rows[better]] = value[better]
        best_ref[rows[better]] = ref[better]
    hit = np.flatnonzero(best >= threshold - SLACK)
    return Copies(hit.astype(np.int64), best_ref[hit], best[hit], int(compared))


def all_pairs_copies(refs: np.ndarray, x: np.ndarray, threshold: float,
                     block: int = 4096) -> Copies:
    """The same question answered by comparing every row of ``x`` with every reference row
    (``block`` rows of ``x`` at a time): the oracle :func:`near_copies` is tested and
    benchmarked against."""
    unit_refs = normalise(np.asarray(refs, np.float32))
    x = np.asarray(x, np.float32)
    rows, hits, values = [], [], []
    for lo in range(0, len(x), block):
        sims = normalise(x[lo:lo + block]) @ unit_refs.T
        if sims.shape[1] == 0:
            break
        top = np.argmax(sims, axis=1)
        value = sims[np.arange(len(sims)), top]
        hit = np.flatnonzero(value >= threshold - SLACK)
        rows.append(lo + hit)
        hits.append(top[hit])
        values.append(value[hit])
    if not rows:
        return Copies(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0)
    return Copies(np.concatenate(rows).astype(np.int64), np.concatenate(hits).astype(np.int64),
                  np.concatenate(values), len(x) * len(unit_refs))


def duplicates(x: np.ndarray, threshold: float, block: int = 1024) -> Copies:
    """The rows of ``x`` [n, d] that nearly duplicate an earlier row: taken in order, a row is
    kept unless its cosine with a row kept before it is at least ``threshold`` (less
    :data:`SLACK`). ``rows``: the duplicates; ``refs``: the kept row each is closest to (the
    first of equals); ``compared``: the pairs compared."""
    unit = normalise(np.asarray(x, np.float32))
    n = len(unit)
    kept = np.zeros(0, np.int64)
    rows, refs, values = [], [], []
    compared = 0
    for lo in range(0, n, block):
        u = unit[lo:lo + block]
        m = len(u)
        before = np.full(m, -np.inf, np.float32)          # best cosine with earlier blocks' kept
        before_ref = np.full(m, -1, np.int64)
        if len(kept):
            sims = u @ unit[kept].T
            compared += sims.size
            top = np.argmax(sims, axis=1)
            before = sims[np.arange(m), top]
            before_ref = kept[top]
        inner = u @ u.T
        here: list[int] = []                               # kept rows of this block, in order
        for i in range(m):
            best, ref = before[i], before_ref[i]
            if here:
                s = inner[i, here]
                compared += len(here)
                j = int(np.argmax(s))
                if s[j] > best or (s[j] == best and lo + here[j] < ref):
                    best, ref = s[j], lo + here[j]
            if best >= threshold - SLACK:
                rows.append(lo + i)
                refs.append(ref)
                values.append(best)
            else:
                here.append(i)
        kept = np.concatenate([kept, lo + np.asarray(here, np.int64)])
    return Copies(np.asarray(rows, np.int64), np.asarray(refs, np.int64),
                  np.asarray(values, np.float32), int(compared))
