"""Selection quality: the baselines a user would pick instead of GIO, and the metrics that
compare selections (pure NumPy/JAX/scikit-learn; the harness that runs them is
``bench/quality.py``).

Baselines, each ``(..., budget) -> int array of pool rows`` in pick order:

* :func:`random_rows`: a seeded uniform sample;
* :func:`nearest_round_robin`: each target point in turn takes its nearest pool row not yet
  taken (round after round), the "nearest neighbours of the target" baseline;
* :func:`k_center_greedy`: farthest-first traversal of the pool (the coreset baseline of active
  learning), started at the pool row nearest the target's mean.

Metrics: :func:`domain_share` (share of the selection from the target's domains, and their
recall), :func:`gio_core.mmd_rbf` and :func:`gio_core.knn_kl` against held-out target rows, and
:func:`probe_accuracy` (a logistic regression trained on the selection, scored on held-out rows).

:func:`compare` puts them together: a given selection against each method at the same budget,
every metric for each (what ``gio-spark evaluate`` runs on its sample of the pool).
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gio_core._estimators import sq_distances
from gio_core._validation import as_points, check_number, same_dim


def _budget(budget, pool_rows: int) -> int:
    check_number("budget", budget, low=1, integer=True)
    if budget > pool_rows:
        raise ValueError(f"budget={budget} is more than the pool's {pool_rows} rows.")
    return int(budget)


def random_rows(pool_rows: int, budget: int, seed: int = 0) -> np.ndarray:
    """``budget`` distinct rows of ``range(pool_rows)``, uniformly, seeded."""
    budget = _budget(budget, pool_rows)
    return np.random.default_rng(seed).choice(pool_rows, size=budget, replace=False)


@jax.jit
def _nearest_block(target, block):
    return sq_distances(target, block)


def _ranked_neighbours(target, pool, depth: int, block: int = 8192):
    """Each target point's ``depth`` nearest pool rows, nearest first (ties by row index)."""
    t = jnp.asarray(target)
    best_d = np.full((target.shape[0], 0), np.inf, np.float32)
    best_i = np.zeros((target.shape[0], 0), np.int64)
    for start in range(0, pool.shape[0], block):
        d = np.asarray(_nearest_block(t, jnp.asarray(pool[start:start + block])))
        idx = np.broadcast_to(np.arange(start, start + d.shape[1]), d.shape)
        all_d = np.concatenate([best_d, d], axis=1)
        all_i = np.concatenate([best_i, idx], axis=1)
        order = np.lexsort((all_i, all_d), axis=1)[:, :depth]
        best_d = np.take_along_axis(all_d, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return best_i


def nearest_round_robin(target, pool, budget: int) -> np.ndarray:
    """Round-robin nearest neighbours: in each round every target point (in order) takes its
    nearest pool row that no one has taken yet, until ``budget`` rows are taken.

    Neighbour lists are computed ``2 * ceil(budget / n) + 8`` deep and deepened when a point
    runs out of untaken rows in them."""
    target = as_points("target", target)
    pool = as_points("pool", pool)
    same_dim(target=target, pool=pool)
    budget = _budget(budget, pool.shape[0])
    n = target.shape[0]
    depth = min(pool.shape[0], 2 * -(-budget // n) + 8)
    lists = _ranked_neighbours(target, pool, depth)
    cursor = np.zeros(n, np.int64)
    taken = np.zeros(pool.shape[0], bool)
    picks: list[int] = []
    while len(picks) < budget:
        for i in range(n):
            while True:
                if cursor[i] >= lists.shape[1]:
                    depth = min(pool.shape[0], 2 * lists.shape[1])
                    lists = _ranked_neighbours(target, pool, depth)
                row = lists[i, cursor[i]]
                cursor[i] += 1
                if not taken[row]:
                    break
            taken[row] = True
            picks.append(int(row))
            if len(picks) == budget:
                break
    return np.asarray(picks, np.int64)


@jax.jit
def _update_min(min_d, pool, point):
    return jnp.minimum(min_d, jnp.sum((pool - point[None, :]) ** 2, axis=1))


def k_center_greedy(target, pool, budget: int) -> np.ndarray:
    """Farthest-first traversal of the pool: the first row is the one nearest the target's
    mean, each next one the row farthest from every row taken so far (ties: lowest index)."""
    target = as_points("target", target)
    pool = as_points("pool", pool)
    same_dim(target=target, pool=pool)
    budget = _budget(budget, pool.shape[0])
    pool_j = jnp.asarray(pool)
    first = int(np.argmin(np.sum((pool - target.mean(axis=0)) ** 2, axis=1)))
    picks = [first]
    min_d = _update_min(jnp.full((pool.shape[0],), jnp.inf, jnp.float32), pool_j, pool_j[first])
    for _ in range(budget - 1):
        row = int(jnp.argmax(min_d))
        picks.append(row)
        min_d = _update_min(min_d, pool_j, pool_j[row])
    return np.asarray(picks, np.int64)


def domain_share(selected_domains, target_domains, pool_domains=None) -> dict:
    """``share``: the fraction of selected rows whose domain is one of ``target_domains``;
    ``recall``: of the pool's rows from those domains, the fraction selected (needs
    ``pool_domains``)."""
    sel = np.asarray(selected_domains)
    wanted = np.isin(sel, list(target_domains))
    out = {"share": float(wanted.mean()) if sel.size else 0.0}
    if pool_domains is not None:
        total = int(np.isin(np.asarray(pool_domains), list(target_domains)).sum())
        out["recall"] = float(wanted.sum() / total) if total else 0.0
    return out


def probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0,
                   max_iter: int = 1000) -> float:
    """Accuracy on ``(test_x, test_y)`` of a standardised logistic regression (scikit-learn)
    trained on ``(train_x, train_y)``. Classes absent from the training rows count as errors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    train_y = np.asarray(train_y)
    if np.unique(train_y).size < 2:
        return float(np.mean(np.asarray(test_y) == train_y[0])) if train_y.size else 0.0
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter,
                                                               random_state=seed))
    model.fit(np.asarray(train_x, np.float64), train_y)
    return float(model.score(np.asarray(test_x, np.float64), np.asarray(test_y)))


# The methods compare() runs besides the given selection (``gio_rows``: gio_core.select on the
# rows themselves, the default knn estimator, stopped at the budget).
METHODS = ("gio_rows", "random", "k_center", "nn_round_robin")


def _method(name: str, target, pool, seed: int) -> Callable[[int], np.ndarray]:
    if name == "gio_rows":
        from gio_core._selection import select

        def gio(budget: int) -> np.ndarray:
            return np.asarray(select(target, pool, stop_criterion="none", max_iter=budget,
                                     dim="auto", seed=seed).indices, np.int64)
        return gio
    if name == "random":
        return lambda budget: random_rows(pool.shape[0], budget, seed)
    if name == "k_center":
        return lambda budget: k_center_greedy(target, pool, budget)
    if name == "nn_round_robin":
        return lambda budget: nearest_round_robin(target, pool, budget)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")


def compare(pool, target, heldout, selected, methods=METHODS, *, pool_labels=None,
            heldout_labels=None, pool_domains=None, target_domains=None, seed: int = 0,
            bandwidth: float | None = None, extra: dict | None = None,
            probe: Callable | None = None) -> list[dict]:
    """A selection against each method at the same budget, on the same pool.

    ``selected``: the selection's rows of ``pool`` (int indices). Each method in ``methods``
    (from :data:`METHODS`) and each ``extra`` one (``name -> fn(budget) -> rows``) picks
    ``len(selected)`` rows of ``pool``, knowing only ``target``. Every selection is scored
    against ``heldout`` (rows of the target's distribution that no method saw):

    * ``mmd``: squared MMD, RBF kernel of width ``bandwidth`` (default: the held-out rows'
      median squared distance; one width for every method);
    * ``knn_kl``: :func:`gio_core.knn_kl` (k=5, the held-out rows' intrinsic dimension; None
      with 5 rows or fewer);
    * ``share``/``recall``: with ``pool_domains`` and ``target_domains``;
    * ``accuracy``: with ``pool_labels`` and ``heldout_labels``, a logistic regression's
      (:func:`probe_accuracy`), or ``probe(train_x, train_y, test_x, test_y) -> accuracy``'s.

    Returns one dict per selection (``method``: ``selection`` first, then the others), with
    ``rows`` and ``wall_s`` (None for the given selection).

    Raises:
      ValueError: an empty selection, indices outside the pool, an unknown method.
    """
    from gio_core._estimators import intrinsic_dimension, knn_kl
    from gio_core._mmd import median_bandwidth, mmd_rbf
    pool = as_points("pool", pool)
    target = as_points("target", target)
    heldout = as_points("heldout", heldout)
    same_dim(pool=pool, target=target, heldout=heldout)
    selected = np.asarray(selected, np.int64).reshape(-1)
    if selected.size == 0:
        raise ValueError("the selection holds none of the pool's rows; nothing to compare.")
    if selected.min() < 0 or selected.max() >= pool.shape[0]:
        raise ValueError("selected holds indices outside the pool.")
    budget = int(np.unique(selected).size)
    fns = {name: _method(name, target, pool, seed) for name in methods}
    fns.update(extra or {})
    width = float(bandwidth) if bandwidth is not None else median_bandwidth(heldout)
    dim = intrinsic_dimension(heldout)

    def score(method: str, rows: np.ndarray, wall) -> dict:
        chosen = pool[rows]
        out = {"method": method, "rows": int(rows.size),
               "mmd": mmd_rbf(heldout, chosen, bandwidth=width),
               "knn_kl": (float(knn_kl(heldout, chosen, dim=dim)) if rows.size > 5 else None),
               "share": None, "recall": None, "accuracy": None, "wall_s": wall}
        if pool_domains is not None and target_domains is not None:
            out.update(domain_share(np.asarray(pool_domains)[rows], target_domains,
                                    pool_domains))
        if pool_labels is not None and heldout_labels is not None:
            labels = np.asarray(pool_labels)[rows]
            out["accuracy"] = (probe_accuracy(chosen, labels, heldout, heldout_labels, seed=seed)
                               if probe is None else float(probe(chosen, labels, heldout,
                                                                 heldout_labels)))
        return out

    results = [score("selection", np.unique(selected), None)]
    for name, fn in fns.items():
        t0 = time.perf_counter()
        rows = np.asarray(fn(budget), np.int64)
        results.append(score(name, rows, round(time.perf_counter() - t0, 3)))
    return results
