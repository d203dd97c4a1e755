"""The evaluation baselines and metrics of ``gio_core.quality``, against brute-force versions."""
import numpy as np
import pytest

from gio_core.quality import (
    domain_share, k_center_greedy, nearest_round_robin, probe_accuracy, random_rows)


def brute_round_robin(target, pool, budget):
    d = ((target[:, None, :].astype(np.float64) - pool[None]) ** 2).sum(-1)
    taken, picks = set(), []
    while len(picks) < budget:
        for i in range(len(target)):
            row = next(j for j in np.lexsort((np.arange(len(pool)), d[i])) if j not in taken)
            taken.add(row)
            picks.append(row)
            if len(picks) == budget:
                break
    return np.array(picks)


def brute_k_center(target, pool, budget):
    pool64 = pool.astype(np.float64)
    picks = [int(np.argmin(((pool64 - target.mean(0)) ** 2).sum(1)))]
    while len(picks) < budget:
        d = ((pool64[:, None] - pool64[picks][None]) ** 2).sum(-1).min(1)
        picks.append(int(np.argmax(d)))
    return np.array(picks)


def test_round_robin_and_k_center_equal_brute_force(rng):
    pool = rng.normal(size=(300, 5)).astype(np.float32)
    target = (rng.normal(size=(7, 5)) + 0.5).astype(np.float32)
    # A budget deep enough that some targets run out of their first neighbour lists.
    for budget in (5, 40, 250):
        rr = nearest_round_robin(target, pool, budget)
        assert (rr == brute_round_robin(target, pool, budget)).all()
        assert len(set(rr)) == budget
    kc = k_center_greedy(target, pool, 30)
    assert (kc == brute_k_center(target, pool, 30)).all()


def test_random_rows_are_distinct_and_seeded():
    a = random_rows(100, 30, seed=1)
    assert len(set(a)) == 30 and a.max() < 100
    assert (random_rows(100, 30, seed=1) == a).all()
    assert not (random_rows(100, 30, seed=2) == a).all()
    with pytest.raises(ValueError, match="budget=101 is more than the pool's 100 rows"):
        random_rows(100, 101)


def test_domain_share_and_probe(rng):
    out = domain_share(np.array(["a", "b", "a", "c"]), ("a", "c"), np.array(list("aabccc")))
    assert out == {"share": 0.75, "recall": 3 / 5}
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    assert probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 0.9
    # One class only: predicts it.
    assert probe_accuracy(x[:10], np.zeros(10), x[100:], y[100:]) == pytest.approx(
        np.mean(y[100:] == 0))
