"""Datamodels: sparse linear models from training-subset masks to a model's outputs.

Many models are trained, each on a random subset of a training set (its *mask*: one boolean
per training example), and each records an output per target example (for example the
correct-class margin). For every target, a lasso from the masks to that target's outputs says
which training examples drive the prediction: the *datamodel* of the target.

The objective, per target ``t``, is scikit-learn's ``Lasso`` on standardised masks::

    (1 / 2n) * || y_t - b_t - X_std w_t ||^2  +  lam_t * || w_t ||_1

where ``X_std = (X - mean) / std`` uses the training models' per-example mean and population
standard deviation (an example in every mask or in none has ``std = 0`` and weight 0). Weights
are returned on the masks' own scale (``w / std``), with the bias that goes with them, so a
prediction is ``masks @ weight.T + bias``.

The solver is accelerated proximal gradient descent (FISTA, with adaptive restart) vectorised
over targets: every step is two matrix products shared by all targets of a chunk, which BLAS
and GPUs run near their peak, and each target keeps its own momentum, lambda and stopping test
(the duality gap), so a target's result does not depend on the others in its chunk. Memory:
with fewer training examples than models (``p <= 2n``) the ``[p, p]`` Gram matrix of the masks
is formed once (streamed over ``batch_size`` models at a time) and each step costs ``p^2``
per target; otherwise the standardised masks ``[n, p]`` are kept and each step costs ``2np``
per target. Targets are solved ``target_chunk`` at a time: ``[p, chunk]`` arrays bound the rest.

Functional core: :func:`fista_solve` is a pure, jittable function of arrays. :func:`lasso` (one
lambda per target) and :func:`lasso_path` (a regularisation path with warm starts, validation
and early stopping, as MadryLab's ``fast_l1``) are built on it.

Example:
    >>> masks = rng.random((400, 100)) < 0.5                   # 400 models, 100 examples
    >>> outputs = masks[:, :3] @ [1.0, -2.0, 0.5] + noise      # [400] or [400, targets]
    >>> fit = lasso(masks, outputs, lam=0.01)                  # fit.weight [1, 100], fit.bias
    >>> path = lasso_path(masks[:300], outputs[:300], val_masks=masks[300:],
    ...                   val_outputs=outputs[300:], k=50)     # path.lam: chosen per target
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("auto", "gram", "data")
DEFAULT_CHUNK_BYTES = 2 ** 30      # [p, chunk] and [n, chunk] working arrays per target chunk
POWER_ITERATIONS = 60


# Where a lasso path's grid of lambdas starts (lasso_path's lam_max_from).
LAM_MAX_FROM = ("standardized", "raw")


class Standardization(NamedTuple):
    """Per-example statistics of the training masks (float64, shape ``[p]``)."""
    mean: np.ndarray
    scale: np.ndarray        # population standard deviation; 0 for a constant column

    @property
    def inverse(self) -> np.ndarray:
        return np.where(self.scale > 0, 1.0 / np.where(self.scale > 0, self.scale, 1.0), 0.0)


class LassoFit(NamedTuple):
    """One lasso per target (arrays over targets ``T`` and training examples ``p``)."""
    weight: np.ndarray       # [T, p] on the masks' own scale
    bias: np.ndarray         # [T]
    lam: np.ndarray          # [T]
    iterations: np.ndarray   # [T] proximal-gradient iterations
    gap: np.ndarray          # [T] duality gap over the outputs' variance at the end
    converged: np.ndarray    # [T] whether the gap fell below tol


class LassoPath(NamedTuple):
    """A regularisation path per target and the lambda chosen on the validation models."""
    weight: np.ndarray       # [T, p] at the chosen lambda (refitted on train + validation)
    bias: np.ndarray         # [T]
    lam: np.ndarray          # [T] chosen lambda
    lam_max: np.ndarray      # [T] where the grid starts (lam_max_from: standardized, the least
    #                          lambda whose solution is all zero; raw, fast_l1's start)
    lambdas: np.ndarray      # [T, k] the path's lambdas
    train_mse: np.ndarray    # [T, k] training MSE along the path (NaN past a target's stop)
    val_mse: np.ndarray      # [T, k] validation MSE along the path (NaN without validation)
    val_r: np.ndarray        # [T] validation Pearson r at the chosen lambda, before the refit
    nonzeros: np.ndarray     # [T, k] nonzero weights along the path
    best: np.ndarray         # [T] index of the chosen lambda on the path
    steps: np.ndarray        # [T] lambdas solved before the path stopped
    iterations: np.ndarray   # [T] iterations over the whole path (and the refit)
    converged: np.ndarray    # [T] every solve on the path met tol


# ---------------------------------------------------------------------------
# Checks and preparation (host side)
# ---------------------------------------------------------------------------

def _as_masks(masks, name: str) -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array [models, training examples] with at least "
                         f"one of each; got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be boolean or numeric; got dtype {arr.dtype}.")
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"{name} holds NaN or inf (model row {row}).")
    return arr


def _as_outputs(outputs, models: int, name: str) -> np.ndarray:
    arr = np.asarray(outputs, np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != models:
        raise ValueError(f"{name} must be [models] or [models, targets] with {models} models "
                         f"(as the masks); got shape {np.shape(outputs)}.")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no targets.")
    if not np.isfinite(arr).all():
        row, col = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} holds NaN or inf (model row {row}, target {col}).")
    return arr


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _check_number(value, name: str, low: float = 0.0, high: float = math.inf,
                  low_open: bool = True) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
          and math.isfinite(float(value)) and (value > low if low_open else value >= low)
          and value <= high)
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}]; got {value!r}.")
    return float(value)


def standardization(masks) -> Standardization:
    """The per-example mean and population standard deviation of ``masks`` ``[n, p]``."""
    x = _as_masks(masks, "masks")
    mean = np.zeros(x.shape[1])
    sq = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], 4096):          # float64 sums without a float64 copy
        block = x[start:start + 4096].astype(np.float64)
        mean += block.sum(0)
        sq += np.square(block).sum(0)
    mean /= x.shape[0]
    var = np.maximum(sq / x.shape[0] - mean ** 2, 0.0)
    scale = np.sqrt(var)
    scale[scale < 1e-12 * np.maximum(1.0, np.abs(mean))] = 0.0
    return Standardization(mean, scale)


class _Design(NamedTuple):
    """The standardised masks as the solver sees them."""
    mode: str                 # gram or data
    matrix: jax.Array         # gram: [p, p] X_std^T X_std / n; data: [n, p] X_std
    n: int
    stats: Standardization
    step: float               # 1 / L, L the largest eigenvalue of X_std^T X_std / n


def _standardized_block(x, stats: Standardization) -> np.ndarray:
    return ((x.astype(np.float32) - stats.mean.astype(np.float32))
            * stats.inverse.astype(np.float32))


@jax.jit
def _gram_block(gram, block):
    return gram + block.T @ block


def _design(masks: np.ndarray, mode: str, batch_size: int | None, lr: float) -> _Design:
    n, p = masks.shape
    stats = standardization(masks)
    if mode == "auto":
        mode = "gram" if p <= 2 * n else "data"
    if mode == "gram":
        rows = batch_size or n
        gram = jnp.zeros((p, p), jnp.float32)
        for start in range(0, n, rows):
            gram = _gram_block(gram, jnp.asarray(_standardized_block(masks[start:start + rows],
                                                                     stats)))
        matrix = gram / n
    else:
        matrix = jnp.asarray(_standardized_block(masks, stats))
    top = float(_largest_eigenvalue(mode, matrix, jnp.float32(n)))
    step = lr / (1.05 * top) if top > 0 else 1.0
    return _Design(mode, matrix, n, stats, step)


def _hessian(mode: str, matrix, n, w):
    """``X_std^T X_std w / n`` for ``w`` ``[p, T]``."""
    if mode == "gram":
        return matrix @ w
    return matrix.T @ (matrix @ w) / n


@partial(jax.jit, static_argnums=0)
def _largest_eigenvalue(mode: str, matrix, n):
    p = matrix.shape[1]
    v = jax.random.normal(jax.random.PRNGKey(0), (p, 1), jnp.float32)

    def body(_, v):
        hv = _hessian(mode, matrix, n, v)
        return hv / jnp.maximum(jnp.linalg.norm(hv), 1e-30)
    v = jax.lax.fori_loop(0, POWER_ITERATIONS, body, v / jnp.linalg.norm(v))
    return jnp.vdot(v, _hessian(mode, matrix, n, v))


# ---------------------------------------------------------------------------
# The functional core
# ---------------------------------------------------------------------------

def _soft(x, threshold):
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


def duality_gap(hessian: Callable, c, yy, lam, w):
    """The lasso's duality gap and training MSE at ``w`` ``[p, T]``.

    Args:
      hessian: ``w -> X_std^T X_std w / n``.
      c: ``X_std^T y / n`` ``[p, T]``; yy: ``||y||^2 / n`` ``[T]`` (``y`` centred).
      lam: ``[T]``.
    Returns:
      ``(gap [T], mse [T], gradient [p, T])``; the gap bounds the objective's distance to its
      minimum, and is 0 exactly at the solution.
    """
    hw = hessian(w)
    grad = hw - c
    wc = jnp.sum(w * c, axis=0)
    mse = jnp.maximum(yy - 2.0 * wc + jnp.sum(w * hw, axis=0), 0.0)
    gmax = jnp.max(jnp.abs(grad), axis=0)
    s = jnp.where(gmax > lam, lam / jnp.maximum(gmax, 1e-30), 1.0)
    gap = 0.5 * (1.0 + s * s) * mse + lam * jnp.sum(jnp.abs(w), axis=0) - s * (yy - wc)
    return jnp.maximum(gap, 0.0), mse, grad


class SolveState(NamedTuple):
    iteration: jax.Array     # []
    w: jax.Array             # [p, T]
    z: jax.Array             # [p, T] the extrapolated point
    t: jax.Array             # [T] momentum
    done: jax.Array          # [T]
    gap: jax.Array           # [T]
    mse: jax.Array           # [T] (of w, at the last check)
    iterations: jax.Array    # [T]


def fista_solve(hessian: Callable, c, yy, lam, w0, step, tol, *, max_iter: int,
                check_every: int, frozen=None) -> SolveState:
    """Accelerated proximal gradient on the lasso for a chunk of targets (pure; jit it).

    Args:
      hessian: ``w -> X_std^T X_std w / n`` for ``w`` ``[p, T]`` (shared by the targets).
      c: ``X_std^T y / n`` ``[p, T]``; yy: ``||y||^2 / n`` ``[T]``, outputs centred.
      lam: ``[T]`` penalties; w0: ``[p, T]`` warm start (standardised scale).
      step: ``1 / L``; tol: stop a target once its duality gap is at most ``tol * yy``.
      max_iter: iterations at most; check_every: iterations between gap checks.
      frozen: ``[T]`` targets to leave as they are (their ``w0`` is returned).
    Returns:
      The final :class:`SolveState` (``w``, ``gap``, ``mse``, ``done``, ``iterations``).
    """
    targets = c.shape[1]
    frozen = jnp.zeros(targets, bool) if frozen is None else frozen
    gap0, mse0, _ = duality_gap(hessian, c, yy, lam, w0)
    done0 = frozen | (gap0 <= tol * yy)
    state = SolveState(jnp.zeros((), jnp.int32), w0, w0, jnp.ones(targets, w0.dtype), done0,
                       gap0, mse0, jnp.zeros(targets, jnp.int32))

    def one_step(_, s: SolveState) -> SolveState:
        active = ~s.done
        g = hessian(s.z) - c
        w_new = _soft(s.z - step * g, step * lam[None, :])
        restart = jnp.sum((s.z - w_new) * (w_new - s.w), axis=0) > 0
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s.t * s.t))
        beta = jnp.where(restart, 0.0, (s.t - 1.0) / t_new)
        z_new = w_new + beta[None, :] * (w_new - s.w)
        keep = active[None, :]
        return s._replace(w=jnp.where(keep, w_new, s.w), z=jnp.where(keep, z_new, s.z),
                          t=jnp.where(active, jnp.where(restart, 1.0, t_new), s.t),
                          iterations=s.iterations + active.astype(jnp.int32))

    def body(s: SolveState) -> SolveState:
        s = jax.lax.fori_loop(0, check_every, one_step, s)
        gap, mse, _ = duality_gap(hessian, c, yy, lam, s.w)
        checked = ~s.done
        return s._replace(iteration=s.iteration + check_every,
                          gap=jnp.where(checked, gap, s.gap), mse=jnp.where(checked, mse, s.mse),
                          done=s.done | (gap <= tol * yy))

    def cond(s: SolveState):
        return (s.iteration < max_iter) & ~jnp.all(s.done)

    return jax.lax.while_loop(cond, body, state)


@partial(jax.jit, static_argnames=("mode", "max_iter", "check_every"))
def _solve(matrix, n, c, yy, lam, w0, step, tol, frozen, *, mode, max_iter, check_every):
    return fista_solve(partial(_hessian, mode, matrix, n), c, yy, lam, w0, step, tol,
                       max_iter=max_iter, check_every=check_every, frozen=frozen)


@jax.jit
def _predict_std(x_std, w):
    return x_std @ w


# ---------------------------------------------------------------------------
# Target chunks
# ---------------------------------------------------------------------------

class _Chunk(NamedTuple):
    columns: np.ndarray      # the targets (columns of outputs) in this chunk
    c: jax.Array             # [p, width]
    yy: jax.Array            # [width]
    y_mean: np.ndarray       # [len(columns)] float64: the intercept (0 without one)
    y_square_mean: np.ndarray  # [len(columns)]: the outputs' mean squared (0 with an intercept)


def _chunk_width(design: _Design, targets: int, target_chunk: int | None) -> int:
    if target_chunk is not None:
        return min(targets, target_chunk)
    p = design.matrix.shape[1]
    per_target = 4 * (8 * p + 2 * design.n)
    return max(1, min(targets, DEFAULT_CHUNK_BYTES // per_target))


def _chunks(design: _Design, masks: np.ndarray, outputs: np.ndarray, width: int,
            batch_size: int | None, center: bool = True):
    """Centred outputs and their correlations with the standardised masks, chunk by chunk
    (each chunk padded to ``width`` targets with zeros, so every chunk compiles once).

    The solve is the same with and without an intercept: the standardised masks' columns have
    mean 0, so ``|y - Zw|² = |y - ȳ - Zw|² + n ȳ²`` and the best ``w`` does not depend on it.
    Without one (``center=False``) only the intercept reported is 0 (and ``ȳ²``, which the
    training error then holds too, is returned apart); the outputs are centred for the solve
    all the same, so its stopping rule does not loosen with a large mean."""
    n = design.n
    rows = batch_size or n
    for start in range(0, outputs.shape[1], width):
        columns = np.arange(start, min(start + width, outputs.shape[1]))
        y = outputs[:, columns]
        mean = y.mean(axis=0)
        centred = np.zeros((n, width), np.float32)
        centred[:, :len(columns)] = y - mean
        c = jnp.zeros((design.matrix.shape[1], width), jnp.float32)
        for r in range(0, n, rows):
            block = jnp.asarray(_standardized_block(masks[r:r + rows], design.stats))
            c = c + block.T @ jnp.asarray(centred[r:r + rows])
        yy = jnp.asarray(np.square(centred.astype(np.float64)).sum(0) / n, jnp.float32)
        if center:
            yield _Chunk(columns, c / n, yy, mean, np.zeros(len(columns)))
        else:
            yield _Chunk(columns, c / n, yy, np.zeros(len(columns)), np.square(mean))


def _pad(values: np.ndarray, width: int, fill: float = 0.0) -> np.ndarray:
    out = np.full((width,) + values.shape[1:], fill, values.dtype)
    out[:len(values)] = values
    return out


def _own_scale(design: _Design, w_std: np.ndarray, y_mean: np.ndarray):
    """Standardised weights ``[p, T]`` -> (weights ``[T, p]`` on the masks' scale, bias ``[T]``)."""
    w = (w_std.astype(np.float64) * design.stats.inverse[:, None]).T
    return w, y_mean - w @ design.stats.mean


def _solver_options(tol, max_iter, check_every, mode, lr, batch_size, target_chunk) -> dict:
    tol = _check_number(tol, "tol")
    max_iter = _check_positive_int(max_iter, "max_iter")
    check_every = _check_positive_int(check_every, "check_every")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    lr = _check_number(lr, "lr", high=1.0)
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size")
    if target_chunk is not None:
        _check_positive_int(target_chunk, "target_chunk")
    return dict(tol=tol, max_iter=max_iter, check_every=check_every)


def lasso(masks, outputs, lam, *, tol: float = 1e-4, max_iter: int = 10_000,
          check_every: int = 10, mode: str = "auto", lr: float = 1.0,
          batch_size: int | None = None, target_chunk: int | None = None,
          init=None, use_bias: bool = True) -> LassoFit:
    """The lasso from masks to outputs at one lambda per target.

    Args:
      masks: ``[n, p]`` boolean (or 0/1) masks of ``n`` models over ``p`` training examples.
      outputs: ``[n]`` or ``[n, T]`` outputs of those models.
      lam: a number, or ``[T]``: the penalty (scikit-learn's ``alpha``), >= 0.
      tol: stop a target once the duality gap is at most ``tol`` times the variance of its
        outputs (scikit-learn's criterion); max_iter: iterations at most per target.
      check_every: iterations between duality-gap checks (each costs one extra step).
      mode: ``auto``, ``gram`` or ``data`` (see the module's docstring); lr: the step as a share
        of the largest safe step ``1/L``.
      batch_size: models per block when forming the Gram matrix and correlations.
      target_chunk: targets solved at once (default: as many as fit in about 1 GiB).
      init: ``[T, p]`` weights on the masks' scale to start from.
      use_bias: fit an intercept (the outputs centred); False: none in the standardised masks'
        space (fast_l1's ``use_bias=0``: there the bias stays 0), so the bias on the masks' own
        scale is ``-weight @ mean``.
    Returns:
      :class:`LassoFit`.

    Example:
      >>> fit = lasso(masks, outputs, lam=0.01)
      >>> predictions = masks @ fit.weight.T + fit.bias
    """
    x = _as_masks(masks, "masks")
    y = _as_outputs(outputs, x.shape[0], "outputs")
    opts = _solver_options(tol, max_iter, check_every, mode, lr, batch_size, target_chunk)
    lam_arr = np.broadcast_to(np.asarray(lam, np.float64), (y.shape[1],)).copy() \
        if np.ndim(lam) == 0 or np.shape(lam) == (y.shape[1],) else None
    if lam_arr is None or not np.isfinite(lam_arr).all() or (lam_arr < 0).any():
        raise ValueError(f"lam must be a number >= 0 or one per target ({y.shape[1]}); got "
                         f"{np.shape(lam)} values.")
    if init is not None:
        init = np.asarray(init, np.float64)
        if init.shape != (y.shape[1], x.shape[1]):
            raise ValueError(f"init must be [targets, training examples] = "
                             f"{(y.shape[1], x.shape[1])}; got {init.shape}.")
    design = _design(x, mode, batch_size, lr)
    width = _chunk_width(design, y.shape[1], target_chunk)
    T, p = y.shape[1], x.shape[1]
    weight, bias = np.zeros((T, p)), np.zeros(T)
    iterations, gaps, converged = np.zeros(T, np.int64), np.zeros(T), np.zeros(T, bool)
    for chunk in _chunks(design, x, y, width, batch_size, center=bool(use_bias)):
        cols = chunk.columns
        w0 = np.zeros((p, width), np.float32)
        if init is not None:
            w0[:, :len(cols)] = (init[cols] * design.stats.scale[None, :]).T
        s = _solve(design.matrix, jnp.float32(design.n), chunk.c, chunk.yy,
                   jnp.asarray(_pad(lam_arr[cols], width), jnp.float32), jnp.asarray(w0),
                   jnp.float32(design.step), jnp.float32(opts["tol"]),
                   jnp.zeros(width, bool), mode=design.mode, max_iter=opts["max_iter"],
                   check_every=opts["check_every"])
        w_std = np.asarray(s.w)[:, :len(cols)]
        weight[cols], bias[cols] = _own_scale(design, w_std, chunk.y_mean)
        yy = np.asarray(chunk.yy)[:len(cols)]
        gap = np.asarray(s.gap)[:len(cols)]
        gaps[cols] = np.where(yy > 0, gap / np.where(yy > 0, yy, 1.0), 0.0)
        converged[cols] = np.asarray(s.done)[:len(cols)]
        iterations[cols] = np.asarray(s.iterations)[:len(cols)]
    return LassoFit(weight, bias, lam_arr, iterations, gaps, converged)


def lasso_path(masks, outputs, *, val_masks=None, val_outputs=None, k: int = 100,
               eps: float = 1e-3, tol: float = 1e-4, max_iter: int = 10_000,
               check_every: int = 10, min_lambdas: int = 10, patience: int | None = 1,
               refit: bool = True, mode: str = "auto", lr: float = 1.0,
               batch_size: int | None = None, target_chunk: int | None = None,
               progress: Callable[[int, int], None] | None = None, use_bias: bool = True,
               lam_max_from: str = "standardized") -> LassoPath:
    """A lasso path per target, the lambda chosen on validation models, and its weights.

    Per target, ``k`` lambdas from ``lam_max`` (the smallest whose solution is all zero) down
    to ``eps * lam_max``, evenly on a log scale (scikit-learn's ``lasso_path`` grid), each solve
    warm-started from the previous one. With validation models, the path of a target stops
    early (MadryLab's ``fast_l1`` rule) once its validation MSE has risen ``patience`` times in
    a row after at least ``min_lambdas`` lambdas (``patience=None``: never), and the lambda of
    the smallest validation MSE is chosen (ties: the smaller lambda); with ``refit`` the chosen
    lambda is fitted again on the training and validation models together, as ``fast_l1``
    does. Without validation models the last lambda is chosen.

    Args:
      masks, outputs: the training models (see :func:`lasso`).
      val_masks, val_outputs: the validation models (or neither).
      k: lambdas on the path; eps: the smallest over the largest.
      tol, max_iter, check_every, mode, lr, batch_size, target_chunk: as :func:`lasso`.
      min_lambdas, patience: early stopping (see above).
      refit: refit the chosen lambda on train + validation models.
      progress: called as ``progress(targets_done, targets)`` after each chunk.
      use_bias: as :func:`lasso`.
      lam_max_from: where the grid starts: ``standardized``, the smallest lambda whose solution
        is all zero (``max |Zᵀ(y - ȳ)| / n`` over the standardised masks ``Z``), or ``raw``,
        fast_l1's ``calc_max_lambda``, the same over the masks as they are (``max |Xᵀ(y -
        ȳ)| / n``: smaller, each column's term times its standard deviation, so the path
        starts with some weights already nonzero).
    Returns:
      :class:`LassoPath`.
    """
    x = _as_masks(masks, "masks")
    y = _as_outputs(outputs, x.shape[0], "outputs")
    opts = _solver_options(tol, max_iter, check_every, mode, lr, batch_size, target_chunk)
    k = _check_positive_int(k, "k")
    eps = _check_number(eps, "eps", high=1.0)
    if lam_max_from not in LAM_MAX_FROM:
        raise ValueError(f"lam_max_from must be one of {', '.join(LAM_MAX_FROM)}; got "
                         f"{lam_max_from!r}.")
    min_lambdas = _check_positive_int(min_lambdas, "min_lambdas")
    if patience is not None:
        patience = _check_positive_int(patience, "patience")
    if (val_masks is None) != (val_outputs is None):
        raise ValueError("give val_masks and val_outputs together, or neither.")
    T, p = y.shape[1], x.shape[1]
    xv = yv = None
    if val_masks is not None:
        xv = _as_masks(val_masks, "val_masks")
        if xv.shape[1] != p:
            raise ValueError(f"val_masks covers {xv.shape[1]} training examples, masks {p}; "
                             "they must be the same examples.")
        yv = _as_outputs(val_outputs, xv.shape[0], "val_outputs")
        if yv.shape[1] != T:
            raise ValueError(f"val_outputs has {yv.shape[1]} targets, outputs {T}.")
    design = _design(x, mode, batch_size, lr)
    width = _chunk_width(design, T, target_chunk)
    xv_std = None if xv is None else jnp.asarray(_standardized_block(xv, design.stats))
    grid = np.geomspace(1.0, eps, k) if k > 1 else np.ones(1)

    lam_max, lambdas = np.zeros(T), np.zeros((T, k))
    train_mse, val_mse = np.full((T, k), np.nan), np.full((T, k), np.nan)
    nonzeros, best = np.zeros((T, k), np.int64), np.zeros(T, np.int64)
    steps, iterations = np.zeros(T, np.int64), np.zeros(T, np.int64)
    converged = np.ones(T, bool)
    val_r = np.full(T, np.nan)
    chosen_std = np.zeros((p, T), np.float32)
    y_means = np.zeros(T)
    done_targets = 0
    scale = jnp.asarray(design.stats.scale, jnp.float32)[:, None]
    for chunk in _chunks(design, x, y, width, batch_size, center=bool(use_bias)):
        cols, m = chunk.columns, len(chunk.columns)
        # Xᵀ(y - ȳ) = (Zᵀ(y - ȳ)) times each column's standard deviation
        c = chunk.c if lam_max_from == "standardized" else chunk.c * scale
        top = np.asarray(jnp.max(jnp.abs(c), axis=0), np.float64)     # [width]
        lams = top[:, None] * grid[None, :]
        w = jnp.zeros((p, width), jnp.float32)
        frozen = np.zeros(width, bool)
        frozen[m:] = True
        best_mse = np.full(width, np.inf)
        best_w = np.zeros((p, width), np.float32)
        best_i = np.zeros(width, np.int64)
        best_r = np.full(width, np.nan)
        rises = np.zeros(width, np.int64)
        last = np.full(width, np.inf)
        chunk_steps = np.zeros(width, np.int64)
        chunk_iters = np.zeros(width, np.int64)
        chunk_conv = np.ones(width, bool)
        tr = np.full((width, k), np.nan)
        va = np.full((width, k), np.nan)
        nz = np.zeros((width, k), np.int64)
        yv_c = None
        if yv is not None:
            yv_c = np.zeros((yv.shape[0], width))
            yv_c[:, :m] = yv[:, cols] - chunk.y_mean
        for i in range(k):
            if frozen.all():
                break
            s = _solve(design.matrix, jnp.float32(design.n), chunk.c, chunk.yy,
                       jnp.asarray(lams[:, i], jnp.float32), w, jnp.float32(design.step),
                       jnp.float32(opts["tol"]), jnp.asarray(frozen), mode=design.mode,
                       max_iter=opts["max_iter"], check_every=opts["check_every"])
            w = s.w
            active = ~frozen
            w_host = np.asarray(w)
            chunk_iters += np.asarray(s.iterations) * active
            chunk_conv &= np.asarray(s.done) | frozen
            chunk_steps += active
            tr[active, i] = (np.asarray(s.mse, np.float64)
                             + _pad(chunk.y_square_mean, width))[active]
            nz[active, i] = (w_host != 0).sum(0)[active]
            if yv_c is None:
                best_w[:, active] = w_host[:, active]
                best_i[active] = i
                continue
            pred = np.asarray(_predict_std(xv_std, w), np.float64)
            mse = np.mean((pred - yv_c) ** 2, axis=0)
            va[active, i] = mse[active]
            better = active & (mse <= best_mse)
            best_mse[better] = mse[better]
            best_r[better] = _pearson(pred, yv_c)[better]
            best_w[:, better] = w_host[:, better]
            best_i[better] = i
            rises = np.where(active, np.where(mse > last, rises + 1, 0), rises)
            last = np.where(active, mse, last)
            if patience is not None:
                stop = active & (rises >= patience) & (chunk_steps >= min_lambdas) & (
                    nz[:, i] > 1)
                frozen |= stop
        lam_max[cols] = top[:m]
        lambdas[cols] = lams[:m]
        train_mse[cols], val_mse[cols], nonzeros[cols] = tr[:m], va[:m], nz[:m]
        best[cols], steps[cols] = best_i[:m], chunk_steps[:m]
        iterations[cols], converged[cols] = chunk_iters[:m], chunk_conv[:m]
        chosen_std[:, cols] = best_w[:, :m]
        val_r[cols] = best_r[:m]
        y_means[cols] = chunk.y_mean
        done_targets += m
        if progress is not None:
            progress(done_targets, T)
    chosen_lam = lambdas[np.arange(T), best]
    weight, bias = _own_scale(design, chosen_std, y_means)
    if refit and xv is not None:
        both_x = np.concatenate([x, xv.astype(x.dtype)])
        both_y = np.concatenate([y, yv])
        fit = lasso(both_x, both_y, chosen_lam, tol=opts["tol"], max_iter=opts["max_iter"],
                    check_every=opts["check_every"], mode=mode, lr=lr, batch_size=batch_size,
                    target_chunk=target_chunk, init=weight, use_bias=use_bias)
        weight, bias = fit.weight, fit.bias
        iterations = iterations + fit.iterations
        converged &= fit.converged
    return LassoPath(weight, bias, chosen_lam, lam_max, lambdas, train_mse, val_mse, val_r,
                     nonzeros, best, steps, iterations, converged)


# ---------------------------------------------------------------------------
# Using datamodels
# ---------------------------------------------------------------------------

def predict(masks, weight, bias) -> np.ndarray:
    """Datamodel predictions ``[n, T]`` for masks ``[n, p]``, weights ``[T, p]``, bias ``[T]``."""
    x = _as_masks(masks, "masks").astype(np.float64)
    return x @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)[None, :]


def _pearson(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column: the Pearson correlation of ``pred`` and ``y`` (NaN where either is
    constant)."""
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    denom = np.sqrt((pc ** 2).sum(0) * (yc ** 2).sum(0))
    return np.where(denom > 0, (pc * yc).sum(0) / np.where(denom > 0, denom, 1.0), np.nan)


def evaluate(masks, outputs, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """Per target: the MSE of the predictions and their Pearson correlation with the outputs
    (NaN where either is constant)."""
    y = _as_outputs(outputs, np.shape(masks)[0], "outputs")
    pred = predict(masks, weight, bias)
    return np.mean((pred - y) ** 2, axis=0), _pearson(pred, y)


def positive_influence(weight) -> np.ndarray:
    """Each training example's total positive weight over the targets ``[p]``: how much
    including it raises the targets' outputs (margins) in sum."""
    w = np.asarray(weight, np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight must be [targets, training examples]; got shape {w.shape}.")
    return np.maximum(w, 0.0).sum(axis=0)
