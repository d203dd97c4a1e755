"""Several targets (domains) for one selection.

A target whose points belong to named domains (code, math, dialogue...) can be matched two ways:

* :func:`select_shares`: each domain gets a share of the row budget (as DSIR's
  ``target_proportions`` gives each target a share) and GIO runs for it alone, on its share, over
  the pool points the domains before it left; every pick serves one domain.
* GIO's own choice: one :func:`gio_core.select` against all the target's points, then
  :func:`nearest_domain` credits each pick to the domain of the target point nearest to it.

Both are pure functions of their arrays: same inputs, same output.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from gio_core._selection import SelectionResult, select


class DomainSelection(NamedTuple):
    """What :func:`select_shares` chose.

    Attributes:
      indices: int array ``[picks]``, rows of ``pool`` in pick order, domain after domain.
      domains: the domain each pick serves (an object array of the domains as given).
      kl: float array ``[picks]``, after each pick the KL between its domain's target and the
        picks made for that domain so far.
      order: the domains in the order they chose: the largest share first (ties: by name).
      budgets: ``{domain: rows}``, the budget each domain's selection ran with: its share of
        ``max_rows`` (:func:`share_budgets`) less the rows the domain before it took past its
        own.
      results: ``{domain: SelectionResult}``, each domain's own result, its ``indices``
        already rows of ``pool``.
    """
    indices: np.ndarray
    domains: np.ndarray
    kl: np.ndarray
    order: list
    budgets: dict
    results: dict


def share_budgets(shares: dict, total: int) -> dict:
    """Splits ``total`` rows by ``shares`` (positive, summing to 1), the largest share first
    (ties: by name): each domain gets the rows between the rounded running sums of the shares
    before and with it, so the budgets add up to ``total`` exactly (a share too small for one
    row gets none)."""
    order = sorted(shares, key=lambda d: (-float(shares[d]), str(d)))
    out, running, below = {}, 0.0, 0
    for i, d in enumerate(order):
        running += float(shares[d])
        bound = total if i == len(order) - 1 else min(total, int(round(running * total)))
        out[d] = max(0, bound - below)
        below = max(below, bound)
    return out


def nearest_domain(points, target, target_domains, block: int = 4096) -> np.ndarray:
    """The domain of the target point nearest (squared Euclidean distance) to each of
    ``points`` (``[m, d]``); ``target_domains`` holds one domain per target point."""
    points = np.asarray(points, np.float64)
    target = np.asarray(target, np.float64)
    doms = np.asarray(target_domains, dtype=object)
    if len(doms) != len(target):
        raise ValueError(f"target_domains has {len(doms)} entries for {len(target)} target points")
    norms = np.einsum("ij,ij->i", target, target)
    nearest = np.empty(len(points), np.int64)
    for lo in range(0, len(points), block):
        part = points[lo:lo + block]
        dist = norms[None, :] - 2.0 * part @ target.T
        nearest[lo:lo + block] = np.argmin(dist, axis=1)
    return doms[nearest]


def select_shares(target, target_domains, pool, *, shares: dict, max_rows: int,
                  row_counts=None, target_weights=None, pool_weights=None,
                  callback: Callable[[int, int, float], None] | None = None,
                  **options) -> DomainSelection:
    """GIO for each domain on its share of a row budget.

    Domains choose one after another, the largest share first: each runs
    :func:`gio_core.select` against its own target points, over the pool points no domain
    before it chose, with a budget of its share of ``max_rows`` (:func:`share_budgets`). A
    domain's last pick may pass its budget (a pool point stands for ``row_counts`` rows); the
    rows past it are taken from the budgets of the domains after it (a domain whose budget they
    use up chooses nothing: ``stop_reason`` ``budget_spent``), so the domains together keep to
    ``max_rows`` but for the last pick. A domain that stops before its budget (a stop rule
    without ``fill``) leaves its rows unspent. Caps such as ``max_iter`` apply to each domain.

    Args:
      target: ``[n, d]`` target points; ``target_domains``: the domain of each.
      pool: ``[M, d]`` candidate points.
      shares: ``{domain: share}``, every domain of ``target_domains``, shares summing to 1.
      max_rows: the row budget the shares divide.
      row_counts, target_weights, pool_weights, options: as :func:`gio_core.select` takes them
        (``max_rows`` is each domain's budget).
      callback: ``(pick, pool_row, kl)`` after each pick, counting picks over all domains.

    Raises:
      ValueError: a share that is not positive, shares not summing to 1, a domain of the target
        without a share or a share without target points, a domain with no more than ``k``
        target points; :func:`gio_core.select`'s own errors.
    """
    pool = np.asarray(pool)
    target = np.asarray(target)
    doms = np.asarray(target_domains, dtype=object)
    if len(doms) != len(target):
        raise ValueError(f"target_domains has {len(doms)} entries for {len(target)} target points")
    if any(not float(v) > 0 for v in shares.values()):
        raise ValueError(f"every share must be > 0; got {shares}")
    if abs(sum(float(v) for v in shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"shares must sum to 1; got {shares}")
    held = set(doms.tolist())
    if held != set(shares):
        raise ValueError(f"shares name the domains {sorted(map(str, shares))}, the target holds "
                         f"{sorted(map(str, held))}")
    counts = (np.ones(len(pool), np.int64) if row_counts is None
              else np.asarray(row_counts, np.int64))
    tw = None if target_weights is None else np.asarray(target_weights)
    pw = None if pool_weights is None else np.asarray(pool_weights)
    budgets = share_budgets(shares, int(max_rows))
    order = list(budgets)
    available = np.ones(len(pool), bool)
    indices, labels, kls, results, ran = [], [], [], {}, {}
    spent, bound, done = 0, 0, 0
    for d in order:
        # The rows up to this domain's running bound, less what the domains before it took past
        # theirs (a shortfall, a domain stopping before its budget, is not handed on).
        below, bound = bound, bound + budgets[d]
        budget = bound - max(below, spent)
        rows = np.flatnonzero(available)
        mask = doms == d
        ran[d] = max(0, budget)
        if budget <= 0 or len(rows) == 0:
            results[d] = SelectionResult(np.zeros(0, np.int64), np.zeros(0), np.inf,
                                         "budget_spent" if budget <= 0 else "pool_exhausted",
                                         np.zeros(0, np.int64), np.zeros((0, pool.shape[1])), 0,
                                         float("nan"))
            continue

        def progress(pick, row, kl, base=done, rows=rows):
            if callback is not None:
                callback(base + pick, int(rows[row]), kl)

        res = select(target[mask], pool[rows], max_rows=budget, row_counts=counts[rows],
                     target_weights=None if tw is None else tw[mask],
                     pool_weights=None if pw is None else pw[rows], callback=progress,
                     **options)
        picked = rows[res.indices]
        available[picked] = False
        spent = max(spent, below) + int(counts[picked].sum())
        done += len(picked)
        results[d] = res._replace(indices=picked)
        indices.append(picked)
        labels += [d] * len(picked)
        kls.append(np.asarray(res.kl, np.float64))
    return DomainSelection(
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        np.asarray(labels, dtype=object), np.concatenate(kls) if kls else np.zeros(0),
        order, ran, results)
