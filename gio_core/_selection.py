"""``gio_core.select``: greedy KL-minimising selection of pool rows.

Each pick adds the pool row that lowers the estimated KL(target || selected)
the most (``method="exact"``), or the pool row nearest to a point found by
gradient descent in embedding space (``method="gradient"``, the GIO source's
method). Stopping rules decide when to stop; a budget caps the picks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gio_core.kmeans import nearest as nearest_centre
from gio_core._engines import AveragedEngine, KnnEngine
from gio_core._validation import (
    as_points, as_weights, check_bool, check_choice, check_k, check_number, same_dim)

ESTIMATORS = ("knn", "averaged")
METHODS = ("exact", "gradient")
STOP_CRITERIA = ("increase", "max_resets", "min_difference", "sequential_increase_tolerance",
                 "min_kl", "data_size", "mmd", "none")
V_INITS = ("mean", "prev_opt", "jump")
FILLS = (None, "mmd")


@dataclass(frozen=True)
class UniformStart:
    """Start from ``size`` points drawn uniformly from ``[low, high]^d``.

    With ``normalize`` each point is scaled to unit length (as embeddings often are).
    """
    low: float = -1.0
    high: float = 1.0
    size: int = 20
    normalize: bool = True


@dataclass(frozen=True)
class PoolFraction:
    """Start from a random ``fraction`` of the pool rows (they are then not picked again)."""
    fraction: float


Init = Union[None, np.ndarray, UniformStart, PoolFraction]


class SelectionResult(NamedTuple):
    """What :func:`select` chose.

    Attributes:
      indices: int array ``[picks]``, rows of ``pool`` in pick order (the start set excluded).
      kl: float array ``[picks]``, the KL estimate after each pick.
      kl_start: KL of the start set alone (``inf`` when the selection starts empty).
      stop_reason: why it stopped: ``increase``, ``max_resets``, ``min_difference``,
        ``sequential_increase_tolerance``, ``min_kl``, ``data_size``, ``max_iter``,
        ``max_rows`` or ``pool_exhausted``.
      init_rows: int array, pool rows used as the start set (``PoolFraction``), else empty.
      init_points: float array ``[s, d]``, the start set.
      resets: how many times the pool was reset (duplicates allowed after a reset).
      dim: the dimension ``d`` the estimator used (see ``select``'s ``dim``).
      mmd: float array ``[picks]``, the squared MMD between the target and the selection after
        each pick (``stop_criterion="mmd"`` only; else empty).
      lookahead: picks made past the returned ones and dropped (``stop_criterion="mmd"``).
      filled: picks made by ``fill="mmd"`` after the least MMD (the last ones of ``indices``).
    """
    indices: np.ndarray
    kl: np.ndarray
    kl_start: float
    stop_reason: str
    init_rows: np.ndarray
    init_points: np.ndarray
    resets: int
    dim: float
    mmd: np.ndarray = np.zeros((0,))
    lookahead: int = 0
    filled: int = 0


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a numpy Generator; got {seed!r}.")
    return np.random.default_rng(int(seed))


def uniform_points(spec: UniformStart, dim: int, draw: Callable) -> np.ndarray:
    """``spec.size`` uniform points in ``dim`` dimensions from ``draw(low, high, shape)``."""
    points = np.asarray(draw(spec.low, spec.high, (spec.size, dim)), np.float64)
    if spec.normalize:
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        points = np.where(norms == 0, points, points / np.where(norms == 0, 1, norms))
    return points.astype(np.float32)


def _start_set(init, init_weights, pool, pool_w, dim, rng):
    """Returns (points, weights, pool rows used)."""
    no_rows = np.zeros((0,), np.int64)
    if init is None:
        return np.zeros((0, dim), np.float32), np.zeros((0,), np.float32), no_rows
    if isinstance(init, UniformStart):
        check_number("UniformStart.size", init.size, low=1, integer=True)
        check_number("UniformStart.low", init.low)
        check_number("UniformStart.high", init.high)
        if not init.high > init.low:
            raise ValueError(f"UniformStart needs high > low; got low={init.low}, high={init.high}.")
        return (uniform_points(init, dim, lambda lo, hi, shape: rng.uniform(lo, hi, shape)),
                np.ones((init.size,), np.float32), no_rows)
    if isinstance(init, PoolFraction):
        check_number("PoolFraction.fraction", init.fraction, low=0, high=1, low_open=True)
        count = int(init.fraction * pool.shape[0])
        if count == 0:
            raise ValueError(f"PoolFraction({init.fraction}) of {pool.shape[0]} pool rows is 0 "
                             "rows; use a larger fraction or init=None.")
        rows = np.sort(rng.choice(pool.shape[0], size=count, replace=False))
        return pool[rows], pool_w[rows], rows
    points = as_points("init", init)
    same_dim(pool=pool, init=points)
    return points, as_weights("init_weights", init_weights, points.shape[0]), no_rows


# Rules that fire when the KL stops falling; only these can reset the pool instead of stopping.
RESETTABLE = ("increase", "max_resets", "min_difference", "sequential_increase_tolerance")


def check_select_options(*, k=5, estimator="knn", method="exact", seed=0, max_iter=None,
                         stop_criterion="increase", min_difference=0.0, resets_allowed=False,
                         max_resets=2, max_data_size=1.0, min_kl=0.0,
                         max_sequential_increases=3, lr=0.01, grad_desc_iter=50,
                         v_init="mean", scale_factor="auto", random_restart_prob=0.0,
                         smoothing=1.0, eps=1e-8, discard_nearest_for_xy=False,
                         block_size=4096, cache_bytes=2 ** 28, dim=None,
                         max_rows=None, mmd_tolerance=0.25, mmd_bandwidth=None,
                         fill=None) -> None:
    """Checks every option of :func:`select` that does not depend on the data.

    The one validator of these options: :func:`select` calls it, and so does the pipeline's
    config check (before Spark starts), so both accept and refuse the same values with the same
    words. Each message starts with the option's name.

    Raises:
      ValueError: naming the first bad option and what it must be.

    Example:
      >>> check_select_options(k=5, stop_criterion="min_kl", min_kl=0.1)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("method", method, METHODS)
    check_choice("stop_criterion", stop_criterion, STOP_CRITERIA)
    check_choice("v_init", v_init, V_INITS)
    if not isinstance(seed, np.random.Generator):
        check_number("seed", seed, low=0, high=2 ** 63 - 1, integer=True)
    if max_iter is not None:
        check_number("max_iter", max_iter, low=1, integer=True)
    if max_rows is not None:
        check_number("max_rows", max_rows, low=1, integer=True)
    check_number("min_difference", min_difference)
    check_bool("resets_allowed", resets_allowed)
    check_number("max_resets", max_resets, low=0, integer=True)
    check_number("max_data_size", max_data_size, low=0, high=1, low_open=True)
    check_number("min_kl", min_kl)
    check_number("mmd_tolerance", mmd_tolerance, low=0, low_open=True)
    if mmd_bandwidth is not None:
        check_number("mmd_bandwidth", mmd_bandwidth, low=0, low_open=True)
    check_number("max_sequential_increases", max_sequential_increases, low=1, integer=True)
    check_number("lr", lr, low=0, low_open=True)
    check_number("grad_desc_iter", grad_desc_iter, low=1, integer=True)
    check_number("random_restart_prob", random_restart_prob, low=0, high=1)
    check_number("smoothing", smoothing, low=0, low_open=True)
    check_number("eps", eps, low=0)
    check_bool("discard_nearest_for_xy", discard_nearest_for_xy)
    check_number("block_size", block_size, low=1, integer=True)
    check_number("cache_bytes", cache_bytes, low=0, integer=True)
    if not (isinstance(scale_factor, str) and scale_factor == "auto"):
        check_number("scale_factor", scale_factor, low=0, low_open=True)
    if dim is not None and not (isinstance(dim, str) and dim == "auto"):
        if isinstance(dim, str) or isinstance(dim, bool) or not isinstance(
                dim, (int, float, np.integer, np.floating)) or not np.isfinite(dim) or dim <= 0:
            raise ValueError(f"dim must be None (the ambient dimension), 'auto' (intrinsic) or a "
                             f"positive number; got {dim!r}.")
    if stop_criterion == "max_resets" and not resets_allowed:
        raise ValueError("stop_criterion='max_resets' needs resets_allowed=True.")
    if resets_allowed and stop_criterion not in RESETTABLE:
        raise ValueError(f"resets_allowed has no effect with stop_criterion={stop_criterion!r}: a "
                         "reset replaces a stop caused by the KL no longer falling "
                         f"({', '.join(RESETTABLE)}). Choose one of those, or resets_allowed=False.")
    if fill not in FILLS:
        raise ValueError(f"fill must be None or 'mmd'; got {fill!r}.")
    if fill == "mmd" and stop_criterion != "mmd":
        raise ValueError("fill='mmd' fills a budget past the point where the mmd rule ends the "
                         "selection; it needs stop_criterion='mmd'.")
    if discard_nearest_for_xy and (estimator != "averaged" or method != "gradient"):
        raise ValueError("discard_nearest_for_xy applies to estimator='averaged' with "
                         "method='gradient' only.")


def select(target, pool, *, k: int = 5, estimator: str = "knn", method: str = "exact",
           seed=0, max_iter: int | None = None, stop_criterion: str = "increase",
           min_difference: float = 0.0, resets_allowed: bool = False, max_resets: int = 2,
           max_data_size: float = 1.0, min_kl: float = 0.0, max_sequential_increases: int = 3,
           init: Init = None, init_weights=None, target_weights=None, pool_weights=None,
           lr: float = 0.01, grad_desc_iter: int = 50, v_init: str = "mean",
           scale_factor="auto", random_restart_prob: float = 0.0, smoothing: float = 1.0,
           eps: float = 1e-8, discard_nearest_for_xy: bool = False, block_size: int = 4096,
           cache_bytes: int = 2 ** 28, dim=None, max_rows: int | None = None, row_counts=None,
           mmd_tolerance: float = 0.25, mmd_bandwidth: float | None = None,
           fill: str | None = None,
           callback: Callable[[int, int, float], None] | None = None) -> SelectionResult:
    """Choose pool rows, one at a time, that minimise KL(target || selected).

    Args:
      target: array ``[n, d]``, a sample of the distribution to match (``n > k``).
      pool: array ``[M, d]``, the candidates (rows, or K-means centroids).
      k: neighbour ranks of the estimator.
      estimator: ``"knn"`` (default; rank-averaged Wang-Kulkarni-Verdu, covers the target)
        or ``"averaged"`` (the GIO source's estimator; collapses onto the target's centre).
      method: ``"exact"`` scores every remaining row's KL and takes the best, in pool blocks of
        ``block_size`` rows (memory ``O(chunk * block_size * k)``); ``"gradient"`` descends
        ``grad_desc_iter`` steps in embedding space (three times as many on the first pick,
        after a reset and, with probability ``random_restart_prob``, on any pick) and takes the
        nearest remaining row.
      seed: int or ``numpy.random.Generator``; the only source of randomness (start sets,
        ``v_init="jump"``, random restarts). Same inputs and seed, same picks.
      max_iter: at most this many picks (``None``: no cap but the pool).
      stop_criterion: ``"increase"`` stops before a pick that would raise the KL;
        ``"max_resets"`` does the same after ``max_resets`` resets (needs ``resets_allowed``);
        ``"min_difference"`` stops when a pick would lower the KL by less than
        ``min_difference``; ``"sequential_increase_tolerance"`` accepts picks that raise the KL
        until ``max_sequential_increases`` of them come in a row, then stops and drops that run;
        ``"min_kl"`` stops after the first pick whose KL is ``<= min_kl``; ``"data_size"`` stops
        at ``int(max_data_size * M)`` picks; ``"mmd"`` returns the picks up to the one where
        the squared MMD (RBF kernel) between the target and the selection is least: it picks on
        until the MMD is ``mmd_tolerance`` (relative) above that least value and it has made at
        least ``max(2 * best + k, n)`` picks, then drops the picks past the least value (caps
        still apply: the selection then ends at the least value within them; a start set is not
        counted in the MMD; ``fill`` below can spend a budget past it). ``mmd_bandwidth`` is the
        kernel's ``h`` in
        ``exp(-|a - b|^2 / h)``, by default the median squared distance between target points
        (on centroids pass the rows' median, which is wider); ``"none"``: only ``max_iter`` and
        the pool.
      resets_allowed: when a rule fires because the KL stopped falling (``increase``,
        ``max_resets``, ``min_difference``, ``sequential_increase_tolerance``), make every pool
        row available again (duplicates allowed) instead of stopping, at most ``max_resets``
        times. It is refused with the other rules, where it could never act.
      init: ``None`` (start empty), an array ``[s, d]`` (with ``init_weights``), a
        :class:`UniformStart` or a :class:`PoolFraction`. The start set counts in the KL; it is
        not returned among the picks; pool rows used by it are not picked again before a reset.
      target_weights, pool_weights: positive weights (for example K-means cluster sizes).
      lr, v_init, scale_factor: descent settings. ``v_init``: ``"mean"`` restarts each descent
        at the target mean, ``"prev_opt"`` from the previous optimum, ``"jump"`` at a random
        target point. ``scale_factor="auto"`` scales the gradient so that the first step moves
        ``lr`` times the target's RMS spread.
      smoothing: width, in log-distance units, of the softplus that smooths the knn
        estimator for the descent.
      eps, discard_nearest_for_xy: the averaged estimator's epsilon and its option to drop each
        target point's nearest selected point (``method="gradient"`` only).
      block_size: pool rows scored per block by the exact method.
      cache_bytes: memory for the exact method's distances (default 256 MiB). When the
        ``[n, M]`` target-to-pool log-distances (4 bytes each) fit, they are kept, and
        rescoring after a pick costs no distance computations. When they do not, each target
        whose neighbour list a pick changes keeps the pool rows inside its K-th neighbour radius
        (8 bytes a row, within this budget; the radii shrink fast as picks go on) and is
        rescored on those alone; a target with none kept is rescored on the whole pool. The
        picks are the same either way.
      dim: the ``d`` in the estimators' ``d * log(distance)`` terms. ``None`` (default): the
        ambient dimension of the arrays. ``"auto"``: the target's intrinsic dimension by the
        Levina-Bickel estimate, better for embeddings, which lie near a low-dimensional
        manifold: with the ambient 384 the distance terms swamp the ``log m`` term and the
        selection grows broad. Or a positive number.
      max_rows, row_counts: a row budget. Each pool row stands for ``row_counts`` rows (default
        1; the pipeline gives the clusters' sizes); the selection stops after the pick that
        brings the rows picked to ``max_rows`` or past it (``stop_reason="max_rows"``), so the
        last pick may hold more rows than are left in the budget (the pipeline samples that
        cluster down). The stopping rule still applies before the budget is reached.
      fill: ``None`` (default) or ``"mmd"`` (with ``stop_criterion="mmd"``): when a budget
        (``max_iter`` or ``max_rows``) asks for more picks than the rule's selection holds, keep
        the picks up to the least MMD and spend the rest of the budget on the rows that keep the
        MMD to the target lowest, one at a time (each next one the available row whose addition
        gives the least MMD; ``O(M * d)`` a pick). Past the best match the KL gains are nearly
        flat and KL-driven picks follow the pool's proportions, not the target's; these picks
        follow the target's. Without a budget the rule's selection stands.
      callback: called as ``callback(pick_number, pool_row, kl)`` after each accepted pick.

    Returns:
      A :class:`SelectionResult`.

    Example:
      >>> result = select(target, pool, k=5, max_iter=200)
      >>> chosen = pool[result.indices]
    """
    target = as_points("target", target)
    pool = as_points("pool", pool)
    same_dim(target=target, pool=pool)
    check_select_options(
        k=k, estimator=estimator, method=method, seed=seed, max_iter=max_iter,
        stop_criterion=stop_criterion, min_difference=min_difference,
        resets_allowed=resets_allowed, max_resets=max_resets, max_data_size=max_data_size,
        min_kl=min_kl, max_sequential_increases=max_sequential_increases, lr=lr,
        grad_desc_iter=grad_desc_iter, v_init=v_init, scale_factor=scale_factor,
        random_restart_prob=random_restart_prob, smoothing=smoothing, eps=eps,
        discard_nearest_for_xy=discard_nearest_for_xy, block_size=block_size,
        cache_bytes=cache_bytes, dim=dim, max_rows=max_rows, mmd_tolerance=mmd_tolerance,
        mmd_bandwidth=mmd_bandwidth, fill=fill)
    k = check_k(k, target.shape[0])
    if discard_nearest_for_xy and (target_weights is not None or pool_weights is not None):
        raise ValueError("discard_nearest_for_xy does not support weights.")
    from gio_core._estimators import resolve_dim
    dim = resolve_dim(dim, target)
    target_w = as_weights("target_weights", target_weights, target.shape[0])
    pool_w = as_weights("pool_weights", pool_weights, pool.shape[0])
    counts = None
    if max_rows is not None:
        counts = (np.ones(pool.shape[0], np.int64) if row_counts is None
                  else np.asarray(row_counts))
        if counts.shape != (pool.shape[0],) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(f"row_counts must be {pool.shape[0]} non-negative integers, one per "
                             f"pool row; got shape {counts.shape}, dtype {counts.dtype}.")
    rng = _rng(seed)

    start, start_w, start_rows = _start_set(init, init_weights, pool, pool_w, target.shape[1], rng)
    available = np.ones(pool.shape[0], bool)
    available[start_rows] = False
    if not available.any():
        raise ValueError("the pool is exhausted before the first pick: the start set uses every "
                         "pool row. Use a smaller PoolFraction.")

    target_j, pool_j = jnp.asarray(target), jnp.asarray(pool)
    engine: KnnEngine | AveragedEngine
    if estimator == "knn":
        engine = KnnEngine(target_j, jnp.asarray(target_w), pool_j, jnp.asarray(pool_w), k,
                           block_size=block_size, smoothing=smoothing, cache_bytes=cache_bytes,
                           dim=dim)
    else:
        engine = AveragedEngine(target_j, jnp.asarray(target_w), pool_j, jnp.asarray(pool_w), k,
                                eps=eps, discard_nearest_for_xy=discard_nearest_for_xy,
                                block_size=block_size, dim=dim)
    state = engine.initial_state(jnp.asarray(start), jnp.asarray(start_w))
    kl_start = engine.kl(state)

    # Budgets: max_iter and data_size cap the picks; without them the loop ends when a rule
    # fires or the pool is used up (reported as pool_exhausted, not as a budget).
    budget, budget_reason = np.inf, "max_iter"
    if max_iter is not None:
        budget = int(max_iter)
    if stop_criterion == "data_size":
        size_cap = max(1, int(max_data_size * pool.shape[0]))
        if size_cap < budget:
            budget, budget_reason = size_cap, "data_size"

    driver = _Driver(engine, state, available, method, rng, target_w, target,
                     lr=lr, grad_desc_iter=grad_desc_iter, v_init=v_init,
                     scale_factor=scale_factor, random_restart_prob=random_restart_prob)
    if stop_criterion == "mmd":
        from gio_core._mmd import MmdTracker
        driver.tracker = MmdTracker(target, target_w, pool, pool_w, mmd_bandwidth)
        driver.mmd_tolerance = float(mmd_tolerance)
    picks, kls, reason, resets = driver.run(
        kl_start, budget, stop_criterion, min_difference=min_difference,
        resets_allowed=resets_allowed, max_resets=max_resets, min_kl=min_kl,
        max_sequential_increases=max_sequential_increases, callback=callback,
        budget_reason=budget_reason, max_rows=max_rows, row_counts=counts)
    mmd, lookahead, filled = np.zeros((0,)), 0, 0
    if driver.tracker is not None:
        mmd = np.asarray(driver.mmd_values, np.float64)
        if len(picks):
            best = int(np.argmin(mmd)) + 1
            lookahead = len(picks) - best
            if lookahead:
                picks, kls, mmd, reason = picks[:best], kls[:best], mmd[:best], "mmd"
        if fill == "mmd" and (max_iter is not None or max_rows is not None):
            available = np.ones(pool.shape[0], bool)
            available[start_rows] = False
            available[np.asarray(picks, np.int64)] = False
            before = len(picks)
            state = driver.best_state if driver.best_state is not None else state
            picks, kls, mmd, reason = _mmd_fill(
                driver.tracker, engine, state, list(picks), list(kls), list(mmd), available,
                budget, max_rows, counts, reason, callback)
            filled = len(picks) - before
    return SelectionResult(np.asarray(picks, np.int64), np.asarray(kls, np.float64),
                           float(kl_start), reason, start_rows, start, resets, dim,
                           np.asarray(mmd, np.float64), lookahead, filled)


def _mmd_fill(tracker, engine, state, picks, kls, mmd, available, budget, max_rows, counts,
              reason, callback):
    """Spends what is left of the budget on the rows that keep the MMD lowest (``fill``)."""
    from gio_core._mmd import kernel_sums
    pool, w, tp, h = tracker.pool, tracker.pool_w, tracker.tp, tracker.h
    chosen = np.asarray(picks, np.int64)
    rows_picked = int(counts[chosen].sum()) if counts is not None and chosen.size else 0

    def room() -> bool:
        return (len(picks) < budget and (max_rows is None or rows_picked < max_rows)
                and bool(available.any()))

    if not room():
        return picks, kls, mmd, reason
    # ps_j = sum over the picks of w_s k(pool_j, s): one pass now, one kernel row a pick after.
    ps = (kernel_sums(pool[chosen], w[chosen], pool, h) if chosen.size
          else np.zeros(pool.shape[0]))
    cross = float(w[chosen] @ tp[chosen]) if chosen.size else 0.0
    inner = float(w[chosen] @ ps[chosen]) if chosen.size else 0.0
    total = float(w[chosen].sum()) if chosen.size else 0.0
    pool_j = jnp.asarray(pool)
    while room():
        after = total + w
        value = tracker.tt - 2.0 * (cross + w * tp) / after + (inner + 2.0 * w * ps + w * w) / after ** 2
        value = np.where(available, value, np.inf)
        row = int(np.argmin(value))
        state = engine.accept(state, row)
        kl = engine.kl(state)
        cross += float(w[row] * tp[row])
        inner += float(2.0 * w[row] * ps[row] + w[row] ** 2)
        total += float(w[row])
        ps = ps + w[row] * np.asarray(_kernel_row(pool_j, pool_j[row], h), np.float64)
        available[row] = False
        picks.append(row)
        kls.append(kl)
        mmd.append(max(0.0, float(value[row])))
        if counts is not None:
            rows_picked += int(counts[row])
        if callback is not None:
            callback(len(picks), row, kl)
    if max_rows is not None and rows_picked >= max_rows:
        return picks, kls, mmd, "max_rows"
    if len(picks) >= budget:
        return picks, kls, mmd, "max_iter"
    return picks, kls, mmd, "pool_exhausted"


@jax.jit
def _kernel_row(pool, point, h):
    return jnp.exp(-jnp.sum((pool - point[None, :]) ** 2, axis=1) / h)


class _Driver:
    """The pick loop: proposals from an engine, stopping rules, resets and roll-back."""

    def __init__(self, engine, state, available, method, rng, target_w, target, *, lr,
                 grad_desc_iter, v_init, scale_factor, random_restart_prob):
        self.engine = engine
        self.state = state
        self.available = available
        self.method = method
        self.rng = rng
        self.target = target
        self.grad_desc_iter = grad_desc_iter
        self.v_init = v_init
        self.random_restart_prob = random_restart_prob
        self.tracker = None          # an MmdTracker for stop_criterion="mmd"
        self.mmd_tolerance = 0.0
        self.mmd_values: list[float] = []
        self.mmd_best_at = 0         # picks up to the least MMD so far
        self.best_state = None       # the engine's state there
        if method == "gradient":
            abar = target_w / target_w.sum()
            self.mean = (abar[:, None] * target).sum(axis=0)
            self.v = self._fresh_v(first=True)
            if scale_factor == "auto":
                spread = float(np.sqrt((abar * ((target - self.mean) ** 2).sum(axis=1)).sum()))
                gnorm = engine.gradient_norm(state, jnp.asarray(self.v))
                scale_factor = spread / gnorm if gnorm > 0 else 1.0
            self.lr_scale = float(lr * scale_factor)

    def _fresh_v(self, first=False):
        if self.v_init == "jump":
            return self.target[self.rng.integers(self.target.shape[0])]
        if self.v_init == "prev_opt" and not first:
            return self.v
        return self.mean

    def propose(self, long_descent):
        if self.method == "exact":
            self.state = self.engine.with_gains(self.state)
            return self.engine.propose_exact(self.state, jnp.asarray(self.available))
        steps = self.grad_desc_iter
        if long_descent or (self.random_restart_prob > 0
                            and self.rng.random() < self.random_restart_prob):
            steps *= 3
        v, row, kl = self.engine.propose_gradient(self.state, jnp.asarray(self.available),
                                                  jnp.asarray(self.v), steps, self.lr_scale)
        self.v = np.asarray(v)
        return row, kl

    def _reset(self) -> None:
        """Every pool row becomes available again (duplicates allowed from now on)."""
        self.available[:] = True

    def run(self, kl_prev, budget, stop_criterion, *, min_difference, resets_allowed,
            max_resets, min_kl, max_sequential_increases, callback, budget_reason,
            max_rows=None, row_counts=None):
        """Picks until a rule fires, the budget is spent or the pool is used up.

        A rule that fires because the KL stopped falling (``RESETTABLE``) resets the pool
        instead of stopping while ``resets_allowed`` and fewer than ``max_resets`` resets were
        made; the pick that fired it is not added (for ``sequential_increase_tolerance`` the
        whole rising run is rolled back first).
        """
        picks, kls = [], []
        resets, just_reset = 0, False
        run_start = None        # (len(picks), state, kl_prev) where a run of increases began
        rows_picked = 0         # the row budget's count (max_rows)

        def may_reset() -> bool:
            return resets_allowed and resets < max_resets

        while True:
            if len(picks) >= budget:
                return picks, kls, budget_reason, resets
            if not self.available.any():
                return picks, kls, "pool_exhausted", resets
            row, kl = self.propose(long_descent=not picks or just_reset)
            if self.method == "gradient":
                self.v = self._fresh_v()
            rules_apply = self.engine.comparable(self.state)
            rises = rules_apply and kl > kl_prev
            fired = None
            if rises and stop_criterion in ("increase", "max_resets"):
                fired = stop_criterion
            elif (stop_criterion == "min_difference" and rules_apply
                  and kl_prev - kl < min_difference):
                fired = "min_difference"
            if fired is not None:
                if may_reset():
                    resets += 1
                    just_reset = True
                    self._reset()
                    continue
                return picks, kls, fired, resets
            if stop_criterion == "sequential_increase_tolerance":
                if rises and run_start is None:
                    run_start = (len(picks), self.state, kl_prev)
                elif not rises:
                    run_start = None
            just_reset = False
            self.state = self.engine.accept(self.state, row)
            self.available[row] = False
            picks.append(row)
            kls.append(kl)
            if max_rows is not None:
                rows_picked += int(row_counts[row])
            if callback is not None:
                callback(len(picks), row, kl)
            if run_start is not None and len(picks) - run_start[0] >= max_sequential_increases:
                first, self.state, kl = run_start
                undone = picks[first:]
                del picks[first:], kls[first:]
                if max_rows is not None:
                    rows_picked = int(row_counts[picks].sum()) if picks else 0
                self.available[undone] = True
                run_start = None
                if not may_reset():
                    return picks, kls, "sequential_increase_tolerance", resets
                resets += 1
                just_reset = True
                self._reset()
            if stop_criterion == "min_kl" and kl <= min_kl:
                return picks, kls, "min_kl", resets
            if self.tracker is not None:
                value = self.tracker.add(row)
                self.mmd_values.append(value)
                if not self.mmd_best_at or value < self.mmd_values[self.mmd_best_at - 1]:
                    self.mmd_best_at = len(self.mmd_values)
                    self.best_state = self.state
                least = self.mmd_values[self.mmd_best_at - 1]
                # The MMD along the picks is not monotone early on (a pick into a new region of
                # the target can raise it for a while): look at least as far again past the
                # least value, plus k picks, and as many picks as the target has points, before
                # trusting a rise.
                if (rules_apply and value > least * (1.0 + self.mmd_tolerance) and len(picks)
                        >= max(2 * self.mmd_best_at + self.engine.k, self.engine.n)):
                    return picks, kls, "mmd", resets
            if max_rows is not None and rows_picked >= max_rows:
                return picks, kls, "max_rows", resets
            kl_prev = kl


def _sized(centroids, sizes, other, what: str, other_what: str):
    """``(centroids, other, sizes)`` as float64 ``[rows, d]`` (the same d) and int64 (one size
    per centroid), or a ValueError naming ``what`` and ``other_what``."""
    c = np.asarray(centroids, np.float64)
    o = np.asarray(other, np.float64)
    sizes = np.asarray(sizes, np.int64)
    if c.ndim != 2 or o.ndim != 2 or c.shape[1] != o.shape[1]:
        raise ValueError(f"{what} of shape {c.shape} and {other_what} of shape {o.shape}: both "
                         "need [rows, d] with the same d")
    if sizes.shape != (c.shape[0],):
        raise ValueError(f"{sizes.shape[0] if sizes.ndim else 0} sizes for {c.shape[0]} {what}")
    return c, o, sizes


def candidate_clusters(pool_centroids, target_centroids, sizes, chosen, rows: int) -> np.ndarray:
    """The pool clusters whose rows a row-level selection chooses from: the ``chosen`` ones
    (indices into the pool centroids, in pick order, repeats dropped), then the others in order
    of their centroid's squared distance to the nearest target centroid (ties by index) until
    the clusters hold at least ``rows`` rows (``sizes``: rows per pool cluster) or none is left.

    Example::

        near = candidate_clusters(pool_c, target_c, sizes, result.indices, 3 * budget)
    """
    pool_c, target_c, sizes = _sized(pool_centroids, sizes, target_centroids, "pool centroids",
                                     "target centroids")
    out = list(dict.fromkeys(int(c) for c in chosen))
    total = int(sizes[out].sum()) if out else 0
    if total >= rows:
        return np.asarray(out, np.int64)
    nearest = nearest_centre(pool_c, target_c)[1]   # squared distance to the nearest target one
    taken = np.zeros(len(pool_c), bool)
    taken[out] = True
    for c in np.lexsort((np.arange(len(pool_c)), nearest)):
        if total >= rows:
            break
        if not taken[c]:
            out.append(int(c))
            total += int(sizes[c])
    return np.asarray(out, np.int64)


def proportional_size(target, pool, neighbours: int = 10, share: float = 0.75,
                      block: int = 4096) -> int:
    """How many pool rows a selection can hold and still follow the target's proportions: an
    estimate of the largest subset of ``pool`` distributed like ``target``, for a selection
    with no row budget to decide its own size.

    A subset that follows the target takes rows near each target point in the target's
    proportions, so it can hold at most ``n_pool / w`` rows, where ``w`` is the density ratio
    (target over pool) at that point. For each target row, the ball reaching its
    ``neighbours``-th nearest other target row holds ``neighbours`` target rows and ``c`` pool
    rows, so ``n_target * c / neighbours`` estimates ``n_pool / w`` there. The size returned is
    the lower ``1 - share`` quantile of those estimates: the largest selection in which target
    rows holding ``share`` of the target find pool rows enough to keep their proportions (the
    least of them, ``share=1``, is too noisy to use). Rows far from every target point count
    nowhere; a pool row that copies a target row counts as a pool row.

    Squared distances are computed in float64 from the float32 rows, both sides in blocks of
    ``block`` rows; a row on a ball's edge counts (within ``1e-9`` of the squared norms, so the
    count does not depend on the blocks). Memory: ``block x n_target`` float64 values besides
    the inputs.

    Args:
      target: ``[n, d]`` target rows (at least 2).
      pool: ``[m, d]`` pool rows.
      neighbours: target neighbours per ball (at most ``n - 1`` are used).
      share: the share of target rows whose estimate must allow the size, in ``(0, 1]``.
      block: rows per block, an integer >= 1.
    Returns:
      An int between 1 and ``m``.

    Example::

        size = proportional_size(target_rows, candidate_rows)
        picks = select(target_rows, candidate_rows, stop_criterion="mmd", fill="mmd",
                       max_iter=size).indices
    """
    y32 = as_points("target", target)
    x32 = as_points("pool", pool)
    same_dim(target=y32, pool=x32)
    if len(y32) < 2:
        raise ValueError(f"proportional_size needs at least 2 target rows; got {len(y32)}.")
    for name, value in (("neighbours", neighbours), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    if isinstance(share, bool) or not isinstance(share, (int, float, np.number)) \
            or not 0 < share <= 1:
        raise ValueError(f"share must be a number in (0, 1]; got {share!r}.")
    k = min(int(neighbours), len(y32) - 1)
    y = y32.astype(np.float64)
    yy = np.einsum("ij,ij->i", y, y)

    def squared(a: np.ndarray, aa: np.ndarray) -> np.ndarray:
        """Squared distances from every target row to the rows ``a`` (norms ``aa``)."""
        d = y @ a.T
        d *= -2.0
        d += yy[:, None]
        d += aa[None, :]
        return np.maximum(d, 0.0, out=d)

    xx_max = max(float(np.einsum("ij,ij->i", x32[a:a + block], x32[a:a + block],
                                 dtype=np.float64).max()) for a in range(0, len(x32), block))
    radius = np.empty(len(y))
    for a in range(0, len(y), block):          # each target row's k-th nearest other one
        d = squared(y[a:a + block], yy[a:a + block]).T          # [block, n]
        d[np.arange(len(d)), np.arange(a, a + len(d))] = np.inf
        radius[a:a + block] = np.partition(d, k - 1, axis=1)[:, k - 1]
    limit = radius + 1e-9 * (yy + max(xx_max, float(yy.max())))
    counts = np.zeros(len(y), np.int64)
    for a in range(0, len(x32), block):
        xb = x32[a:a + block].astype(np.float64)
        counts += (squared(xb, np.einsum("ij,ij->i", xb, xb)) <= limit[:, None]).sum(axis=1)
    estimate = len(y) * counts / k
    size = int(np.floor(np.quantile(estimate, 1.0 - share)))
    return int(min(max(size, 1), len(x32)))


class Regions(NamedTuple):
    """A split of candidate clusters and target rows into regions of space (see
    :func:`row_regions`)."""
    cluster_region: np.ndarray   # [clusters] int64: each candidate cluster's region
    target_region: np.ndarray    # [target rows] int64: each target row's region
    rows: np.ndarray             # [regions] int64: the rows each region's clusters hold


def row_regions(centroids, sizes, target, cap: int, min_target: int) -> Regions:
    """Cuts space into regions whose candidate clusters hold about ``cap`` rows at most, so that
    a row-level selection can run in each region apart: the selection of the candidate rows
    of a region against the target rows in it.

    The cut is a tree of hyperplanes. A region whose clusters hold more than ``cap`` rows (and
    more than one cluster) is split across the principal axis of its centroids (weighted by
    their rows), at the median row, into two halves of about equal rows; the target rows go to
    the side of the plane they lie on. A split that would leave either side fewer than
    ``min_target`` target rows is not made: that region stays whole (the caller may then cut
    its rows further at random, each part with the same target rows). Regions are numbered
    depth first, the lower side of each plane first. Pure function of its inputs: the same
    centroids, sizes and target rows (in any order of the target rows) give the same regions.

    Args:
      centroids: ``[clusters, d]``, the candidate clusters' centroids.
      sizes: ``[clusters]``, the rows each cluster holds.
      target: ``[n, d]``, the target rows, in the centroids' space.
      cap: the most rows a region should hold (``>= 1``).
      min_target: the fewest target rows a region may have after a split (``>= 1``).

    Example::

        regions = row_regions(cand_c, cand_sizes, target_rows, cap=50_000, min_target=6)
    """
    c, t, sizes = _sized(centroids, sizes, target, "centroids", "target rows")
    if int(cap) < 1 or int(min_target) < 1:
        raise ValueError(f"cap and min_target must be >= 1; got {cap} and {min_target}")
    cluster_region = np.zeros(len(c), np.int64)
    target_region = np.zeros(len(t), np.int64)
    rows: list[int] = []
    stack = [(np.arange(len(c)), np.arange(len(t)))]
    while stack:
        clusters, targets = stack.pop()
        halves = _halves(c[clusters], sizes[clusters], t[targets], int(cap), int(min_target))
        if halves is None:
            cluster_region[clusters] = len(rows)
            target_region[targets] = len(rows)
            rows.append(int(sizes[clusters].sum()))
            continue
        (low_c, low_t), (high_c, high_t) = halves
        stack.append((clusters[high_c], targets[high_t]))    # popped after the lower side
        stack.append((clusters[low_c], targets[low_t]))
    return Regions(cluster_region, target_region, np.asarray(rows, np.int64))


def _halves(c, sizes, t, cap: int, min_target: int):
    """The two sides of the weighted principal plane through ``c``'s median row, as index
    arrays ``((clusters, targets), (clusters, targets))``; None where no split is due or
    allowed."""
    total = int(sizes.sum())
    if total <= cap or len(c) < 2:
        return None
    w = sizes / max(total, 1)
    centred = c - w @ c
    _, vectors = np.linalg.eigh((centred * w[:, None]).T @ centred)
    axis = vectors[:, -1]
    axis = axis * (1.0 if axis[np.argmax(np.abs(axis))] > 0 else -1.0)   # one sign, always
    p = c @ axis
    order = np.lexsort((np.arange(len(c)), p))
    before = np.cumsum(sizes[order])
    cut = int(np.clip(np.searchsorted(before, total / 2.0), 0, len(c) - 2)) + 1
    if p[order[cut - 1]] == p[order[cut]]:
        return None                                        # no plane between the halves
    plane = (p[order[cut - 1]] + p[order[cut]]) / 2.0
    low_t = np.flatnonzero(t @ axis < plane)
    high_t = np.flatnonzero(t @ axis >= plane)
    if min(len(low_t), len(high_t)) < min_target:
        return None
    return (np.sort(order[:cut]), low_t), (np.sort(order[cut:]), high_t)


def share_out(total: int, weights, caps) -> np.ndarray:
    """``total`` picks shared among parts in proportion to ``weights``, none past its cap:
    largest remainders (ties to the lower index), and what a capped part cannot take goes to the
    others in the same proportion. Returns int64 ``[parts]`` summing to
    ``min(total, sum(caps))``; parts of weight 0 get picks only when the others are full.

    Example::

        share_out(10, [1, 1, 2], [100, 1, 100]).tolist()   # [3, 1, 6]
    """
    w = np.asarray(weights, np.float64)
    caps = np.asarray(caps, np.int64)
    if w.shape != caps.shape or w.ndim != 1 or (w < 0).any() or (caps < 0).any():
        raise ValueError("weights and caps need one non-negative value per part")
    out = np.zeros(len(w), np.int64)
    left = min(int(total), int(caps.sum()))
    while left > 0:
        room = caps - out
        open_ = room > 0
        share = np.where(open_, w, 0.0)
        if share.sum() <= 0:                               # only weightless parts have room
            share = open_.astype(np.float64)
        exact = left * share / share.sum()
        give = np.minimum(np.floor(exact).astype(np.int64), room)
        rest = left - int(give.sum())
        if rest > 0:                                        # largest remainders, in room
            frac = np.where((share > 0) & (room > give), exact - np.floor(exact), -1.0)
            for i in np.lexsort((np.arange(len(w)), -frac))[:rest]:
                if frac[i] >= 0:
                    give[i] += 1
        if give.sum() == 0:
            break
        out += give
        left -= int(give.sum())
    return out
