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


def test_compare_scores_every_method_at_the_selections_budget():
    from gio_core import intrinsic_dimension, knn_kl, mmd_rbf
    from gio_core.quality import compare
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 4, (4, 5))
    comp = rng.integers(0, 4, 400)
    pool = (centres[comp] + rng.normal(size=(400, 5))).astype(np.float32)
    target = (centres[rng.integers(0, 2, 60)] + rng.normal(size=(60, 5))).astype(np.float32)
    hcomp = rng.integers(0, 2, 80)
    held = (centres[hcomp] + rng.normal(size=(80, 5))).astype(np.float32)
    selected = np.flatnonzero(comp == 0)[:40]
    calls = []

    def first_rows(budget):
        calls.append(budget)
        return np.arange(budget)

    out = compare(pool, target, held, np.concatenate([selected, selected[:3]]),
                  pool_labels=comp, heldout_labels=hcomp, pool_domains=comp,
                  target_domains=[0, 1], bandwidth=7.0, extra={"first": first_rows})
    by = {r["method"]: r for r in out}
    assert [r["method"] for r in out] == ["selection", "gio_rows", "random", "k_center",
                                          "nn_round_robin", "first"]
    assert calls == [40] and {r["rows"] for r in out} == {40}      # duplicates counted once
    assert by["selection"]["mmd"] == pytest.approx(mmd_rbf(held, pool[selected], bandwidth=7.0))
    assert by["first"]["mmd"] == pytest.approx(mmd_rbf(held, pool[:40], bandwidth=7.0))
    dim = intrinsic_dimension(held)
    assert by["selection"]["knn_kl"] == pytest.approx(knn_kl(held, pool[selected], dim=dim))
    assert by["selection"]["share"] == 1.0
    assert by["selection"]["recall"] == pytest.approx(40 / np.isin(comp, [0, 1]).sum())
    # Trained on component 0 alone, the probe predicts 0 for every held-out row.
    assert by["selection"]["accuracy"] == pytest.approx(np.mean(hcomp == 0))
    assert by["selection"]["wall_s"] is None and by["gio_rows"]["wall_s"] >= 0
    # Methods that see the target pick from its two components; random and k-center do not.
    for method in ("gio_rows", "nn_round_robin"):
        assert by[method]["share"] > 0.9 and by[method]["mmd"] < by["random"]["mmd"]
    assert by["random"]["share"] < 0.8
    with pytest.raises(ValueError, match="holds none of the pool's rows"):
        compare(pool, target, held, [])
    with pytest.raises(ValueError, match="unknown method 'best'"):
        compare(pool, target, held, selected, ["best"])
