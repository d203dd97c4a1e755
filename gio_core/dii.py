"""Differentiable Information Imbalance (DII): learnt feature weights for a distance.

Given points in a space A (``data_A``, ``[N, D_A]``) and the same points in a target space B
(features ``data_B`` or a distance matrix ``distances_B``), the DII of a weighted distance in A,

    DII(A(w) -> B) = 2 / (N * N_cols) * sum_i sum_j c_ij(w) r^B_ij,
    c_ij(w) = softmax_j(-d^A_ij(w)^2 / lambda_i),   d^A_ij(w)^2 = sum_a (w_a (x_ia - x_ja))^2,

is the average rank in B of the points that are close in A: near 0 when neighbours in A are
neighbours in B, near 1 when A says nothing about B. Minimising it over ``w`` by gradient descent
learns which features of A carry the information about B, and how much.

:class:`DiffImbalance` mirrors DADApy 0.3.4's class of the same name (constructor, ``train``,
``return_final_dii``, ``forward_greedy_feature_selection``, ``backward_greedy_feature_selection``,
same arguments, defaults, outputs and seeding), so code written for DADApy runs after changing its
import line. Differences: bad input raises ``ValueError`` naming the argument (DADApy asserts);
the greedy searches print nothing; ``train(progress=False)`` silences the bar; one compiled epoch
function per configuration is shared by every instance and candidate (no re-tracing).

Random draws. Today's JAX draws other numbers for the same key than DADApy 0.3.4's JAX 0.4.30
(JAX's ``jax_threefry_partitionable`` is on by default since JAX 0.5), so the row sample, the
mini-batches and the error split differ from DADApy's for the same ``seed``, and so do results
that depend on them. ``DiffImbalance(..., random_draws="dadapy")``, or any code inside ``with
dadapy_random():``, draws what DADApy drew; the default stays JAX's current generator.

Memory. Training needs the ``[N_rows, N_cols]`` rank matrix of B (int32: 4 bytes per entry, 256 MB
at N = 8,000) and, per step, the distance work of a block of rows at a time: at most
``BLOCK_ELEMENTS`` (2**27) entries of the ``[rows, cols, D_A]`` difference tensor, recomputed
in the backward pass instead of stored. The limit in N is the rank matrix: above about 20,000
points use ``num_points_rows`` (rows subsampled) or mini-batches.

Functional core: :func:`scaled_dist2`, :func:`rank_matrix`, :func:`neighbour_lambdas`,
:func:`diff_imbalance` are pure, jit-compatible functions of arrays.

Example:
    >>> np.random.seed(0)
    >>> data_A = np.random.normal(size=(500, 5))
    >>> dii = DiffImbalance(data_A, data_A * [10, 3, 1, 30, 7.3], num_epochs=500)
    >>> weights, imbs = dii.train()          # shapes [501, 5] and [501]
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

K_MAX = 100                 # lambda comes from the 100 nearest neighbours at most (as in DADApy)
BLOCK_ELEMENTS = 2 ** 27    # difference-tensor entries per block of rows (512 MiB in float32)
OPTIMIZERS = ("sgd", "adam", "adamw")
DECAYS = (None, "cos", "exp")
RANDOM_DRAWS = ("jax", "dadapy")


@contextlib.contextmanager
def dadapy_random():
    """Inside the block, JAX draws random numbers as JAX 0.4.30 did, so a :class:`DiffImbalance`
    samples rows, orders mini-batches and splits points for the error as DADApy 0.3.4 does with
    the same ``seed``: its results are DADApy's, to float rounding. It sets JAX's
    ``jax_threefry_partitionable`` off for the block (for every JAX draw in it) and restores it
    after."""
    with jax.threefry_partitionable(False):
        yield


def _draws(method):
    """Runs ``method`` inside :func:`dadapy_random` when the instance was made with
    ``random_draws="dadapy"``."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.random_draws == "dadapy":
            with dadapy_random():
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)
    return run


# ---------------------------------------------------------------------------
# The functional core
# ---------------------------------------------------------------------------

def _expand(params, groups):
    return params if groups is None else jnp.repeat(params, np.asarray(groups),
                                                     total_repeat_length=int(sum(groups)))


def _wrapped(diffs, periods):
    if periods is None:
        return diffs
    periodic = periods > 0
    shifts = jnp.round(diffs / jnp.where(periodic, periods, 1.0)) * periods
    return diffs - jnp.where(periodic, shifts, 0.0)


def scaled_dist2(params, rows, columns, periods=None, groups=None):
    """Squared distances between ``rows`` ``[r, D]`` and ``columns`` ``[c, D]`` after scaling
    feature ``a`` by ``params[a]`` (or, with ``groups``, each group of features by one weight);
    periodic features (``periods[a] > 0``) use the minimum image. Returns ``[r, c]``."""
    diffs = _wrapped(rows[:, None, :] - columns[None, :, :], periods)
    diffs = diffs * _expand(params, groups)[None, None, :]
    return jnp.sum(diffs * diffs, axis=-1)


TIES = ("first", "average")


def rank_rows(values, ties="first"):
    """Each row's ranks of its values, 0 for the smallest. ``ties="first"`` (DADApy): equal
    values ranked by column order, int32; ``"average"``: equal values share the mean of their
    ranks (float32), so the ranks do not depend on the order of the points."""
    if ties == "first":
        return jnp.argsort(jnp.argsort(values, axis=1), axis=1).astype(jnp.int32)
    ordered = jnp.sort(values, axis=1)
    less = jax.vmap(partial(jnp.searchsorted, side="left"))(ordered, values)
    upto = jax.vmap(partial(jnp.searchsorted, side="right"))(ordered, values)
    return ((less + upto - 1) / 2.0).astype(jnp.float32)


def rank_matrix(rows, columns, periods=None, block_rows=None, ties="first"):
    """Ranks of ``columns`` by distance from each row, ``[r, c]``: 0 for the nearest (the point
    itself, when rows are columns too), then 1, 2, ... (``ties``: see :func:`rank_rows`). With
    ``block_rows`` the rows are ranked a block at a time (bounded memory; not under jit)."""
    if block_rows is not None and block_rows < rows.shape[0]:
        return jnp.concatenate([rank_matrix(rows[i:i + block_rows], columns, periods, None, ties)
                                for i in range(0, rows.shape[0], block_rows)])
    d2 = jnp.sum(_wrapped(rows[:, None, :] - columns[None, :, :], periods) ** 2, axis=-1)
    return rank_rows(d2, ties)


def neighbour_lambdas(dist2, k, lambda_factor=0.1, point_adaptive=True, k_max=None):
    """lambda per row: ``lambda_factor`` times the squared distance to the row's ``k``-th nearest
    column at a distance above 0 (point-adaptive), or the mean of those over the rows for every
    row (adaptive). ``k`` counts from 1 and is clamped to the ``min(100, columns)`` nearest;
    ``k_max`` (static), the largest ``k`` that will be asked, saves sorting more neighbours than
    that."""
    k_max = min(K_MAX, dist2.shape[1], k_max or K_MAX)
    # Exact copies (distance 0) are not neighbours here: a point with k copies would get
    # lambda = 0 and NaN weights. Without copies this changes nothing.
    positive = jnp.where(dist2 > 0, dist2, jax.lax.stop_gradient(jnp.max(dist2)))
    smallest = -jax.lax.top_k(-positive, k_max)[0]
    kth = jnp.take(smallest, jnp.clip(jnp.asarray(k) - 1, 0, k_max - 1), axis=1)
    lambdas = kth * lambda_factor
    return lambdas if point_adaptive else jnp.full_like(lambdas, jnp.mean(lambdas))


def _masked_self(dist2, offset):
    """Rows are columns ``offset ..``: the distance of a point to itself never counts."""
    rows, cols = dist2.shape
    own = (jnp.arange(rows) + offset)[:, None] == jnp.arange(cols)[None, :]
    # Far beyond every real distance, but finite: inf would make the gradient through lambda NaN.
    return jnp.where(own, jax.lax.stop_gradient(jnp.max(dist2)) + 1e6, dist2)


def diff_imbalance(params, a_rows, a_columns, ranks_b, k, *, lambda_factor=0.1,
                   point_adaptive=True, periods=None, groups=None, exclude_self=True,
                   block_rows=None, k_max=None):
    """The DII of the weighted distance in A with respect to the ranks in B.

    Args:
      params: ``[P]`` feature weights.
      a_rows, a_columns: ``[r, D_A]`` and ``[c, D_A]`` points of A; with ``exclude_self`` row i is
        column i (the rows are the first columns), and a point is never its own neighbour.
      ranks_b: ``[r, c]`` ranks in B (self 0, then 1, 2, ...).
      k: the neighbour rank that sets lambda.
      block_rows: rows per block of the distance work (None: all at once).
      k_max: the largest ``k`` this call may be given (static; None: 100).
    Returns:
      The scalar ``2 / c * mean_i sum_j c_ij ranks_b[i, j]``, as DADApy's training DII.
    """
    r, c = ranks_b.shape
    opts = dict(periods=periods, groups=groups)
    if block_rows is None or block_rows >= r:
        d2 = scaled_dist2(params, a_rows, a_columns, **opts)
        if exclude_self:
            d2 = _masked_self(d2, 0)
        lambdas = neighbour_lambdas(d2, k, lambda_factor, point_adaptive, k_max)
        weights = jax.nn.softmax(-d2 / lambdas[:, None], axis=1)
        return 2.0 / c * jnp.sum(weights * ranks_b) / r

    blocks = -(-r // block_rows)
    pad = blocks * block_rows - r
    rows_p = jnp.pad(a_rows, ((0, pad), (0, 0))).reshape(blocks, block_rows, -1)
    ranks_p = jnp.pad(ranks_b, ((0, pad), (0, 0))).reshape(blocks, block_rows, c)
    valid = (jnp.arange(blocks * block_rows) < r).reshape(blocks, block_rows)
    offsets = jnp.arange(blocks) * block_rows

    def block_d2(rows, offset):
        d2 = scaled_dist2(params, rows, a_columns, **opts)
        return _masked_self(d2, offset) if exclude_self else d2

    if point_adaptive:
        lam_blocks = None
    else:
        @jax.checkpoint
        def kth(_, xs):
            rows, offset, ok = xs
            lam = neighbour_lambdas(block_d2(rows, offset), k, lambda_factor, True, k_max)
            return None, jnp.where(ok, lam, 0.0)
        _, lam = jax.lax.scan(kth, None, (rows_p, offsets, valid))
        lam_blocks = jnp.full((blocks, block_rows), jnp.sum(lam) / r)

    @jax.checkpoint
    def block(total, xs):
        rows, ranks, offset, ok, lam = xs
        d2 = block_d2(rows, offset)
        if lam is None:
            lam = neighbour_lambdas(d2, k, lambda_factor, True, k_max)
        weights = jax.nn.softmax(-d2 / lam[:, None], axis=1)
        return total + jnp.sum(jnp.where(ok[:, None], weights * ranks, 0.0)), None

    xs = (rows_p, ranks_p, offsets, valid, lam_blocks)
    total, _ = jax.lax.scan(block, jnp.zeros((), a_rows.dtype), xs)
    return 2.0 / c * total / r


def _cosine(start, final, step, total):
    return (start - final) * (jnp.cos(jnp.pi / total * step) + 1) / 2 + final


def _block_rows(rows, columns, features):
    """Rows per block: at most ``BLOCK_ELEMENTS`` difference entries, the rows split evenly (so
    that the last block is not mostly padding)."""
    most = max(1, BLOCK_ELEMENTS // max(1, columns * features))
    blocks = -(-rows // most)
    return -(-rows // blocks)


# ---------------------------------------------------------------------------
# Training: one compiled epoch per configuration
# ---------------------------------------------------------------------------

class _Static(NamedTuple):
    """Everything that shapes the compiled epoch (hashable: the jit cache key)."""
    nrows: int
    batches: int
    total_steps: int
    k_init: int
    k_final: int
    lambda_factor: float
    point_adaptive: bool
    l1_strength: float
    optimizer: str
    learning_rate: float
    decay: str | None
    groups: tuple | None
    block_rows: int | None
    ties: str = "first"


def _schedule(s: _Static):
    if s.decay == "cos":
        return optax.cosine_decay_schedule(init_value=s.learning_rate, decay_steps=s.total_steps)
    if s.decay == "exp":
        return optax.exponential_decay(init_value=s.learning_rate, transition_steps=10,
                                       decay_rate=0.5)
    return optax.constant_schedule(s.learning_rate)


def _optimizer(s: _Static):
    make = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}[s.optimizer]
    return make(_schedule(s))


class TrainState(NamedTuple):
    params: jax.Array
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


def _train_step(s: _Static, norm_init, periods, state: TrainState, rows, columns, ranks):
    k = jnp.rint(_cosine(s.k_init, s.k_final, state.step, s.total_steps)).astype(jnp.int32)

    def loss(params):
        return diff_imbalance(params, rows, columns, ranks, k, lambda_factor=s.lambda_factor,
                              point_adaptive=s.point_adaptive, periods=periods, groups=s.groups,
                              block_rows=s.block_rows, k_max=s.k_init)
    imb, grads = jax.value_and_grad(loss)(state.params)
    updates, opt_state = _optimizer(s).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    params = norm_init / jnp.sqrt(jnp.sum(params ** 2)) * params
    if s.l1_strength != 0:
        # Clipped gradient step of the L1 term (Carpenter 2008), then back to the initial norm.
        shrink = _schedule(s)(step) * s.l1_strength
        params = (jnp.where(params > 0, jnp.maximum(0.0, params - shrink), 0.0)
                  + jnp.where(params < 0, jnp.minimum(0.0, params + shrink), 0.0))
        params = norm_init / jnp.sqrt(jnp.sum(params ** 2)) * params
    return state._replace(params=params, opt_state=opt_state, step=step), imb


@partial(jax.jit, static_argnums=0)
def _epoch(s: _Static, norm_init, periods, state: TrainState, a_rows, a_columns, ranks_b):
    """One epoch: the whole set (one step) or ``batches`` mini-batches from a fresh permutation
    (ranks of B recomputed inside each mini-batch), as DADApy does it."""
    if s.batches == 1:
        return _train_step(s, norm_init, periods, state, a_rows, a_columns, ranks_b)
    key, sub = jax.random.split(state.key)
    batches = jax.random.permutation(sub, s.nrows).reshape(s.batches, -1)

    def one(st, idx):
        ranks = rank_rows(ranks_b[idx][:, idx], s.ties)
        return _train_step(s, norm_init, periods, st, a_rows[idx], a_columns[idx], ranks)
    state, imbs = jax.lax.scan(one, state._replace(key=key), batches)
    return state, imbs[-1]


@partial(jax.jit, static_argnames=("lambda_factor", "point_adaptive", "groups", "exclude_self",
                                   "block_rows", "k_max"))
def _dii_jit(params, rows, columns, ranks, k, periods, lambda_factor, point_adaptive, groups,
             exclude_self, block_rows, k_max=None):
    return diff_imbalance(params, rows, columns, ranks, k, lambda_factor=lambda_factor,
                          point_adaptive=point_adaptive, periods=periods, groups=groups,
                          exclude_self=exclude_self, block_rows=block_rows, k_max=k_max)


@partial(jax.jit, static_argnames=("lambda_factor", "groups"))
def _row_values(params, rows, columns, ranks, lambdas, periods, lambda_factor, groups):
    """Each row's ``2 / (c + 1) * sum_j c_ij ranks_ij``, given lambda per row (None: from the
    row's own k-th neighbour, computed by the caller)."""
    d2 = scaled_dist2(params, rows, columns, periods, groups)
    weights = jax.nn.softmax(-d2 / lambdas[:, None], axis=1)
    return 2.0 / (columns.shape[0] + 1) * jnp.sum(ranks * weights, axis=1)


@partial(jax.jit, static_argnames=("lambda_factor", "groups"))
def _row_lambdas(params, rows, columns, k, periods, lambda_factor, groups):
    return neighbour_lambdas(scaled_dist2(params, rows, columns, periods, groups), k,
                             lambda_factor, True)


def _final_with_error(params, rows, columns, ranks, k, periods, lambda_factor, point_adaptive,
                      groups, block_rows):
    """The final DII over disjoint rows and columns and its standard error, a block of rows at
    a time."""
    starts = range(0, rows.shape[0], block_rows)
    lambdas = jnp.concatenate([_row_lambdas(params, rows[i:i + block_rows], columns, k, periods,
                                            lambda_factor, groups) for i in starts])
    if not point_adaptive:
        lambdas = jnp.full_like(lambdas, jnp.mean(lambdas))
    values = jnp.concatenate([
        _row_values(params, rows[i:i + block_rows], columns, ranks[i:i + block_rows],
                    lambdas[i:i + block_rows], periods, lambda_factor, groups) for i in starts])
    return jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(values.shape[0])


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

def _points(name, value):
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape [points, features]: "
                         f"{err}") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [points, features]; got shape "
                         f"{arr.shape}.")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} row(s) with NaN or inf (first at row "
                         f"{int(np.flatnonzero(bad)[0])}); drop or repair them.")
    return arr


def _periods(name, value, features):
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != features):
        raise ValueError(f"{name} must be one period or one per feature ({features}); got shape "
                         f"{arr.shape}. Use 0 for the features that are not periodic.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (0: not periodic).")
    return np.broadcast_to(arr, (features,)).astype(np.float32)


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def _positive(name, value, allow_zero=False):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}; "
                         f"got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------
# The class
# ---------------------------------------------------------------------------

class DiffImbalance:
    """Learns the feature weights of space A that best predict the neighbours in space B.

    Arguments, defaults and attributes are DADApy 0.3.4's (see its documentation):

    Args:
      data_A: ``[N, D_A]`` features of space A.
      data_B: ``[N, D_B]`` features of space B (ignored, with a warning, when ``distances_B`` is
        given).
      distances_B: ``[N, N]`` distances in B, instead of ``data_B``.
      periods_A, periods_B: one period or one per feature (0: not periodic); None: none periodic.
      num_epochs: training epochs (default 200).
      batches_per_epoch: mini-batches per epoch; must divide the number of rows (default 1: the
        full set every step).
      seed: seeds the row subsampling and the mini-batch permutations.
      l1_strength: strength of the L1 penalty (default 0).
      point_adapt_lambda: a lambda per point (True, default) from its k-th neighbour, or one lambda
        for all from the mean k-th neighbour distance.
      k_init, k_final: the neighbour rank for lambda, decayed along a cosine from ``k_init`` to
        ``k_final`` over the training (``k_init`` above 100 is lowered to 100, with a warning).
      lambda_factor: lambda is this fraction of the k-th neighbour's squared distance (0.1).
      params_init: ``[P]`` initial weights (default 0.1 each); their norm is kept fixed.
      params_groups: ``[P]`` counts of consecutive features sharing one weight (sum D_A).
      optimizer_name: ``sgd`` (default), ``adam`` or ``adamw`` (optax, its default settings).
      learning_rate: 1e-2 by default.
      learning_rate_decay: None (constant), ``cos`` (cosine to 0) or ``exp`` (halved every 10
        steps).
      num_points_rows: sample this many rows (of N) for the rank and distance matrices, which
        makes each step ``N / num_points_rows`` times cheaper on large sets.
      rank_ties: how equal distances in B are ranked: ``first`` (DADApy: by point order) or
        ``average`` (a gio-spark addition: tied points share their mean rank, so the result does
        not depend on the order of the points; use it for labels and other discrete B).
      random_draws: ``jax`` (default: today's JAX generator) or ``dadapy`` (the numbers DADApy
        0.3.4 drew on JAX 0.4.30 for the same ``seed``, as inside :func:`dadapy_random`; a
        gio-spark addition).

    Attributes set by :meth:`train`: ``params_training`` ``[num_epochs + 1, P]``, ``imbs_training``
    ``[num_epochs + 1]``, ``params_final`` ``[P]``; by :meth:`return_final_dii`: ``imb_final``,
    ``error_final``.
    """

    def __init__(self, data_A, data_B=None, distances_B=None, periods_A=None, periods_B=None,
                 num_epochs=200, batches_per_epoch=1, seed=0, l1_strength=0.0,
                 point_adapt_lambda=True, k_init=1, k_final=1, lambda_factor=0.1,
                 params_init=None, params_groups=None, optimizer_name="sgd",
                 learning_rate=1e-2, learning_rate_decay=None, num_points_rows=None,
                 rank_ties="first", random_draws="jax"):
        if random_draws not in RANDOM_DRAWS:
            raise ValueError(f"random_draws must be 'jax' or 'dadapy'; got {random_draws!r}.")
        self.random_draws = random_draws
        self.data_A = _points("data_A", data_A)
        n, self.nfeatures_A = self.data_A.shape
        if distances_B is None:
            if data_B is None:
                raise ValueError("give data_B (features of space B) or distances_B.")
            self.data_B = _points("data_B", data_B)
            self.distances_B = None
            if self.data_B.shape[0] != n:
                raise ValueError(f"data_A has {n} points and data_B {self.data_B.shape[0]}; "
                                 "give the same points in both spaces, row for row.")
            self.nfeatures_B = self.data_B.shape[1]
        else:
            if data_B is not None:
                warnings.warn("distances_B is given; data_B is ignored.", stacklevel=2)
            self.data_B = None
            self.distances_B = _points("distances_B", distances_B)
            if self.distances_B.shape != (n, n):
                raise ValueError(f"distances_B must be [{n}, {n}] (data_A has {n} points); got "
                                 f"{self.distances_B.shape}.")
        self.periods_A = _periods("periods_A", periods_A, self.nfeatures_A)
        self.periods_B = (None if self.distances_B is not None
                          else _periods("periods_B", periods_B, self.nfeatures_B))
        self.num_epochs = _int("num_epochs", num_epochs, 1)
        self.batches_per_epoch = _int("batches_per_epoch", batches_per_epoch, 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer; got {seed!r}.")
        self.seed = int(seed)
        self.l1_strength = _positive("l1_strength", l1_strength, allow_zero=True)
        if not isinstance(point_adapt_lambda, (bool, np.bool_)):
            raise ValueError(f"point_adapt_lambda must be True or False; got {point_adapt_lambda!r}.")
        self.point_adapt_lambda = bool(point_adapt_lambda)
        self.k_init = _int("k_init", k_init, 1)
        self.k_final = _int("k_final", k_final, 1)
        if self.k_init > K_MAX:
            warnings.warn(f"k_init is at most {K_MAX}; using k_init={K_MAX} instead of "
                          f"{self.k_init}.", stacklevel=2)
            self.k_init = K_MAX
        if self.k_final > self.k_init:
            raise ValueError(f"k_init ({self.k_init}) must be >= k_final ({self.k_final}).")
        self.lambda_factor = _positive("lambda_factor", lambda_factor)
        if optimizer_name is None or str(optimizer_name).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer_name must be one of {', '.join(OPTIMIZERS)}; got "
                             f"{optimizer_name!r}.")
        self.optimizer_name = str(optimizer_name).lower()
        self.learning_rate = _positive("learning_rate", learning_rate)
        if learning_rate_decay not in DECAYS:
            raise ValueError(f"learning_rate_decay must be None, 'cos' or 'exp'; got "
                             f"{learning_rate_decay!r}.")
        self.learning_rate_decay = learning_rate_decay
        if params_groups is not None:
            groups = tuple(_int("params_groups entries", g, 1) for g in params_groups)
            if sum(groups) != self.nfeatures_A:
                raise ValueError(f"params_groups adds up to {sum(groups)} features, but data_A "
                                 f"has {self.nfeatures_A}.")
            self.params_groups = groups
        else:
            self.params_groups = None
        self.nparams = self.nfeatures_A if self.params_groups is None else len(self.params_groups)
        if params_init is None:
            self.params_init = np.full(self.nparams, 0.1, np.float32)
        else:
            init = np.asarray(params_init, dtype=np.float32).reshape(-1)
            if init.shape != (self.nparams,):
                raise ValueError(f"params_init must hold {self.nparams} weights (one per "
                                 f"{'group' if self.params_groups else 'feature of data_A'}); "
                                 f"got {init.shape[0]}.")
            if not np.isfinite(init).all() or not np.any(init != 0):
                raise ValueError("params_init must be finite and not all zero.")
            self.params_init = init
        if rank_ties not in TIES:
            raise ValueError(f"rank_ties must be 'first' or 'average'; got {rank_ties!r}.")
        self.rank_ties = rank_ties
        self.num_points_rows = num_points_rows
        if num_points_rows is not None:
            _int("num_points_rows", num_points_rows, 2)
            if num_points_rows >= n:
                raise ValueError(f"num_points_rows ({num_points_rows}) must be smaller than the "
                                 f"number of points ({n}), or None.")

        # The rows: all points, or a sample of them (the sampled rows first among the columns).
        rows, columns = self._sample_rows(n, num_points_rows)
        self._rows_idx, self._cols_idx = rows, columns
        self.nrows, self.ncolumns = len(rows), len(columns)
        if self.nrows % self.batches_per_epoch:
            raise ValueError(f"batches_per_epoch ({self.batches_per_epoch}) must divide the "
                             f"{self.nrows} rows into equal mini-batches.")
        per_batch = self.nrows // self.batches_per_epoch
        if self.k_init >= per_batch:
            raise ValueError(f"k_init={self.k_init} needs more than {self.k_init} points per "
                             f"mini-batch, but there are {per_batch}; lower k_init and k_final or "
                             "batches_per_epoch.")
        self.data_A_rows = jnp.asarray(self.data_A[rows])
        self.data_A_columns = jnp.asarray(self.data_A[columns])
        if self.distances_B is None:
            self.ranks_B = rank_matrix(jnp.asarray(self.data_B[rows]),
                                       jnp.asarray(self.data_B[columns]),
                                       None if self.periods_B is None else jnp.asarray(self.periods_B),
                                       _block_rows(self.nrows, self.ncolumns, self.nfeatures_B),
                                       self.rank_ties)
        else:
            sub_d = jnp.asarray(self.distances_B[rows][:, columns])
            self.ranks_B = rank_rows(sub_d, self.rank_ties)
        self.params_final = None
        self.params_training = None
        self.imbs_training = None
        self.imb_final = None
        self.error_final = None
        self.state = None
        self.mask = None

    # -- training -------------------------------------------------------------------------

    def _static(self) -> _Static:
        per_batch = self.nrows // self.batches_per_epoch
        cols = per_batch if self.batches_per_epoch > 1 else self.ncolumns
        block = _block_rows(per_batch, cols, self.nfeatures_A)
        return _Static(self.nrows, self.batches_per_epoch,
                       self.num_epochs * self.batches_per_epoch, self.k_init, self.k_final,
                       self.lambda_factor, self.point_adapt_lambda, self.l1_strength,
                       self.optimizer_name, self.learning_rate, self.learning_rate_decay,
                       self.params_groups, None if block >= per_batch else block,
                       self.rank_ties)

    def _periods_a(self):
        return None if self.periods_A is None else jnp.asarray(self.periods_A)

    @_draws
    def _sample_rows(self, n, num_points_rows):
        key = jax.random.PRNGKey(self.seed)
        self._key, sub = jax.random.split(key)
        if num_points_rows is None:
            return np.arange(n), np.arange(n)
        rows = np.asarray(jax.random.choice(sub, jnp.arange(n), shape=(num_points_rows,),
                                            replace=False))
        return rows, np.concatenate([rows, np.delete(np.arange(n), rows)])

    @_draws
    def train(self, bar_label=None, progress=True):
        """Trains the weights; returns ``(params_training [num_epochs + 1, P], imbs_training
        [num_epochs + 1])``: row 0 is the start (absolute weights), row e the weights after epoch
        e and the DII of that epoch's last step (over its mini-batch). ``progress=False`` hides
        the progress bar. Calling it again continues from the last weights."""
        s = self._static()
        params = jnp.asarray(self.params_init if self.state is None else self.state.params)
        norm_init = jnp.sqrt(jnp.sum(jnp.asarray(self.params_init) ** 2))
        opt_state = _optimizer(s).init(params)
        state = TrainState(params, opt_state, jnp.zeros((), jnp.int32), self._key)
        periods = self._periods_a()
        first = np.arange(self.nrows // self.batches_per_epoch)
        start_ranks = rank_rows(self.ranks_B[first][:, first], self.rank_ties)
        imb_start = _dii_jit(jnp.asarray(self.params_init), self.data_A_rows[first],
                             self.data_A_columns[first], start_ranks, self.k_init, periods,
                             s.lambda_factor, s.point_adaptive, s.groups, True,
                             s.block_rows, s.k_init)
        params_hist = np.empty((self.num_epochs + 1, self.nparams), np.float32)
        imbs = np.empty(self.num_epochs + 1, np.float32)
        params_hist[0] = np.abs(self.params_init)
        imbs[0] = float(imb_start)
        desc = "Training" + (f" ({bar_label})" if bar_label is not None else "")
        for epoch in tqdm(range(1, self.num_epochs + 1), desc=desc, disable=not progress):
            state, imb = _epoch(s, norm_init, periods, state, self.data_A_rows,
                                self.data_A_columns, self.ranks_B)
            params_hist[epoch] = np.abs(np.asarray(state.params))
            imbs[epoch] = float(imb)
            if not np.isfinite(params_hist[epoch]).all():
                if self.l1_strength > 0:
                    raise ValueError(f"every weight became zero at epoch {epoch} (the L1 penalty "
                                     f"removed them all); lower l1_strength "
                                     f"({self.l1_strength}).")
                raise ValueError(f"the weights became NaN or inf at epoch {epoch}; lower "
                                 f"learning_rate ({self.learning_rate}).")
        self.state = state
        self._key = state.key
        self.params_training, self.imbs_training = params_hist, imbs
        self.params_final = params_hist[-1]
        return params_hist, imbs

    # -- the final DII ----------------------------------------------------------------------

    def _ranks_of(self, rows, columns):
        if self.distances_B is None:
            periods = None if self.periods_B is None else jnp.asarray(self.periods_B)
            return rank_matrix(jnp.asarray(self.data_B[rows]), jnp.asarray(self.data_B[columns]),
                               periods, _block_rows(len(rows), len(columns), self.nfeatures_B),
                               self.rank_ties)
        return rank_rows(jnp.asarray(self.distances_B[rows][:, columns]), self.rank_ties)

    @_draws
    def return_final_dii(self, compute_error=True, ratio_rows_columns=1, seed=0,
                         discard_close_ind=0):
        """The DII over the whole data set with the trained weights, and its error.

        With ``compute_error`` the points are split at random (``seed``) into rows and columns in
        the ratio ``ratio_rows_columns``; the error is the standard error over the rows. Without
        it, every point is a row and a column and the error is None. ``discard_close_ind`` leaves
        out, for each point, the points within that many positions of it (time series): by
        striding the data with the error, by masking the distance matrix without. lambda's k keeps
        the training's ratio k / N. Returns ``(imb_final, error_final)``.
        """
        if self.params_final is None:
            raise ValueError("call train() before return_final_dii().")
        _int("discard_close_ind", discard_close_ind, 0)
        n = self.data_A.shape[0]
        params = jnp.asarray(self.params_final)
        periods = self._periods_a()
        opts = dict(lambda_factor=self.lambda_factor, point_adaptive=self.point_adapt_lambda,
                    groups=self.params_groups)
        if compute_error:
            if ratio_rows_columns is None:
                raise ValueError("compute_error=True needs ratio_rows_columns (rows / columns).")
            ratio = _positive("ratio_rows_columns", ratio_rows_columns)
            points = np.arange(0, n, discard_close_ind + 1)
            nrows = int(ratio / (ratio + 1) * len(points))
            if nrows < 2 or len(points) - nrows < 1:
                raise ValueError(f"ratio_rows_columns={ratio_rows_columns} leaves {nrows} rows "
                                 f"and {len(points) - nrows} columns of {len(points)} points; "
                                 "each side needs at least 2 rows and 1 column.")
            _, sub = jax.random.split(jax.random.PRNGKey(seed))
            pick = np.asarray(jax.random.choice(sub, jnp.arange(len(points)), shape=(nrows,),
                                                replace=False))
            rows, columns = points[pick], points[np.delete(np.arange(len(points)), pick)]
            ranks = self._ranks_of(rows, columns) + 1
            k = int(math.ceil(self.k_final * self.batches_per_epoch / (discard_close_ind + 1)))
            imb, err = _final_with_error(params, jnp.asarray(self.data_A[rows]),
                                         jnp.asarray(self.data_A[columns]), ranks, k, periods,
                                         block_rows=_block_rows(len(rows), len(columns),
                                                                self.nfeatures_A), **opts)
            self.imb_final, self.error_final = float(imb), float(err)
        else:
            if ratio_rows_columns is not None:
                warnings.warn("compute_error is False: ratio_rows_columns is ignored (set it to "
                              "None to silence this).", stacklevel=2)
            everything = np.arange(n)
            ranks = self._ranks_of(everything, everything)
            k = int(math.ceil(self.k_final * self.batches_per_epoch
                              * (1 - 2 * discard_close_ind / self.ncolumns)))
            data = jnp.asarray(self.data_A)
            if discard_close_ind == 0:
                block = _block_rows(n, n, self.nfeatures_A)
                imb = _dii_jit(params, data, data, ranks, k, periods, exclude_self=True,
                               block_rows=None if block >= n else block, **opts)
            else:
                keep = _window_mask(n, discard_close_ind)
                d2 = scaled_dist2(params, data, data, periods, self.params_groups)
                d2 = _masked_self(d2, 0)[keep].reshape(n, -1)
                ranks = jnp.argsort(jnp.argsort(ranks[keep].reshape(n, -1), axis=1), axis=1) + 1
                lambdas = neighbour_lambdas(d2, k, self.lambda_factor, self.point_adapt_lambda)
                weights = jax.nn.softmax(-d2 / lambdas[:, None], axis=1)
                imb = 2.0 / (d2.shape[1] + 1) * jnp.sum(weights * ranks) / n
            self.imb_final, self.error_final = float(imb), None
        return self.imb_final, self.error_final

    # -- greedy feature selection -------------------------------------------------------------

    def _trained_copy(self, subset, seed):
        mask = np.zeros(self.nfeatures_A, bool)
        mask[list(subset)] = True
        copy = DiffImbalance(
            self.data_A, self.data_B, self.distances_B, self.periods_A, self.periods_B,
            num_epochs=self.num_epochs, batches_per_epoch=self.batches_per_epoch, seed=seed,
            l1_strength=0.0, point_adapt_lambda=self.point_adapt_lambda, k_init=self.k_init,
            k_final=self.k_final, lambda_factor=self.lambda_factor,
            params_init=np.where(mask, self.params_init, 0.0), optimizer_name=self.optimizer_name,
            learning_rate=self.learning_rate, learning_rate_decay=self.learning_rate_decay,
            num_points_rows=self.num_points_rows, rank_ties=self.rank_ties,
            random_draws=self.random_draws)
        copy.train(progress=False)
        return copy

    def _seeded(self) -> bool:
        """Whether the training depends on the seed (mini-batches or row sampling)."""
        return self.batches_per_epoch > 1 or self.num_points_rows is not None

    def _score(self, copy, compute_error, ratio_rows_columns, seed, discard_close_ind):
        imb, err = copy.return_final_dii(compute_error=compute_error,
                                         ratio_rows_columns=ratio_rows_columns if compute_error
                                         else None, seed=seed,
                                         discard_close_ind=discard_close_ind)
        return float(imb), (None if err is None else float(err))

    def _train_and_score(self, subset, train_seed, compute_error, ratio_rows_columns, seed,
                         discard_close_ind):
        """Trains on ``subset`` alone; returns ``(final DII, error, weights)``, or
        ``(inf, None, None)`` when the training fails (every weight removed)."""
        try:
            copy = self._trained_copy(subset, train_seed)
        except ValueError:
            return math.inf, None, None
        imb, err = self._score(copy, compute_error, ratio_rows_columns, seed, discard_close_ind)
        return imb, err, copy.params_final

    def _greedy(self, start_sets, grow, stop_size, n_best, compute_error, ratio_rows_columns,
                seed, discard_close_ind, sets, diis, errors, weights):
        current = start_sets
        while True:
            candidates, scores, errs, trained = [], [], [], []
            for chosen in current:
                for cand in grow(chosen):
                    if cand in candidates:
                        continue
                    candidates.append(cand)
                    imb, err, w = self._train_and_score(cand, seed + len(candidates),
                                                        compute_error, ratio_rows_columns, seed,
                                                        discard_close_ind)
                    scores.append(imb)
                    errs.append(err)
                    trained.append(w)
            finite = [i for i, v in enumerate(scores) if math.isfinite(v)]
            if not finite:
                break
            order = sorted(finite, key=lambda i: (scores[i], i))[:n_best]
            best = order[0]
            current = [candidates[i] for i in order]
            if self._seeded():
                try:        # DADApy's weights for the best set: trained again with the base seed
                    best_w = self._trained_copy(candidates[best], seed).params_final
                except ValueError:
                    best_w = np.zeros(self.nfeatures_A, np.float32)
            else:           # no randomness: the candidate's own training is that training
                best_w = trained[best]
            sets.append(list(candidates[best]))
            diis.append(scores[best])
            errors.append(errs[best])
            weights.append(np.asarray(best_w))
            if stop_size(len(candidates[best])):
                break
        return sets, diis, errors, weights

    @_draws
    def forward_greedy_feature_selection(self, n_features_max=None, n_best=10,
                                         compute_error=False, ratio_rows_columns=1, seed=0,
                                         discard_close_ind=0):
        """Forward greedy search: the best single feature, then the best ``n_best`` sets grown
        by one feature at a time, each trained on its own, up to ``n_features_max`` features.

        Returns:
          ``(feature_sets, diis, errors, weights)``, one entry per size: the best set of that
          size (sorted indices), its final DII (its error, or None), its ``[D_A]`` weights.
        """
        self._greedy_checks()
        n = self.nfeatures_A
        n_max = n if n_features_max is None else _int("n_features_max", n_features_max, 1)
        n_best = _int("n_best", n_best, 1)
        singles, errs = [], []
        for f in range(n):
            imb, err, _ = self._train_and_score([f], seed, compute_error, ratio_rows_columns,
                                                seed, discard_close_ind)
            singles.append(imb)
            errs.append(err)
        finite = [f for f in range(n) if math.isfinite(singles[f])]
        if not finite:
            return [], [], [], []
        order = sorted(finite, key=lambda f: (singles[f], f))[:n_best]
        first = order[0]
        weights0 = np.zeros(n, np.float32)
        weights0[first] = self.params_init[first]
        sets, diis, errors, weights = [[first]], [singles[first]], [errs[first]], [weights0]
        if min(n_max, n) <= 1:
            return sets, diis, errors, weights

        def grow(chosen):
            return [sorted(chosen + [f]) for f in range(n) if f not in chosen]
        return self._greedy([[f] for f in order], grow, lambda size: size >= min(n_max, n),
                            n_best, compute_error, ratio_rows_columns, seed, discard_close_ind,
                            sets, diis, errors, weights)

    @_draws
    def backward_greedy_feature_selection(self, n_features_min=1, n_best=10, compute_error=False,
                                          ratio_rows_columns=1, seed=0, discard_close_ind=0):
        """Backward greedy search from all features (call :meth:`train` first): remove one
        feature at a time from the best ``n_best`` sets, each candidate trained on its own, down
        to ``n_features_min`` features. Returns ``(feature_sets, diis, errors, weights)``, the
        full set first."""
        self._greedy_checks()
        if self.params_final is None:
            raise ValueError("call train() before backward_greedy_feature_selection().")
        n_min = _int("n_features_min", n_features_min, 1)
        n_best = _int("n_best", n_best, 1)
        imb, err = self._score(self, compute_error, ratio_rows_columns, seed, discard_close_ind)
        everything = list(range(self.nfeatures_A))
        sets, diis, errors = [everything], [imb], [err]
        weights = [np.asarray(self.params_final)]
        if len(everything) <= n_min:
            return sets, diis, errors, weights

        def shrink(chosen):
            return [[g for g in chosen if g != f] for f in chosen] if len(chosen) > n_min else []
        return self._greedy([everything], shrink, lambda size: size <= n_min, n_best,
                            compute_error, ratio_rows_columns, seed, discard_close_ind, sets, diis,
                            errors, weights)

    def _greedy_checks(self):
        if self.params_groups is not None:
            raise ValueError("the greedy feature searches do not support params_groups.")
        if self.l1_strength != 0.0:
            warnings.warn("the greedy feature search trains without the L1 penalty.",
                          stacklevel=3)


def _window_mask(n, width):
    """``[n, n]`` True except within ``width`` of the diagonal, with the same count per row (as
    DADApy: the first and last rows drop extra columns at the far end)."""
    mask = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) > width
    keep = n - 2 * width - 1
    first = np.concatenate([np.zeros(2 * width + 1, bool), np.ones(keep, bool)])
    last = np.concatenate([np.ones(keep, bool), np.zeros(2 * width + 1, bool)])
    mask[:width] = first
    mask[-width:] = last
    return jnp.asarray(mask)
