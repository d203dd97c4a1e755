"""Near copies through clusters (gio_core.copies) against all pairs."""
import numpy as np
import pytest

from gio_core.copies import all_pairs_copies, copy_index, duplicates, near_copies, probe
from gio_core.kmeans import lloyd, normalise, seed_centres


def _planted(distance: str, seed: int = 0):
    """A target of 1,500 rows around 20 modes, a pool of 12,000 with 100 exact copies and 100
    near copies (noise at 2% of a row's length) of target rows planted at random places."""
    rng = np.random.default_rng(seed)
    d = 48
    modes = rng.normal(size=(20, d))
    target = (modes[rng.integers(0, 20, 1500)] + 0.6 * rng.normal(size=(1500, d))).astype(
        np.float32)
    pool = (modes[rng.integers(0, 20, 12_000)] + 0.6 * rng.normal(size=(12_000, d))).astype(
        np.float32)
    at = rng.choice(len(pool), 200, replace=False)
    of = rng.choice(len(target), 200)
    pool[at[:100]] = target[of[:100]]
    noise = rng.normal(size=(100, d)).astype(np.float32)
    noise *= 0.02 * np.linalg.norm(target[of[100:]], axis=1, keepdims=True) / np.linalg.norm(
        noise, axis=1, keepdims=True)
    pool[at[100:]] = target[of[100:]] + noise
    refs = normalise(target) if distance == "cosine" else target
    fit = lloyd(refs, seed_centres(refs, 60, 3, distance), 25, 1e-4, distance)
    return target, pool, at, of, copy_index(refs, fit.centres, distance)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_every_planted_copy_is_found_with_the_row_it_copies(distance):
    target, pool, at, of, index = _planted(distance)
    got = near_copies(index, pool, 0.99, probes=3)
    found = dict(zip(got.rows.tolist(), got.refs.tolist(), strict=True))
    assert set(at.tolist()) <= set(found)
    # an exact copy points at the row it copies (or at an identical one)
    for row, ref in zip(at[:100], of[:100], strict=True):
        assert np.array_equal(target[found[row]], target[ref])
    exact = np.isin(got.rows, at[:100])
    assert np.all(got.cosine[exact] >= 1 - 1e-5)
    # the same answer as all pairs, on a sliver of the comparisons
    oracle = all_pairs_copies(target, pool, 0.99)
    assert got.rows.tolist() == oracle.rows.tolist()
    assert got.compared < 0.1 * oracle.compared


def test_exact_copies_need_no_more_than_the_nearest_clusters():
    target, pool, at, of, index = _planted("euclidean", seed=1)
    got = near_copies(index, pool[at[:100]], 1.0, probes=2)
    assert got.rows.tolist() == list(range(100))


def test_a_threshold_below_the_noise_finds_more_and_probes_widen_the_search():
    target, pool, at, _, index = _planted("euclidean", seed=2)
    one = near_copies(index, pool, 0.99, probes=1)
    three = near_copies(index, pool, 0.99, probes=3)
    assert three.compared > 2 * one.compared
    loose = near_copies(index, pool, 0.5, probes=3)
    assert len(loose.rows) > len(three.rows) >= 200


def test_probe_orders_the_nearest_centres_first():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(30, 8)).astype(np.float32)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    near = probe(x, centres, 4)
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    assert np.array_equal(near, np.argsort(d2, axis=1, kind="stable")[:, :4])
    assert probe(x, centres, 99).shape == (50, 30)


def test_no_rows_no_copies():
    _, _, _, _, index = _planted("euclidean")
    got = near_copies(index, np.zeros((0, 48), np.float32), 0.9)
    assert len(got.rows) == 0 and got.compared == 0


def _greedy(x, threshold):
    """The rule written out one row at a time: kept unless at ``threshold`` with a kept row."""
    u = normalise(x)
    kept, out = [], {}
    for i in range(len(u)):
        if kept:
            s = u[kept] @ u[i]
            j = int(np.argmax(s))
            if s[j] >= threshold - 1e-5:
                out[i] = kept[j]
                continue
        kept.append(i)
    return out


@pytest.mark.parametrize("block", [50, 1024])
def test_duplicates_keep_the_first_of_each_and_point_at_it(block):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1200, 16)).astype(np.float32)
    x[700] = x[3]                                   # an exact copy, after its original
    x[900] = 3 * x[3]                               # the same direction, longer
    x[1100] = x[40] + 0.001 * rng.normal(size=16).astype(np.float32)
    x[20] = x[1000]                                 # a copy before its original: the later goes
    got = duplicates(x, 0.99, block=block)
    assert dict(zip(got.rows.tolist(), got.refs.tolist(), strict=True)) == _greedy(x, 0.99)
    assert {700: 3, 900: 3, 1100: 40, 1000: 20}.items() <= dict(
        zip(got.rows.tolist(), got.refs.tolist(), strict=True)).items()
    assert got.compared < 1200 * 1199 // 2 + 1
