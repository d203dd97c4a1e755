"""Incremental KL state for greedy selection, one engine per estimator.

An engine keeps the selected set as sufficient statistics (never as a growing
array), so every pick costs the same and nothing is re-traced: shapes are fixed,
the pool is a static array with an availability mask, and the hot loops are
jitted. The driver in ``_selection.py`` asks an engine to

* ``propose_exact(state, available)``: the best remaining pool row and the KL
  after adding it, scoring every row;
* ``propose_gradient(state, available, v, steps, lr_scale)``: descend in
  embedding space on a smooth form of the KL, then take the nearest remaining row;
* ``accept(state, row)``: the state with that row added.

States are immutable NamedTuples, so a driver can keep an old one to roll back.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gio_core._estimators import (
    EMPTY_SLOT, averaged_columns, averaged_constant, insert_sorted, list_score, row_chunks,
    self_term_table, sq_distances, target_self_neighbours)

_CHUNK_SIZES = (8, 32, 128, 512)
PAIR_CHUNK = 1 << 20          # (target, pool row) pairs rescored at once without the cache


def _chunk_size(count: int) -> int:
    for size in _CHUNK_SIZES:
        if count <= size:
            return size
    return _CHUNK_SIZES[-1]


def _pad_rows(x, multiple, fill=0.0):
    rows = x.shape[0]
    padded = -(-rows // multiple) * multiple
    if padded == rows:
        return x
    pad = jnp.full((padded - rows,) + x.shape[1:], fill, x.dtype)
    return jnp.concatenate([x, pad])


# ---------------------------------------------------------------------------
# Shared jitted pieces
# ---------------------------------------------------------------------------

@jax.jit
def _pick_with_ties(scores, available, secondary):
    """The available row of least score; among rows tied with it, the one of least
    ``secondary`` (a property of the row's content, so the pick does not depend on row order).

    Ties are exact: the rows that enter no target point's neighbour list all gain exactly 0.
    A tolerance would make near-ties flip with rounding (weights scaled by a constant)."""
    masked = jnp.where(available, scores, jnp.inf)
    tied = masked == jnp.min(masked)
    return jnp.argmin(jnp.where(tied, secondary, jnp.inf))


@jax.jit
def _closeness_chunk(target, idx, valid, self_ld, block):
    """``min_i (log |t_i - p| - self_ld_i)`` over a chunk of targets, for each row of a block."""
    ld = 0.5 * jnp.log(sq_distances(target[idx], block))
    return jnp.min(jnp.where(valid[:, None], ld - self_ld[idx][:, None], jnp.inf), axis=0)


@jax.jit
def _nearest_available(pool, available, v):
    d2 = jnp.sum((pool - v[None, :]) ** 2, axis=1)
    return jnp.argmin(jnp.where(available, d2, jnp.inf))


def _descend(surrogate, v, steps, lr_scale, *args):
    grad_fn = jax.grad(surrogate)

    def body(_, v):
        return v - lr_scale * grad_fn(v, *args)

    return jax.lax.fori_loop(0, steps, body, v)


def _point_log_dist(target, v):
    return 0.5 * jnp.log(sq_distances(target, v[None, :])[:, 0])


# ---------------------------------------------------------------------------
# knn engine
# ---------------------------------------------------------------------------

class KnnState(NamedTuple):
    lists_ld: jax.Array   # [n, k] log-distances to the nearest selected points, ascending
    lists_w: jax.Array    # [n, k] their weights
    picked: int           # m, selected points so far
    total_w: float        # B, their total weight
    unit: bool = True     # every weight is 1 (the closed form's cheaper unit-weight kernels)
    # Exact method: sum_i abar_i F_i(list_i + row) for every pool row (``relative``: minus
    # sum_i abar_i F_i(list_i)), computed for ``gains_ranks`` ranks.
    gains: jax.Array | None = None
    gains_ranks: int = 0
    relative: bool = False


def _knn_surrogate(v, target, abar, kth_ld, n_ranks, dim, smoothing):
    """Smooth form of the KL change when ``v`` joins the selected set.

    A target point's rank-averaged log-distance drops by ``log nu_K - log |t - v|``
    when ``v`` lands inside its K-th neighbour radius and is unchanged otherwise;
    a softplus with width ``smoothing`` (in log-distance units) replaces that hinge
    so that far-away targets still pull.
    """
    z = _point_log_dist(target, v) - kth_ld
    hinge = -smoothing * jax.nn.softplus(-z / smoothing)
    return jnp.sum(abar * hinge) * dim / n_ranks


@jax.jit
def _knn_score_with(target, abar, lists_ld, lists_w, point, weight, n_ranks, dim):
    """``sum_i abar_i F_i(list_i + point)``: the list part of the KL after adding one point."""
    new_ld, new_w = insert_sorted(lists_ld, lists_w, _point_log_dist(target, point), weight)
    return jnp.sum(abar * list_score(new_ld, new_w, n_ranks, dim))


@jax.jit
def _knn_gradient_step(target, abar, lists_ld, lists_w, pool, pool_w, available, v, steps,
                       lr_scale, choice_ranks, n_ranks, dim, smoothing):
    kth_ld = lists_ld[:, choice_ranks - 1]
    v = _descend(_knn_surrogate, v, steps, lr_scale, target, abar, kth_ld, choice_ranks, dim,
                 smoothing)
    row = _nearest_available(pool, available, v)
    score = _knn_score_with(target, abar, lists_ld, lists_w, pool[row], pool_w[row], n_ranks, dim)
    return v, row, score


@jax.jit
def _knn_surrogate_grad(target, abar, lists_ld, v, choice_ranks, dim, smoothing):
    return jax.grad(_knn_surrogate)(v, target, abar, lists_ld[:, choice_ranks - 1], choice_ranks,
                                    dim, smoothing)


@jax.jit
def _knn_gain_kernel(target, abar, lists_ld, lists_w, idx, valid, pool_block, pool_w_block,
                     n_ranks, dim):
    """``sum_{i in chunk} abar_i F_i(list_i + p)`` for every row p of a pool block."""
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))           # [C, B]
    new_ld, new_w = insert_sorted(lists_ld[idx][:, None, :], lists_w[idx][:, None, :],
                                  ld, pool_w_block[None, :])            # [C, B, k]
    weight = jnp.where(valid, abar[idx], 0.0)
    return weight @ list_score(new_ld, new_w, n_ranks, dim)


@jax.jit
def _knn_gain_delta_kernel(target, abar, old_ld, old_w, new_ld, new_w, idx, valid, pool_block,
                           pool_w_block, n_ranks, dim):
    """Change of the gains when the lists of the targets in ``idx`` went from old to new."""
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))
    pw = pool_w_block[None, :]
    f_new = list_score(*insert_sorted(new_ld[idx][:, None, :], new_w[idx][:, None, :], ld, pw),
                       n_ranks, dim)
    f_old = list_score(*insert_sorted(old_ld[idx][:, None, :], old_w[idx][:, None, :], ld, pw),
                       n_ranks, dim)
    weight = jnp.where(valid, abar[idx], 0.0)
    return weight @ (f_new - f_old)


def _fast_gain(ld, weight, kth, n_ranks, dim):
    """Unit weights: adding p to a full list changes its score by ``dim/K * min(0, ld - L_K)``."""
    return weight @ (jnp.minimum(0.0, ld - kth[:, None]) * (dim / n_ranks))


@jax.jit
def _fast_gain_kernel(target, abar, kth, idx, valid, pool_block, n_ranks, dim):
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))
    return _fast_gain(ld, jnp.where(valid, abar[idx], 0.0), kth[idx], n_ranks, dim)


@jax.jit
def _fast_gain_kernel_cached(abar, kth, idx, valid, cache_block, n_ranks, dim):
    return _fast_gain(cache_block[idx], jnp.where(valid, abar[idx], 0.0), kth[idx], n_ranks, dim)


def _fast_delta(ld, weight, old_kth, new_kth, n_ranks, dim):
    change = (jnp.minimum(0.0, ld - new_kth[:, None]) - jnp.minimum(0.0, ld - old_kth[:, None]))
    return weight @ change * (dim / n_ranks)


@jax.jit
def _fast_delta_kernel(target, abar, old_kth, new_kth, idx, valid, pool_block, n_ranks, dim):
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))
    return _fast_delta(ld, jnp.where(valid, abar[idx], 0.0), old_kth[idx], new_kth[idx],
                       n_ranks, dim)


@jax.jit
def _fast_delta_kernel_cached(abar, old_kth, new_kth, idx, valid, cache_block, n_ranks, dim):
    return _fast_delta(cache_block[idx], jnp.where(valid, abar[idx], 0.0), old_kth[idx],
                       new_kth[idx], n_ranks, dim)


# Weighted lists, closed form. With cumulative weights ``C_l`` along a full list of ``K`` slots,
# a row at log-distance ``x`` with weight ``w`` takes slot ``pos`` (the slots ``l`` with
# ``ld_l > x`` shift down one) and the list's score changes by
#   (dim * min(0, x - ld_K) - sum_{l: ld_l > x} [log(w + C_{l-1}) - log C_l]) / K,
# a sum over the K slots with no sort and no cumulative sum per candidate (unit weights make the
# bracket 0: the form above). ``cprev`` is C_{l-1} (0 for the first slot), ``logc`` log C_l.

def _weighted_terms(ld, pool_w, lists_ld, cprev, logc, dim):
    """``[C, B]`` list-score changes (times K) of adding each row of a block to each list."""
    total = dim * jnp.minimum(0.0, ld - lists_ld[:, -1:])
    for slot in range(lists_ld.shape[1]):
        shifted = lists_ld[:, slot:slot + 1] > ld
        step = jnp.log(pool_w[None, :] + cprev[:, slot:slot + 1]) - logc[:, slot:slot + 1]
        total = total - jnp.where(shifted, step, 0.0)
    return total


def weighted_lists(lists_ld, lists_w, n_ranks):
    """The first ``n_ranks`` slots of each list with ``C_{l-1}`` and ``log C_l``: the closed
    form's inputs."""
    cum = jnp.cumsum(lists_w[:, :n_ranks], axis=1)
    cprev = jnp.concatenate([jnp.zeros_like(cum[:, :1]), cum[:, :-1]], axis=1)
    return lists_ld[:, :n_ranks], cprev, jnp.log(cum)


@jax.jit
def _wfast_gain_kernel(target, abar, lists_ld, cprev, logc, idx, valid, pool_block, pool_w_block,
                       n_ranks, dim):
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))
    weight = jnp.where(valid, abar[idx], 0.0)
    return weight @ _weighted_terms(ld, pool_w_block, lists_ld[idx], cprev[idx], logc[idx],
                                    dim) / n_ranks


@jax.jit
def _wfast_gain_kernel_cached(abar, lists_ld, cprev, logc, idx, valid, cache_block,
                              pool_w_block, n_ranks, dim):
    weight = jnp.where(valid, abar[idx], 0.0)
    return weight @ _weighted_terms(cache_block[idx], pool_w_block, lists_ld[idx], cprev[idx],
                                    logc[idx], dim) / n_ranks


def _wfast_delta(ld, pool_w_block, old, new, idx, valid, abar, dim, n_ranks):
    weight = jnp.where(valid, abar[idx], 0.0)
    change = (_weighted_terms(ld, pool_w_block, *(a[idx] for a in new), dim)
              - _weighted_terms(ld, pool_w_block, *(a[idx] for a in old), dim))
    return weight @ change / n_ranks


@jax.jit
def _wfast_delta_kernel(target, abar, old_ld, old_cprev, old_logc, new_ld, new_cprev, new_logc,
                        idx, valid, pool_block, pool_w_block, n_ranks, dim):
    ld = 0.5 * jnp.log(sq_distances(target[idx], pool_block))
    return _wfast_delta(ld, pool_w_block, (old_ld, old_cprev, old_logc),
                        (new_ld, new_cprev, new_logc), idx, valid, abar, dim, n_ranks)


@jax.jit
def _wfast_delta_kernel_cached(abar, old_ld, old_cprev, old_logc, new_ld, new_cprev, new_logc,
                               idx, valid, cache_block, pool_w_block, n_ranks, dim):
    return _wfast_delta(cache_block[idx], pool_w_block, (old_ld, old_cprev, old_logc),
                        (new_ld, new_cprev, new_logc), idx, valid, abar, dim, n_ranks)


@jax.jit
def _chunk_ld(target, idx, pool_block):
    return 0.5 * jnp.log(sq_distances(target[idx], pool_block))


@jax.jit
def _wfast_delta_ld(abar, old_ld, old_cprev, old_logc, new_ld, new_cprev, new_logc, idx, valid,
                    ld, pool_w_block, n_ranks, dim):
    """The change of the gains from a chunk of lists, with the chunk's distances given
    (``ld[c]`` belongs to target ``idx[c]``)."""
    weight = jnp.where(valid, abar[idx], 0.0)
    change = (_weighted_terms(ld, pool_w_block, *(a[idx] for a in
                                                  (new_ld, new_cprev, new_logc)), dim)
              - _weighted_terms(ld, pool_w_block, *(a[idx] for a in
                                                    (old_ld, old_cprev, old_logc)), dim))
    return weight @ change / n_ranks


def _pair_terms(x, w, lists_ld, cprev, logc, dim):
    """:func:`_weighted_terms` for pairs: row ``j`` at log-distance ``x[j]``, weight ``w[j]``,
    joining list ``j`` (``lists_* [N, K]``)."""
    total = dim * jnp.minimum(0.0, x - lists_ld[:, -1])
    for slot in range(lists_ld.shape[1]):
        step = jnp.log(w + cprev[:, slot]) - logc[:, slot]
        total = total - jnp.where(lists_ld[:, slot] > x, step, 0.0)
    return total


@jax.jit
def _pairs_delta(gains, abar, old_ld, old_cprev, old_logc, new_ld, new_cprev, new_logc, tgt,
                 prow, x, w, valid, n_ranks, dim):
    """``gains`` plus the change that the lists of targets ``tgt`` bring to pool rows ``prow``
    (each pair's row at log-distance ``x``, weight ``w``); padding pairs have ``valid`` False."""
    new = _pair_terms(x, w, new_ld[tgt], new_cprev[tgt], new_logc[tgt], dim)
    old = _pair_terms(x, w, old_ld[tgt], old_cprev[tgt], old_logc[tgt], dim)
    return gains.at[prow].add(jnp.where(valid, abar[tgt] * (new - old) / n_ranks, 0.0))


@partial(jax.jit, static_argnames=("k",))
def _lists_from_points(target, idx, points, weights, k):
    ld = 0.5 * jnp.log(sq_distances(target[idx], points))
    pad = jnp.full((ld.shape[0], k), EMPTY_SLOT, ld.dtype)
    ld = jnp.concatenate([ld, pad], axis=1)
    w = jnp.concatenate([weights, jnp.zeros((k,), weights.dtype)])
    neg, nbr = jax.lax.top_k(-ld, k)
    return -neg, w[nbr]


@jax.jit
def _insert_point(target, lists_ld, lists_w, point, weight, watched_slot):
    """Adds one point to every list; ``changed`` flags lists whose first slots up to
    ``watched_slot`` changed (only those change the gains computed with that many ranks)."""
    r = _point_log_dist(target, point)
    changed = r < lists_ld[:, watched_slot]
    new_ld, new_w = insert_sorted(lists_ld, lists_w, r, weight)
    return new_ld, new_w, changed


class KnnEngine:
    """Greedy selection state for the rank-averaged Wang-Kulkarni-Verdu estimator.

    Until the selected set holds ``k`` points the estimator averages fewer ranks, so its
    values are not comparable from one pick to the next; those first picks are chosen by
    the nearest-neighbour form (rank 1 only, which credits a point for covering any
    target region at once) and the driver accepts them without applying stopping rules.
    """

    def __init__(self, target, target_w, pool, pool_w, k, *, block_size=4096, smoothing=1.0,
                 cache_bytes=2 ** 30, dim=None, closed_form=True):
        self.target = target
        self.n = target.shape[0]
        self.dim = float(target.shape[1] if dim is None else dim)
        self.k = k
        self.smoothing = float(smoothing)
        a = target_w
        self.abar = a / jnp.sum(a)
        self.self_table = self_term_table(*target_self_neighbours(target, k), a, self.dim)
        self.self_means = jnp.sum(self.abar[:, None] * self.self_table, axis=0)   # [k]
        self.target_const = float(jnp.sum(self.abar * jnp.log(jnp.sum(a) - a)))
        self.pool_rows = pool.shape[0]
        self.block = min(block_size, -(-self.pool_rows // 128) * 128)
        self.pool = pool
        self.pool_w = pool_w
        self.pool_padded = _pad_rows(pool, self.block)
        self.pool_w_padded = _pad_rows(pool_w, self.block, 1.0)
        self.unit_pool = bool(jnp.all(pool_w == 1.0))
        # Rescoring in closed form once the lists are full (False: insert and rescore each
        # candidate's list; kept as the reference the tests and benchmarks compare against).
        self.closed_form = bool(closed_form)
        # Target-to-pool log-distances, one [n, block] array per pool block, when they all fit
        # in cache_bytes. When they do not: per target, the pool rows inside its current K-th
        # neighbour radius (the only rows whose gains its list can change from then on, since
        # the radius only shrinks), kept once the target's list has changed and while their
        # total fits in cache_bytes (8 bytes a row); see _rows_delta.
        self.blocks = self.pool_padded.shape[0] // self.block
        self.cached_blocks = self.blocks if self.n * self.pool_padded.shape[0] * 4 <= cache_bytes \
            else 0
        self.row_budget = int(cache_bytes) // 8
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self._row_count = 0
        self._rows_ranks = 0
        self._cache = None
        self._self_ld = 0.5 * jnp.log(jnp.asarray(target_self_neighbours(target, k)[0])[:, k - 1])
        self._closeness = None

    def closeness(self) -> jax.Array:
        """Each pool row's tie-break: ``min_i (log |t_i - p| - log rho_i)``, how far the row is
        from the nearest target point in units of that point's own k-th neighbour distance
        within the target (negative: inside a target neighbourhood). Among rows whose KL gain
        is equal (late picks, when most rows are in no target's current neighbour list) the
        pick goes to the one that sits closest to the target's own spacing, not to the first
        row. Computed once, on the first pick, with one pass over the pool."""
        if self._closeness is None:
            out = []
            for start in range(0, self.pool_padded.shape[0], self.block):
                block = self.pool_padded[start:start + self.block]
                acc = jnp.full((block.shape[0],), jnp.inf, jnp.float32)
                for idx, valid in row_chunks(self.n, min(512, self.n)):
                    acc = jnp.minimum(acc, _closeness_chunk(self.target, jnp.asarray(idx),
                                                            jnp.asarray(valid), self._self_ld,
                                                            block))
                out.append(acc)
            self._closeness = jnp.concatenate(out)[:self.pool_rows]
        return self._closeness

    def _cache_blocks(self):
        if self._cache is None:
            self._cache = [None] * self.blocks
            for b in range(self.cached_blocks):
                block = self.pool_padded[b * self.block:(b + 1) * self.block]
                self._cache[b] = jnp.concatenate([
                    0.5 * jnp.log(sq_distances(self.target[idx], block))[valid]
                    for idx, valid in row_chunks(self.n, min(512, self.n))])
        return self._cache

    # -- state ---------------------------------------------------------------
    def initial_state(self, points=None, weights=None) -> KnnState:
        if points is None or points.shape[0] == 0:
            ld = jnp.full((self.n, self.k), EMPTY_SLOT, jnp.float32)
            return KnnState(ld, jnp.zeros((self.n, self.k), jnp.float32), 0, 0.0,
                            unit=self.unit_pool)
        lds, lws = [], []
        for idx, valid in row_chunks(self.n, min(512, self.n)):
            ld, lw = _lists_from_points(self.target, jnp.asarray(idx), points, weights, self.k)
            lds.append(ld[valid])
            lws.append(lw[valid])
        return KnnState(jnp.concatenate(lds), jnp.concatenate(lws), int(points.shape[0]),
                        float(jnp.sum(weights)),
                        unit=self.unit_pool and bool(jnp.all(weights == 1.0)))

    def ranks_after_adding(self, state) -> int:
        return min(self.k, state.picked + 1)

    def choice_ranks(self, state) -> int:
        return self.k if state.picked >= self.k else 1

    def comparable(self, state) -> bool:
        """Whether the KL before the next pick is comparable with the KL after it."""
        return state.picked >= self.k

    def kl(self, state) -> float:
        if state.picked == 0:
            return float("inf")
        ranks = min(self.k, state.picked)
        score = jnp.sum(self.abar * list_score(state.lists_ld, state.lists_w, ranks, self.dim))
        return self._kl_from_score(float(score), state.total_w, ranks)

    def _kl_from_score(self, score, total_w, ranks):
        return score - float(self.self_means[ranks - 1]) + float(np.log(total_w)) - self.target_const

    def accept(self, state: KnnState, row: int) -> KnnState:
        weight = self.pool_w[row]
        watched = max(state.gains_ranks, 1) - 1
        new_ld, new_w, changed = _insert_point(self.target, state.lists_ld, state.lists_w,
                                               self.pool[row], weight, watched)
        new = state._replace(lists_ld=new_ld, lists_w=new_w, picked=state.picked + 1,
                             total_w=state.total_w + float(weight))
        if state.gains is None:
            return new
        ranks = state.gains_ranks
        if self.choice_ranks(new) != ranks or state.relative != self._closed(new):
            return new._replace(gains=None, gains_ranks=0, relative=False)
        changed = np.flatnonzero(np.asarray(changed))
        if not changed.size:
            return new
        if state.relative and not self.cached_blocks:
            delta = self._rows_delta(state, new, changed, ranks)
        elif state.relative and new.unit:
            lists = (state.lists_ld[:, ranks - 1], new_ld[:, ranks - 1])
            delta = self._gain_pass(_fast_delta_kernel, _fast_delta_kernel_cached, changed,
                                    ranks, lists)
        elif state.relative:
            lists = (*weighted_lists(state.lists_ld, state.lists_w, ranks),
                     *weighted_lists(new_ld, new_w, ranks))
            delta = self._gain_pass(_wfast_delta_kernel, _wfast_delta_kernel_cached, changed,
                                    ranks, lists, weights=True)
        else:
            delta = self._gain_pass(_knn_gain_delta_kernel, None, changed, ranks,
                                    (state.lists_ld, state.lists_w, new_ld, new_w))
        return new._replace(gains=state.gains + delta)

    def _rows_delta(self, state, new, changed, ranks):
        """The closed form's change of the gains without the distance cache.

        A changed target's list changes the gain of a pool row only where the row lies inside
        the list's old K-th radius. A target whose rows inside that radius are kept (with the
        radius they were taken at, at least the old one: after a roll-back to an older state it
        may not be) is rescored on those rows alone, and its rows are then trimmed to the new
        radius; any other is rescored on the whole pool, block by block, and its rows inside the
        new radius are kept if they fit in the budget. The radii shrink fast as picks go on, so
        after the first picks a pick costs little more than with the cache."""
        if ranks != self._rows_ranks:                # radii of another rank: of no use now
            self._rows, self._row_count, self._rows_ranks = {}, 0, ranks
        old_lists = weighted_lists(state.lists_ld, state.lists_w, ranks)
        new_lists = weighted_lists(new.lists_ld, new.lists_w, ranks)
        old_radius = np.asarray(state.lists_ld[:, ranks - 1])
        new_radius = np.asarray(new.lists_ld[:, ranks - 1])
        have, need = [], []
        for i in changed.tolist():
            kept = self._rows.get(i)
            (have if kept is not None and old_radius[i] <= kept[2] else need).append(i)
        if need:
            delta = self._dense_delta(np.asarray(need), old_lists, new_lists, new_radius, ranks)
        else:
            delta = jnp.zeros((self.pool_padded.shape[0],), jnp.float32)
        if have:
            rows = [self._rows[i] for i in have]
            pool_w = np.asarray(self.pool_w_padded)
            # In slices of at most PAIR_CHUNK pairs, filled target by target: bounded memory
            # (each pair gathers its lists; nothing the size of all kept rows is built) and few
            # shapes to compile (powers of two from 1024).
            cap = max(1, min(sum(len(r[0]) for r in rows), PAIR_CHUNK))   # pairs per slice
            size = max(1024, 1 << (cap - 1).bit_length())
            tgt, prow = np.zeros(size, np.int32), np.zeros(size, np.int32)
            x = np.zeros(size, np.float32)
            n = 0

            def flush(delta, n):
                # NumPy copies: on the CPU, JAX may alias a NumPy array and read it after this
                # returns (dispatch is asynchronous), and these buffers are refilled.
                tgt[n:], prow[n:], x[n:] = 0, 0, 0.0
                return _pairs_delta(delta, self.abar, *old_lists, *new_lists,
                                    jnp.asarray(tgt.copy()), jnp.asarray(prow.copy()),
                                    jnp.asarray(x.copy()), jnp.asarray(pool_w[prow]),
                                    jnp.asarray(np.arange(size) < n), ranks, self.dim)

            for i, (idx, ld, _) in zip(have, rows, strict=True):
                lo = 0
                while lo < len(idx):
                    take = min(cap - n, len(idx) - lo)
                    tgt[n:n + take] = i
                    prow[n:n + take] = idx[lo:lo + take]
                    x[n:n + take] = ld[lo:lo + take]
                    n, lo = n + take, lo + take
                    if n == cap:
                        delta, n = flush(delta, n), 0
            if n:
                delta = flush(delta, n)
            for i, (idx, ld, _) in zip(have, rows, strict=True):
                inside = ld < new_radius[i]
                self._row_count -= len(idx) - int(inside.sum())
                self._rows[i] = (idx[inside], ld[inside], float(new_radius[i]))
        return delta

    def _dense_delta(self, targets, old_lists, new_lists, new_radius, ranks):
        """:meth:`_rows_delta` for targets rescored on the whole pool. Keeps their rows inside
        the new radius while the budget lasts (a target whose rows would not fit keeps none)."""
        size = _chunk_size(len(targets))
        room = self.row_budget - self._row_count
        for i in targets.tolist():                    # taken at a wider radius: replaced below
            stale = self._rows.pop(i, None)
            if stale is not None:
                self._row_count -= len(stale[0])
                room += len(stale[0])
        found: dict[int, list] = {int(i): [] for i in targets}
        counts = dict.fromkeys(found, 0)
        out = []
        for start in range(0, self.pool_padded.shape[0], self.block):
            block = self.pool_padded[start:start + self.block]
            pool_w = self.pool_w_padded[start:start + self.block]
            acc = jnp.zeros((self.block,), jnp.float32)
            for lo in range(0, len(targets), size):
                part = targets[lo:lo + size]
                idx = np.zeros(size, np.int32)
                idx[:len(part)] = part
                valid = np.arange(size) < len(part)
                ld = _chunk_ld(self.target, jnp.asarray(idx), block)
                acc = acc + _wfast_delta_ld(self.abar, *old_lists, *new_lists, jnp.asarray(idx),
                                            jnp.asarray(valid), ld, pool_w, ranks, self.dim)
                if room <= 0:                         # no budget left: these keep no rows
                    for i in part.tolist():
                        if i in found:
                            room += counts.pop(i)
                            del found[i]
                    continue
                if not any(i in found for i in part.tolist()):
                    continue
                ld_np = np.asarray(ld)[:len(part)]
                inside = ld_np < new_radius[part][:, None]
                inside[:, max(0, self.pool_rows - start):] = False      # padding rows
                for c, n in enumerate(inside.sum(axis=1).tolist()):
                    i = int(part[c])
                    if i not in found:
                        continue
                    if n > room:                      # does not fit: this target keeps none
                        room += counts.pop(i)
                        del found[i]
                        continue
                    cols = np.flatnonzero(inside[c])
                    found[i].append(((start + cols).astype(np.int32), ld_np[c, cols]))
                    counts[i] += n
                    room -= n
            out.append(acc)
        for i in list(found):            # each target's pieces freed once joined: no second copy
            parts = found.pop(i)
            idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
            lds = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
            del parts
            self._rows[i] = (idx, lds, float(new_radius[i]))
            self._row_count += len(idx)
        return jnp.concatenate(out)

    def _closed(self, state) -> bool:
        """The closed form applies: the ranks scored are all filled (and, with weights other
        than 1, ``closed_form`` is on)."""
        return (state.picked >= self.choice_ranks(state)
                and (state.unit or self.closed_form))

    def _gain_pass(self, kernel, cached_kernel, target_rows, ranks, lists, weights=False):
        """Runs a gain kernel over chunks of ``target_rows`` and every pool block (the cached
        kernel on the blocks whose distances are cached); ``weights`` passes the block's pool
        weights to the closed-form kernels (the general kernel always takes them)."""
        size = _chunk_size(len(target_rows))
        cache = (self._cache_blocks() if cached_kernel is not None and self.cached_blocks
                 else [None] * self.blocks)
        chunks = []
        for lo in range(0, len(target_rows), size):
            part = target_rows[lo:lo + size]
            idx = np.zeros(size, np.int32)
            idx[:len(part)] = part
            chunks.append((jnp.asarray(idx), jnp.asarray(np.arange(size) < len(part))))
        out = []
        for b, start in enumerate(range(0, self.pool_padded.shape[0], self.block)):
            acc = jnp.zeros((self.block,), jnp.float32)
            pool_w = (self.pool_w_padded[start:start + self.block],) if weights else ()
            for idx, valid in chunks:
                if cache[b] is not None:
                    acc = acc + cached_kernel(self.abar, *lists, idx, valid, cache[b], *pool_w,
                                              ranks, self.dim)
                elif cached_kernel is not None:        # closed form, distances computed
                    acc = acc + kernel(self.target, self.abar, *lists, idx, valid,
                                       self.pool_padded[start:start + self.block], *pool_w,
                                       ranks, self.dim)
                else:
                    acc = acc + kernel(self.target, self.abar, *lists, idx, valid,
                                       self.pool_padded[start:start + self.block],
                                       self.pool_w_padded[start:start + self.block], ranks,
                                       self.dim)
            out.append(acc)
        return jnp.concatenate(out)

    def with_gains(self, state: KnnState) -> KnnState:
        ranks = self.choice_ranks(state)
        if state.gains is not None and state.gains_ranks == ranks:
            return state
        rows = np.arange(self.n)
        if self._closed(state) and state.unit:
            gains = self._gain_pass(_fast_gain_kernel, _fast_gain_kernel_cached, rows, ranks,
                                    (state.lists_ld[:, ranks - 1],))
            return state._replace(gains=gains, gains_ranks=ranks, relative=True)
        if self._closed(state):
            gains = self._gain_pass(_wfast_gain_kernel, _wfast_gain_kernel_cached, rows, ranks,
                                    weighted_lists(state.lists_ld, state.lists_w, ranks),
                                    weights=True)
            return state._replace(gains=gains, gains_ranks=ranks, relative=True)
        gains = self._gain_pass(_knn_gain_kernel, None, rows, ranks,
                                (state.lists_ld, state.lists_w))
        return state._replace(gains=gains, gains_ranks=ranks, relative=False)

    def propose_exact(self, state: KnnState, available):
        assert state.gains is not None, "with_gains() first"
        scores = state.gains[:self.pool_rows] + jnp.log(state.total_w + self.pool_w)
        row = int(_pick_with_ties(scores, available, self.closeness()))
        ranks = self.ranks_after_adding(state)
        if ranks == state.gains_ranks:
            score = float(state.gains[row])
            if state.relative:
                score += float(jnp.sum(self.abar * list_score(state.lists_ld, state.lists_w,
                                                              ranks, self.dim)))
        else:
            score = float(_knn_score_with(self.target, self.abar, state.lists_ld, state.lists_w,
                                          self.pool[row], self.pool_w[row], ranks, self.dim))
        return row, self._kl_from_score(score, state.total_w + float(self.pool_w[row]), ranks)

    # -- gradient --------------------------------------------------------------
    def gradient_norm(self, state, v) -> float:
        g = _knn_surrogate_grad(self.target, self.abar, state.lists_ld, v,
                                self.choice_ranks(state), self.dim, self.smoothing)
        return float(jnp.linalg.norm(g))

    def propose_gradient(self, state, available, v, steps, lr_scale):
        ranks = self.ranks_after_adding(state)
        v, row, score = _knn_gradient_step(
            self.target, self.abar, state.lists_ld, state.lists_w, self.pool, self.pool_w,
            available, v, steps, lr_scale, self.choice_ranks(state), ranks, self.dim,
            self.smoothing)
        row = int(row)
        kl = self._kl_from_score(float(score), state.total_w + float(self.pool_w[row]), ranks)
        return v, row, kl


# ---------------------------------------------------------------------------
# averaged engine (the source's estimator)
# ---------------------------------------------------------------------------

class AveragedState(NamedTuple):
    weighted_sum: float      # U = sum_j b_j col_j
    picked: int              # m
    total_w: float           # B
    # Only with discard_nearest_for_xy (unit weights): per-target sums and nearest distances.
    row_sums: np.ndarray | None = None   # [n] sum_j log(r_ij + eps)
    nearest: np.ndarray | None = None    # [n] min_j r_ij


def _averaged_surrogate(v, target, abar, per_point, eps, dim):
    r = jnp.sqrt(sq_distances(target, v[None, :])[:, 0])
    return dim * jnp.sum(abar * jnp.log(r + eps)) * per_point


def _averaged_discard_surrogate(v, target, abar, per_point, eps, dim, nearest):
    r = jnp.sqrt(sq_distances(target, v[None, :])[:, 0])
    kept = r > nearest           # v's own entry is the one discarded where it is nearest
    return dim * jnp.sum(jnp.where(kept, abar * jnp.log(r + eps), 0.0)) * per_point


@partial(jax.jit, static_argnames=("discard",))
def _averaged_gradient_step(target, abar, pool, available, v, steps, lr_scale, per_point, eps,
                            dim, discard, nearest):
    if discard:
        v = _descend(_averaged_discard_surrogate, v, steps, lr_scale, target, abar, per_point,
                     eps, dim, nearest)
    else:
        v = _descend(_averaged_surrogate, v, steps, lr_scale, target, abar, per_point, eps, dim)
    row = _nearest_available(pool, available, v)
    r = jnp.sqrt(sq_distances(target, pool[row][None, :])[:, 0])
    return v, row, jnp.sum(abar * jnp.log(r + eps)), r


@jax.jit
def _point_stats(target, abar, point, eps):
    """A point's column ``sum_i abar_i log(r_i + eps)`` and its distances ``r`` to the targets."""
    r = jnp.sqrt(sq_distances(target, point[None, :])[:, 0])
    return jnp.sum(abar * jnp.log(r + eps)), r


@jax.jit
def _discard_stats(target, points, eps):
    r = jnp.sqrt(sq_distances(target, points))
    return jnp.sum(jnp.log(r + eps), axis=1), jnp.min(r, axis=1)


@partial(jax.jit, static_argnames=("discard",))
def _averaged_surrogate_grad(target, abar, v, per_point, eps, dim, discard, nearest):
    if discard:
        return jax.grad(_averaged_discard_surrogate)(v, target, abar, per_point, eps, dim, nearest)
    return jax.grad(_averaged_surrogate)(v, target, abar, per_point, eps, dim)


class AveragedEngine:
    """Greedy selection state for the source's averaged estimator.

    Its state is a few numbers (and two ``[n]`` vectors with ``discard_nearest_for_xy``), kept on
    the host in NumPy; only the distance work runs in jitted kernels.
    """

    def __init__(self, target, target_w, pool, pool_w, k, *, eps=1e-8,
                 discard_nearest_for_xy=False, block_size=4096, dim=None):
        self.target = target
        self.n = target.shape[0]
        self.dim = float(target.shape[1] if dim is None else dim)
        self.k = k
        self.eps = float(eps)
        self.discard = bool(discard_nearest_for_xy)
        abar = np.asarray(target_w, np.float64)
        abar = abar / abar.sum()
        self.abar_np = abar
        self.abar = jnp.asarray(abar, jnp.float32)
        self_sq, _ = target_self_neighbours(target, k)
        self.rho_term = float(np.sum(abar * np.log(np.sqrt(np.asarray(self_sq)[:, -1])
                                                   + self.eps)))
        self.pool = pool
        self.pool_np = np.asarray(pool)
        self.pool_w = np.asarray(pool_w, np.float64)
        self.pool_rows = pool.shape[0]
        self.block_size = block_size
        self._columns = None
        self._no_nearest = jnp.zeros((self.n,), jnp.float32)

    def columns(self, points) -> np.ndarray:
        """``col_j = sum_i abar_i log(|t_i - p_j| + eps)`` for a set of points, in blocks."""
        points = jnp.asarray(points)
        out = []
        for start in range(0, points.shape[0], self.block_size):
            block = points[start:start + self.block_size]
            acc = np.zeros((block.shape[0],), np.float64)
            for idx, valid in row_chunks(self.n, min(512, self.n)):
                acc += np.asarray(averaged_columns(self.target, self.abar, jnp.asarray(idx),
                                                   jnp.asarray(valid), block, self.eps))
            out.append(acc)
        return np.concatenate(out)

    def initial_state(self, points=None, weights=None) -> AveragedState:
        if points is None or points.shape[0] == 0:
            state = AveragedState(0.0, 0, 0.0)
            if self.discard:
                state = state._replace(row_sums=np.zeros((self.n,)),
                                       nearest=np.full((self.n,), np.inf))
            return state
        weights = np.asarray(weights, np.float64)
        cols = self.columns(points)
        state = AveragedState(float(np.sum(weights * cols)), int(points.shape[0]),
                              float(np.sum(weights)))
        if self.discard:
            row_sums, nearest = _discard_stats(self.target, jnp.asarray(points), self.eps)
            state = state._replace(row_sums=np.asarray(row_sums, np.float64),
                                   nearest=np.asarray(nearest, np.float64))
        return state

    def comparable(self, state) -> bool:
        return True

    def _kl(self, weighted_sum, total_w, count, row_sums=None, nearest=None):
        if count == 0:
            return float("inf")
        if self.discard:
            if count < 2:
                return float("inf")
            kept = row_sums - np.log(nearest + self.eps)
            mean_log = float(np.sum(self.abar_np * kept)) / (count - 1)
        else:
            mean_log = weighted_sum / total_w
        return (self.dim * mean_log - self.dim * self.rho_term
                + averaged_constant(self.k, count, self.n))

    def kl(self, state) -> float:
        return self._kl(state.weighted_sum, state.total_w, state.picked, state.row_sums,
                        state.nearest)

    def accept(self, state: AveragedState, row: int) -> AveragedState:
        w = float(self.pool_w[row])
        col, r = _point_stats(self.target, self.abar, jnp.asarray(self.pool_np[row]), self.eps)
        new = AveragedState(state.weighted_sum + w * float(col), state.picked + 1,
                            state.total_w + w)
        if self.discard:
            assert state.row_sums is not None and state.nearest is not None
            r = np.asarray(r, np.float64)
            new = new._replace(row_sums=state.row_sums + np.log(r + self.eps),
                               nearest=np.minimum(state.nearest, r))
        return new

    def with_gains(self, state):
        if self._columns is None:
            self._columns = self.columns(self.pool)
        return state

    def propose_exact(self, state, available):
        # The source's estimator scores a row by its own column only: the order never changes.
        sums = (state.weighted_sum + self.pool_w * self._columns) / (state.total_w + self.pool_w)
        row = int(np.argmin(np.where(np.asarray(available), sums, np.inf)))
        total = state.total_w + float(self.pool_w[row])
        return row, self._kl(float(sums[row]) * total, total, state.picked + 1)

    def _per_point(self, state):
        # The new point's share of the mean: 1/(m+1), or 1/m once its own nearest is dropped.
        return 1.0 / (state.picked if self.discard and state.picked else state.picked + 1)

    def _nearest_arg(self, state):
        return jnp.asarray(state.nearest, jnp.float32) if self.discard else self._no_nearest

    def gradient_norm(self, state, v) -> float:
        g = _averaged_surrogate_grad(self.target, self.abar, v, self._per_point(state), self.eps,
                                     self.dim, self.discard, self._nearest_arg(state))
        return float(np.linalg.norm(np.asarray(g, np.float64)))

    def propose_gradient(self, state, available, v, steps, lr_scale):
        v, row, col, r = _averaged_gradient_step(
            self.target, self.abar, self.pool, available, v, steps, lr_scale,
            self._per_point(state), self.eps, self.dim, self.discard, self._nearest_arg(state))
        row = int(row)
        w = float(self.pool_w[row])
        if self.discard:
            r = np.asarray(r, np.float64)
            kl = self._kl(0.0, 0.0, state.picked + 1, state.row_sums + np.log(r + self.eps),
                          np.minimum(state.nearest, r))
        else:
            kl = self._kl(state.weighted_sum + w * float(col), state.total_w + w, state.picked + 1)
        return v, row, kl
