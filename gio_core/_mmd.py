"""Maximum mean discrepancy with an RBF kernel: the distribution distance of the ``mmd``
stopping rule and of the evaluation harness.

``MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y)`` with ``k(x, y) = exp(-|x - y|^2 / h)``,
estimated on weighted point sets as the plug-in (V-statistic) sum. ``h`` defaults to the median
of the squared distances between points of the reference set (the "median heuristic").

Unlike the kNN KL estimators, this estimate has no bias that depends on how many points are
selected relative to the target, so along a greedy selection it falls while the picks are
like the target and rises once they are not: its minimum is the size at which the selection
matches the target best, on rows and on weighted centroids alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gio_core._estimators import row_chunks, sq_distances

MEDIAN_POINTS = 2048


def _order_free_sample(points: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows chosen by their content (a fixed projection), not by position,
    so the same set in another row order gives the same sample."""
    if points.shape[0] <= count:
        return points
    direction = np.random.default_rng(0).normal(size=points.shape[1])
    key = points.astype(np.float64) @ direction
    return points[np.sort(np.argsort(key, kind="stable")[:: max(1, points.shape[0] // count)])][:count]


def median_bandwidth(points) -> float:
    """The median of the squared distances between distinct rows of ``points`` (at most
    2,048 rows, chosen by content), the RBF kernel's ``h``. 1.0 when every row is the same."""
    pts = _order_free_sample(np.asarray(points, np.float32), MEDIAN_POINTS)
    sq = np.asarray(sq_distances(jnp.asarray(pts), jnp.asarray(pts)))
    upper = sq[np.triu_indices(pts.shape[0], 1)]
    upper = upper[upper > 1e-9]
    return float(np.median(upper)) if upper.size else 1.0


@jax.jit
def _kernel_sums_chunk(x, xw, idx, valid, y, h):
    """``sum_{i in chunk} xw_i k(x_i, y_j)`` for every ``y_j``."""
    kern = jnp.exp(-sq_distances(x[idx], y) / h)
    return jnp.where(valid, xw[idx], 0.0) @ kern


def kernel_sums(x, x_weights, y, bandwidth: float, block: int = 4096, chunk: int = 512):
    """``[len(y)]``: ``sum_i x_weights_i k(x_i, y_j)``, in blocks of ``y`` and chunks of ``x``."""
    x = jnp.asarray(x, jnp.float32)
    xw = jnp.asarray(x_weights, jnp.float32)
    y = np.asarray(y, np.float32)
    out = []
    for start in range(0, y.shape[0], block):
        part = y[start:start + block]
        rows = part.shape[0]
        # Padded to a power of two (or the block), so calls of many sizes share compilations.
        padded = block if y.shape[0] > block else max(64, 1 << (rows - 1).bit_length())
        if rows < padded:
            part = np.concatenate([part, np.zeros((padded - rows, y.shape[1]), np.float32)])
        acc = jnp.zeros((padded,), jnp.float32)
        for idx, valid in row_chunks(x.shape[0], min(chunk, x.shape[0])):
            acc = acc + _kernel_sums_chunk(x, xw, jnp.asarray(idx), jnp.asarray(valid),
                                           jnp.asarray(part), bandwidth)
        out.append(np.asarray(acc)[:rows])
    return np.concatenate(out).astype(np.float64)


def mmd_rbf(x, y, x_weights=None, y_weights=None, bandwidth=None) -> float:
    """Squared MMD between two (weighted) point sets with the RBF kernel.

    Args:
      x, y: arrays ``[n, d]`` and ``[m, d]``.
      x_weights, y_weights: optional positive weights (for example cluster sizes).
      bandwidth: the kernel's ``h`` in ``exp(-|a - b|^2 / h)``; ``None``: the median heuristic
        on ``x`` and ``y`` together.
    Returns:
      The plug-in estimate, a float ``>= 0`` up to rounding.
    """
    from gio_core._validation import as_points, as_weights, same_dim
    x = as_points("x", x)
    y = as_points("y", y)
    same_dim(x=x, y=y)
    a = as_weights("x_weights", x_weights, x.shape[0]).astype(np.float64)
    b = as_weights("y_weights", y_weights, y.shape[0]).astype(np.float64)
    h = median_bandwidth(np.concatenate([x, y])) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth!r}.")
    a, b = a / a.sum(), b / b.sum()
    xx = float(a @ kernel_sums(x, a, x, h))
    yy = float(b @ kernel_sums(y, b, y, h))
    xy = float(b @ kernel_sums(x, a, y, h))
    return max(0.0, xx + yy - 2.0 * xy)


class MmdTracker:
    """MMD^2 between the target and a growing selection of pool rows, one pick at a time.

    Precomputes, with one pass over the pool, each row's kernel mass against the target; a
    pick then costs one kernel row against the picks so far (``O(picks * d)`` on the host).
    Duplicated picks (after a pool reset) count again, as in the KL estimators.
    """

    def __init__(self, target, target_w, pool, pool_w, bandwidth=None):
        target = np.asarray(target, np.float32)
        self.pool = np.asarray(pool, np.float32)
        self.pool_w = np.asarray(pool_w, np.float64)
        a = np.asarray(target_w, np.float64)
        a = a / a.sum()
        self.h = median_bandwidth(target) if bandwidth is None else float(bandwidth)
        self.tt = float(a @ kernel_sums(target, a, target, self.h))
        self.tp = kernel_sums(target, a, self.pool, self.h)          # [M]
        self.rows: list[int] = []
        self.cross = 0.0     # sum_s w_s tp_s
        self.inner = 0.0     # sum_{s, s'} w_s w_s' k(s, s')
        self.total = 0.0

    def value_with(self, row: int) -> tuple[float, float, float]:
        """(mmd^2, cross, inner) after adding ``row``, without adding it."""
        w = float(self.pool_w[row])
        p = self.pool[row]
        if self.rows:
            chosen = np.asarray(self.rows)
            d2 = np.sum((self.pool[chosen] - p) ** 2, axis=1, dtype=np.float64)
            kp = float(self.pool_w[chosen] @ np.exp(-d2 / self.h))
        else:
            kp = 0.0
        cross = self.cross + w * float(self.tp[row])
        inner = self.inner + 2.0 * w * kp + w * w
        total = self.total + w
        return max(0.0, self.tt - 2.0 * cross / total + inner / total ** 2), cross, inner

    def add(self, row: int) -> float:
        value, self.cross, self.inner = self.value_with(row)
        self.total += float(self.pool_w[row])
        self.rows.append(int(row))
        return value
