"""gio_core.domains: each domain's share of a row budget, and the domain a pick serves."""
import numpy as np
import pytest

import gio_core


def mixture(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    pool = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres])
    blob = np.repeat([0, 1, 2], 200)
    target = np.concatenate([centres[0] + rng.normal(size=(50, 2)),
                             centres[1] + rng.normal(size=(50, 2))])
    domains = np.array(["a"] * 50 + ["b"] * 50, dtype=object)
    return pool, blob, target, domains


def test_budgets_add_up_and_follow_the_shares():
    assert gio_core.share_budgets({"a": 0.7, "b": 0.3}, 1000) == {"a": 700, "b": 300}
    thirds = gio_core.share_budgets({"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}, 100)
    assert sum(thirds.values()) == 100 and sorted(thirds.values()) == [33, 33, 34]
    assert list(gio_core.share_budgets({"small": 0.1, "big": 0.9}, 10)) == ["big", "small"]


@pytest.mark.parametrize("shares", [{"a": 0.8, "b": 0.2}, {"a": 0.3, "b": 0.7}])
def test_each_domain_gets_its_share_from_its_own_blob(shares):
    pool, blob, target, domains = mixture()
    counts = np.full(len(pool), 5)
    got = gio_core.select_shares(target, domains, pool, shares=shares, max_rows=400,
                                 row_counts=counts, stop_criterion="mmd", fill="mmd")
    assert len(set(got.indices.tolist())) == len(got.indices)       # no pool point twice
    for name, want_blob in (("a", 0), ("b", 1)):
        mine = got.indices[got.domains == name]
        rows = counts[mine].sum()
        assert abs(rows - shares[name] * 400) <= 5                   # one point's rows
        assert np.all(blob[mine] == want_blob)
    assert got.order == sorted(shares, key=lambda d: -shares[d])
    assert len(got.kl) == len(got.indices)


def test_nearest_domain_and_bad_shares():
    pool, blob, target, domains = mixture()
    credited = gio_core.nearest_domain(pool, target, domains)
    assert np.all(credited[blob == 0] == "a") and np.all(credited[blob == 1] == "b")
    with pytest.raises(ValueError, match="shares must sum to 1"):
        gio_core.select_shares(target, domains, pool, shares={"a": 0.5, "b": 0.4}, max_rows=10)
    with pytest.raises(ValueError, match="the target holds"):
        gio_core.select_shares(target, domains, pool, shares={"a": 1.0}, max_rows=10)


def test_rows_past_a_budget_come_off_the_domains_after_it():
    """Points of 8 rows and budgets of 5, 3 and 2 rows: the first domain's one point spends the
    second's budget too, so the second chooses nothing, and the third gets its own."""
    pool, blob, target, domains3 = mixture()
    doms = np.array(["a"] * 50 + ["b"] * 25 + ["c"] * 25, dtype=object)
    got = gio_core.select_shares(target, doms, pool, shares={"a": 0.5, "b": 0.3, "c": 0.2},
                                 max_rows=10, row_counts=np.full(len(pool), 8),
                                 stop_criterion="none")
    assert got.budgets == {"a": 5, "b": 0, "c": 2}
    assert got.results["b"].stop_reason == "budget_spent"
    assert [len(got.results[d].indices) for d in "abc"] == [1, 0, 1]
    assert gio_core.share_budgets({"big": 0.98, "x": 0.01, "y": 0.01}, 10) == {
        "big": 10, "x": 0, "y": 0}
