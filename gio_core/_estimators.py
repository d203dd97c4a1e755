"""k-nearest-neighbour KL divergence estimators and their jitted building blocks.

Two estimators of KL(target || selected) live here:

* ``averaged``: the estimator of the GIO source package. It averages the kNN
  estimator over *every* neighbour rank ``l = 1..m`` of the selected set, which
  makes it a plain mean of ``d * log(distance + eps)`` over all (target,
  selected) pairs. It is additive over selected points, so a descent on it
  collapses onto the centre of the target. Kept for compatibility.
* ``knn``: the fixed-k estimator of Wang, Kulkarni and Verdu (2009), averaged
  over the neighbour ranks ``l = 1..k`` (each rank is a consistent estimator,
  so their mean is too). It depends on the selected set and is minimised by
  covering the target. With fewer than ``k`` selected points the ranks
  ``1..m`` are used. Optional point weights generalise the neighbour counts to
  cumulative weights (a selected centroid standing for 40 rows counts 40).

All functions take float arrays of shape ``[n, d]`` and compute in float32.
Distances use the expansion ``|a|^2 + |b|^2 - 2 a.b`` clipped at ``1e-10``
(as the source does), so coincident points have a finite log-distance.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

SQ_DIST_FLOOR = 1e-10
SQ_DIST_CEIL = 1e20
# Stand-in log-distance for an empty neighbour slot: sorts after every real one.
EMPTY_SLOT = 1e30


def sq_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances, shape ``[len(a), len(b)]``, clipped as in the source."""
    # Same operation order as the source, so the compatible path rounds alike.
    a2 = jnp.sum(a ** 2, axis=-1)[:, None]
    b2 = jnp.sum(b ** 2, axis=-1)[None, :]
    return jnp.clip(a2 + (-2 * (a @ b.T)) + b2, SQ_DIST_FLOOR, SQ_DIST_CEIL)


def log_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``log |a_i - b_j|``, shape ``[len(a), len(b)]``."""
    return 0.5 * jnp.log(sq_distances(a, b))


def row_chunks(n: int, size: int):
    """Yield ``(index_array, valid_mask)`` pairs of a fixed length ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        idx = np.arange(start, start + size)
        valid = idx < n
        yield np.where(valid, idx, 0).astype(np.int32), valid


# ---------------------------------------------------------------------------
# Target self-neighbours (the "rho" side of both estimators)
# ---------------------------------------------------------------------------

@partial(jax.jit, static_argnames=("k",))
def _self_knn_chunk(target, idx, k):
    sq = sq_distances(target[idx], target)
    self_mask = idx[:, None] == jnp.arange(target.shape[0])[None, :]
    sq = jnp.where(self_mask, jnp.inf, sq)
    neg, nbr = jax.lax.top_k(-sq, k)
    return -neg, nbr


def target_self_neighbours(target: jax.Array, k: int, chunk: int = 512):
    """The ``k`` nearest *other* target points of each target point.

    Returns:
      ``(sq_dist, index)``, both of shape ``[n, k]``, sorted by distance. A point is
      never its own neighbour; an exact duplicate is (at the floored distance).
    """
    n = target.shape[0]
    chunk = min(chunk, n)
    dists, nbrs = [], []
    for idx, valid in row_chunks(n, chunk):
        dd, nn = _self_knn_chunk(target, jnp.asarray(idx), k)
        dists.append(np.asarray(dd)[valid])
        nbrs.append(np.asarray(nn)[valid])
    # Host-side assembly: eager jax.numpy ops here would each compile for their shape.
    return jnp.asarray(np.concatenate(dists)), jnp.asarray(np.concatenate(nbrs))


# ---------------------------------------------------------------------------
# knn estimator: sorted neighbour lists with weights
# ---------------------------------------------------------------------------

def insert_sorted(lists_ld, lists_w, new_ld, new_w):
    """Insert one value into each sorted neighbour list, dropping the last slot.

    Args:
      lists_ld: log-distances, shape ``[..., k]``, ascending (``EMPTY_SLOT`` pads).
      lists_w: weights of those neighbours, shape ``[..., k]`` (0 pads).
      new_ld: log-distance of the inserted point, shape ``[...]``.
      new_w: its weight, broadcastable to ``new_ld``.
    Returns:
      The new ``(lists_ld, lists_w)``.
    """
    new_ld = new_ld[..., None]
    new_w = jnp.broadcast_to(new_w, new_ld.shape[:-1])[..., None]
    k = lists_ld.shape[-1]
    slot = jnp.arange(k)
    pos = jnp.sum(lists_ld <= new_ld, axis=-1, keepdims=True)
    shifted_ld = jnp.concatenate([lists_ld[..., :1], lists_ld[..., :-1]], axis=-1)
    shifted_w = jnp.concatenate([lists_w[..., :1], lists_w[..., :-1]], axis=-1)
    out_ld = jnp.where(slot < pos, lists_ld, jnp.where(slot == pos, new_ld, shifted_ld))
    out_w = jnp.where(slot < pos, lists_w, jnp.where(slot == pos, new_w, shifted_w))
    return out_ld, out_w


def list_score(lists_ld, lists_w, n_ranks, dim):
    """Mean over the first ``n_ranks`` slots of ``dim * log nu_l - log C_l``.

    ``C_l`` is the cumulative weight of the ``l`` nearest neighbours (``l`` when
    all weights are 1). Shape ``[..., k] -> [...]``.
    """
    slot = jnp.arange(lists_ld.shape[-1])
    used = slot < n_ranks
    cum_w = jnp.cumsum(lists_w, axis=-1)
    term = dim * lists_ld - jnp.log(jnp.where(used, cum_w, 1.0))
    return jnp.sum(jnp.where(used, term, 0.0), axis=-1) / n_ranks


@jax.jit
def self_term_table(self_sq, self_nbr, target_w, dim):
    """Target-side term of the knn estimator for every rank count ``K = 1..k``.

    Returns an array of shape ``[n, k]`` whose column ``K-1`` is
    ``mean_{l<=K} (dim * log rho_l - log C^target_l)``.
    """
    k = self_sq.shape[1]
    ld = 0.5 * jnp.log(self_sq)
    cum_w = jnp.cumsum(target_w[self_nbr], axis=1)
    term = dim * ld - jnp.log(cum_w)
    return jnp.cumsum(term, axis=1) / jnp.arange(1, k + 1)


def intrinsic_dimension(target, k: int = 10, chunk: int = 512) -> float:
    """Levina-Bickel maximum-likelihood estimate of the data's intrinsic dimension.

    ``(mean_i [1/(k-1) sum_{j<k} log(T_k(i) / T_j(i))])^-1`` over the ``k`` nearest other points
    (MacKay and Ghahramani's average of the inverse). Embeddings from a 384-dimensional model
    typically lie near a manifold of a few dozen dimensions or fewer.

    Args:
      target: array ``[n, d]`` with ``n > k``.
      k: neighbours used (capped at ``n - 1``).
    """
    target = jnp.asarray(target, jnp.float32)
    k = int(min(k, target.shape[0] - 1))
    if k < 2:
        return float(target.shape[1])
    sq, _ = target_self_neighbours(target, k, chunk)
    ld = 0.5 * jnp.log(sq)
    inv = jnp.mean(ld[:, -1:] - ld[:, :-1], axis=1)
    value = 1.0 / float(jnp.mean(inv))
    return float(min(max(value, 1.0), target.shape[1]))


def resolve_dim(dim, target) -> float:
    """The dimension used in the estimators: the ambient one for ``None``, the intrinsic
    estimate for ``"auto"``, or the given positive number."""
    if dim is None:
        return float(np.shape(target)[1])
    if isinstance(dim, str):
        if dim != "auto":
            raise ValueError(f"dim must be None, 'auto' or a positive number; got {dim!r}.")
        return intrinsic_dimension(target)
    if isinstance(dim, bool) or not isinstance(dim, (int, float, np.integer, np.floating)) \
            or not np.isfinite(dim) or dim <= 0:
        raise ValueError(f"dim must be None, 'auto' or a positive number; got {dim!r}.")
    return float(dim)


def _checked(target, selected, k, target_weights, selected_weights):
    """Validates an estimator's inputs; returns float32 arrays (target, selected, a, b)."""
    from gio_core._validation import as_points, as_weights, check_k, same_dim
    target = as_points("target", target)
    selected = as_points("selected", selected)
    same_dim(target=target, selected=selected)
    check_k(k, target.shape[0])
    a = as_weights("target_weights", target_weights, target.shape[0])
    b = as_weights("selected_weights", selected_weights, selected.shape[0])
    return (jnp.asarray(target), jnp.asarray(selected), jnp.asarray(a), jnp.asarray(b))


def knn_kl(target, selected, k: int = 5, target_weights=None, selected_weights=None,
           dim=None, chunk: int = 512) -> float:
    """KL(target || selected) by the rank-averaged Wang-Kulkarni-Verdu estimator.

    ``sum_i a_i/A * mean_{l<=K} [d log(nu_l(i)/rho_l(i)) + log(C^t_l(i)/C^s_l(i))]
    + log(B) - sum_i a_i/A log(A - a_i)`` with ``K = min(k, m)``. With unit
    weights this is ``d/n sum_i mean_l log(nu_l/rho_l) + log(m/(n-1))``.

    Args:
      target: array of shape ``[n, d]``, ``n > k``.
      selected: array of shape ``[m, d]``, ``m >= 1``.
      k: neighbour ranks averaged, ``1 <= k <= n - 1``.
      target_weights, selected_weights: optional positive weights, ``[n]`` / ``[m]``.
      dim: the ``d`` of the estimator: ``None`` for the ambient dimension, ``"auto"`` for the
        target's intrinsic dimension (:func:`intrinsic_dimension`), or a number.
    Returns:
      The estimate, a Python float.
    Raises:
      ValueError: empty, non-finite or mismatched arrays, ``k`` out of range, bad weights.
    """
    target, selected, a, b = _checked(target, selected, k, target_weights, selected_weights)
    n = target.shape[0]
    dim = resolve_dim(dim, target)
    m = selected.shape[0]
    n_ranks = min(k, m)
    self_sq, self_nbr = target_self_neighbours(target, k, chunk)
    rho = self_term_table(self_sq, self_nbr, a, dim)[:, n_ranks - 1]
    parts = []
    for idx, valid in row_chunks(n, min(chunk, n)):
        parts.append(_knn_selected_chunk(target, jnp.asarray(idx), selected, b, n_ranks, dim)[valid])
    nu = jnp.concatenate(parts)
    abar = a / jnp.sum(a)
    value = (jnp.sum(abar * (nu - rho)) + jnp.log(jnp.sum(b))
             - jnp.sum(abar * jnp.log(jnp.sum(a) - a)))
    return float(value)


@partial(jax.jit, static_argnames=("n_ranks",))
def _knn_selected_chunk(target, idx, selected, sel_w, n_ranks, dim):
    ld = log_distances(target[idx], selected)
    neg, nbr = jax.lax.top_k(-ld, n_ranks)
    return list_score(-neg, sel_w[nbr], n_ranks, dim)


# ---------------------------------------------------------------------------
# averaged estimator (the source's), reproduced term for term
# ---------------------------------------------------------------------------

def averaged_constant(k: int, m: int, n: int) -> float:
    """``mean_{l=1..m} log(k m / (l (n-1)))``, the source's normalising term."""
    return math.log(k * m / (n - 1)) - math.lgamma(m + 1.0) / m


def averaged_kl_reference(x, y, k: int = 5, eps: float = 1e-8,
                          discard_nearest_for_xy: bool = False) -> jax.Array:
    """The source's estimator D(x || y), computed exactly as the source does.

    Materialises the ``[n, m]`` distance matrix; meant for the compatibility
    API and for tests. ``x`` is the target sample, ``y`` the selected set.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    n, d = x.shape
    m = y.shape[0]
    xx = sq_distances(x, x)
    nns_xx = jnp.sqrt(-jax.lax.top_k(-xx, k + 1)[0][:, -1:])
    xy = sq_distances(x, y)
    if discard_nearest_for_xy:
        nns_xy = jnp.sqrt(jnp.sort(xy, axis=1)[:, 1:])
    else:
        nns_xy = jnp.sqrt(xy)
    return (jnp.mean(d * jnp.log(nns_xy + eps) - d * jnp.log(nns_xx + eps))
            + jnp.mean(jnp.log((k * m) / (jnp.arange(1, m + 1) * (n - 1)))))


def averaged_kl(target, selected, k: int = 5, eps: float = 1e-8, target_weights=None,
                selected_weights=None, dim=None, chunk: int = 512) -> float:
    """The source's estimator without the ``[n, m]`` matrix, with optional weights.

    ``d * sum_ij a_i b_j log(|t_i - s_j| + eps) / (A B) - d * sum_i a_i log(rho_k(i) + eps) / A
    + mean_{l=1..m} log(k m / (l (n-1)))``. Equals :func:`averaged_kl_reference` for unit weights.
    """
    target, selected, a, b = _checked(target, selected, k, target_weights, selected_weights)
    n = target.shape[0]
    dim = resolve_dim(dim, target)
    m = selected.shape[0]
    abar = a / jnp.sum(a)
    cols = np.zeros((m,), np.float64)
    for idx, valid in row_chunks(n, min(chunk, n)):
        cols += np.asarray(averaged_columns(target, abar, jnp.asarray(idx), jnp.asarray(valid),
                                            selected, eps))
    self_sq, _ = target_self_neighbours(target, k, chunk)
    rho_term = float(np.sum(np.asarray(abar) * np.log(np.sqrt(np.asarray(self_sq)[:, -1]) + eps)))
    b = np.asarray(b, np.float64)
    return float(dim * np.sum(b * cols) / np.sum(b) - dim * rho_term + averaged_constant(k, m, n))


@jax.jit
def averaged_columns(target, abar, idx, valid, points, eps):
    """``sum_{i in chunk} abar_i log(|t_i - p_j| + eps)``, shape ``[len(points)]``."""
    r = jnp.sqrt(sq_distances(target[idx], points))
    weight = jnp.where(valid, abar[idx], 0.0)
    return jnp.sum(weight[:, None] * jnp.log(r + eps), axis=0)


# The source's formula compiled once per shape, for repeated calls (the compatibility class).
averaged_kl_reference_jit = jax.jit(averaged_kl_reference,
                                    static_argnames=("k", "discard_nearest_for_xy"))


def kl_noise_floor(target, k: int = 5, target_weights=None, dim=None, splits: int = 5,
                   seed: int = 0) -> float:
    """What the knn estimator reads between two halves of the target sample itself: the median,
    over ``splits`` seeded random halvings, of ``knn_kl(half_a, half_b)``.

    Two samples of one distribution differ by sampling noise and the estimator's finite-sample
    bias alone, so a selection whose estimate lies near this value is as close to the target as
    the estimator can tell. Drawn on the pipeline's KL curve as its floor. (It is not a stopping
    rule: the estimate of a greedy selection depends on how many points it holds, so the floor
    is crossed far from the best size on clustered pools; ``stop_criterion="mmd"`` is the rule.)

    Args:
      target: array ``[n, d]`` with ``n >= 2 * (k + 1)``.
      k, target_weights, dim: as for :func:`knn_kl` (``dim`` resolved on the whole target).
      splits: random halvings; ``seed`` seeds them.
    """
    from gio_core._validation import as_points, as_weights, check_number
    target = as_points("target", target)
    check_number("splits", splits, low=1, integer=True)
    weights = as_weights("target_weights", target_weights, target.shape[0])
    n = target.shape[0]
    if n // 2 <= k:
        raise ValueError(f"the noise floor needs more than {2 * (k + 1) - 1} target points for "
                         f"k={k} (each half must hold more than k); got {n}.")
    d = resolve_dim(dim, target)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(splits)):
        order = rng.permutation(n)
        a, b = order[: n // 2], order[n // 2:]
        values.append(knn_kl(target[a], target[b], k=k, target_weights=weights[a],
                             selected_weights=weights[b], dim=d))
    return float(np.median(values))
