import numpy as np
import pytest

import gio_core
from gio_core import PoolFraction, UniformStart, averaged_kl, intrinsic_dimension, knn_kl, select
from tests.conftest import mixture


def total_variation(picked_components, target_components, weights):
    counts = np.bincount(picked_components, minlength=10) / len(picked_components)
    want = np.zeros(10)
    want[list(target_components)] = weights
    return 0.5 * np.abs(counts - want).sum()


def test_knn_covers_the_target_where_averaged_collapses(mix16):
    pool, comp, target, _, _ = mix16
    knn = select(target, pool)
    picked = comp[knn.indices]
    assert knn.stop_reason == "increase"
    assert len(knn.indices) >= 30
    assert np.isin(picked, [0, 1, 2]).mean() >= 0.95
    assert total_variation(picked, (0, 1, 2), (0.5, 0.3, 0.2)) < 0.15

    averaged = select(target, pool, estimator="averaged", stop_criterion="none",
                      max_iter=len(knn.indices))
    avg_picked = comp[averaged.indices]
    # The source's estimator ranks rows by their mean log-distance to the whole target:
    # it fills the component nearest the target's centre and ignores the proportions.
    assert total_variation(avg_picked, (0, 1, 2), (0.5, 0.3, 0.2)) > 0.3
    assert knn_kl(target, pool[knn.indices]) < knn_kl(target, pool[averaged.indices]) - 1.0


@pytest.mark.parametrize("estimator", ["knn", "averaged"])
@pytest.mark.parametrize("method", ["exact", "gradient"])
@pytest.mark.parametrize("dim", [None, "auto"])
def test_reported_kl_equals_the_estimator_on_the_selection(mix16, estimator, method, dim):
    pool, _, target, _, _ = mix16
    result = select(target, pool, estimator=estimator, method=method, stop_criterion="none",
                    max_iter=25, v_init="jump", init=UniformStart(-5, 5, 8, False), seed=3,
                    dim=dim)
    assert len(result.indices) == 25
    assert result.dim == (16.0 if dim is None else pytest.approx(intrinsic_dimension(target)))
    chosen = np.concatenate([result.init_points, pool[result.indices]])
    score = knn_kl if estimator == "knn" else averaged_kl
    assert result.kl[-1] == pytest.approx(score(target, chosen, dim=dim), abs=2e-3)
    assert result.kl_start == pytest.approx(score(target, result.init_points, dim=dim), abs=2e-3)


def test_exact_and_gradient_agree_on_separated_clusters(rng):
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    target = np.concatenate([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    distractors = rng.uniform(200, 300, (30, 2))
    pool = np.concatenate([distractors, centres])
    exact = select(target, pool, k=3, stop_criterion="none", max_iter=3)
    grad = select(target, pool, k=3, method="gradient", v_init="jump", stop_criterion="none",
                  max_iter=3, seed=1)
    assert set(exact.indices) == set(grad.indices) == {30, 31, 32}


def test_seeded_runs_repeat_and_seeds_matter(mix16):
    pool, _, target, _, _ = mix16
    kw = dict(method="gradient", v_init="jump", init=PoolFraction(0.01), max_iter=20,
              stop_criterion="none", random_restart_prob=0.3)
    a = select(target, pool, seed=7, **kw)
    b = select(target, pool, seed=7, **kw)
    c = select(target, pool, seed=8, **kw)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.init_rows, b.init_rows)
    assert not np.array_equal(a.init_rows, c.init_rows)


def test_pool_rows_of_the_start_set_are_not_picked(mix16):
    pool, _, target, _, _ = mix16
    result = select(target, pool, init=PoolFraction(0.05), stop_criterion="none", max_iter=50)
    assert len(result.init_rows) == 150
    assert not set(result.indices) & set(result.init_rows)
    assert len(set(result.indices)) == 50


def test_budget_and_data_size(mix16):
    pool, _, target, _, _ = mix16
    capped = select(target, pool, stop_criterion="none", max_iter=12)
    assert (len(capped.indices), capped.stop_reason) == (12, "max_iter")
    sized = select(target, pool, stop_criterion="data_size", max_data_size=0.005)
    assert (len(sized.indices), sized.stop_reason) == (15, "data_size")


def test_increase_rule_keeps_kl_decreasing_after_warm_up(mix16):
    pool, _, target, _, _ = mix16
    result = select(target, pool, k=5)
    assert result.stop_reason == "increase"
    assert np.all(np.diff(result.kl[4:]) <= 0)


def test_min_kl_stops_at_the_first_pick_below(mix16):
    pool, _, target, _, _ = mix16
    free = select(target, pool)
    threshold = float(np.median(free.kl[5:]))
    result = select(target, pool, stop_criterion="min_kl", min_kl=threshold)
    assert result.stop_reason == "min_kl"
    assert result.kl[-1] <= threshold and np.all(result.kl[5:-1] > threshold)


def test_min_difference_stops_on_small_gains(mix16):
    pool, _, target, _, _ = mix16
    result = select(target, pool, stop_criterion="min_difference", min_difference=0.02)
    assert result.stop_reason == "min_difference"
    assert np.all(-np.diff(result.kl[4:]) >= 0.02)
    free = select(target, pool)
    assert len(result.indices) < len(free.indices)


def test_sequential_increase_tolerance_fires_and_drops_the_rising_run(mix16):
    pool, _, target, _, _ = mix16
    plain = select(target, pool)
    tolerant = select(target, pool, stop_criterion="sequential_increase_tolerance",
                      max_sequential_increases=3)
    assert tolerant.stop_reason == "sequential_increase_tolerance"
    # With exact greedy picks every later pick also rises, so the run is dropped again.
    np.testing.assert_array_equal(tolerant.indices, plain.indices)


def test_resets_allow_duplicates_and_max_resets_fires(mix16):
    pool, _, target, _, _ = mix16
    result = select(target, pool, stop_criterion="max_resets", resets_allowed=True,
                    max_resets=2)
    plain = select(target, pool)
    assert result.stop_reason == "max_resets" and result.resets == 2
    assert len(result.indices) >= len(plain.indices)
    assert result.kl[-1] <= plain.kl[-1] + 1e-9


def test_using_up_the_pool_is_reported_as_such(rng):
    target = rng.normal(size=(30, 3)).astype(np.float32)
    pool = rng.normal(size=(12, 3)).astype(np.float32)
    result = select(target, pool, stop_criterion="none")
    assert (len(result.indices), result.stop_reason) == (12, "pool_exhausted")
    assert sorted(result.indices) == list(range(12))
    capped = select(target, pool, stop_criterion="none", max_iter=12)
    assert capped.stop_reason == "max_iter"


@pytest.mark.parametrize("rule,extra", [
    ("min_difference", dict(min_difference=0.02)),
    ("sequential_increase_tolerance", dict(max_sequential_increases=2)),
    ("increase", {}),
])
def test_resets_apply_to_every_rule_that_fires_when_the_kl_stops_falling(mix16, rule, extra):
    pool, _, target, _, _ = mix16
    plain = select(target, pool, stop_criterion=rule, **extra)
    reset = select(target, pool, stop_criterion=rule, resets_allowed=True, max_resets=2, **extra)
    assert plain.resets == 0 and reset.resets == 2
    assert reset.stop_reason == rule
    assert len(reset.indices) > len(plain.indices)
    # The picks before the first reset are the plain run's picks.
    np.testing.assert_array_equal(reset.indices[:len(plain.indices)], plain.indices)


@pytest.mark.parametrize("rule", ["min_kl", "data_size", "none"])
def test_resets_are_refused_where_they_could_never_act(mix16, rule):
    pool, _, target, _, _ = mix16
    with pytest.raises(ValueError, match=f"resets_allowed has no effect with stop_criterion='{rule}'"):
        select(target, pool, stop_criterion=rule, resets_allowed=True)


def test_target_weights_shift_the_selection(rng):
    pool, comp, target, tcomp, _ = mixture(rng, target_weights=(0.5, 0.5, 0.0),
                                           target_components=(0, 1, 2))
    weights = np.where(tcomp == 0, 3.0, 1.0)
    result = select(target, pool, target_weights=weights)
    share0 = np.mean(comp[result.indices] == 0) / np.mean(np.isin(comp[result.indices], [0, 1]))
    assert 0.62 < share0 < 0.88          # target mass 0.75 on component 0


def test_pool_weight_scale_does_not_change_picks(mix16):
    pool, _, target, _, _ = mix16
    w = np.random.default_rng(2).uniform(1, 10, len(pool))
    a = select(target, pool, pool_weights=w, max_iter=30)
    b = select(target, pool, pool_weights=5 * w, max_iter=30)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_callback_sees_every_pick(mix16):
    pool, _, target, _, _ = mix16
    seen = []
    result = select(target, pool, max_iter=10, stop_criterion="none",
                    callback=lambda n, row, kl: seen.append((n, row, kl)))
    assert [s[0] for s in seen] == list(range(1, 11))
    assert [s[1] for s in seen] == list(result.indices)


def test_a_permuted_pool_gives_the_same_picks_past_the_target_domain(rng, monkeypatch):
    """Picks beyond the pool's in-domain rows gain nothing under the kNN estimator (they are in
    no target point's neighbour list), so they tie; ties go to the row nearest the target in
    units of its own spacing, not to the first row. The same pool in another row order gives
    the same picks in the same order, and more of them come from the target's domain than
    when ties go by row index (the rule before, reproduced by a constant tie-break)."""
    d = 8
    centres = rng.normal(size=(6, d)) * 3
    comp = rng.integers(0, 6, 1500)
    pool = (centres[comp] + rng.normal(size=(1500, d))).astype(np.float32)
    target = (centres[0] + rng.normal(size=(120, d))).astype(np.float32)
    in_domain = int((comp == 0).sum())
    picks = in_domain + 60
    first = select(target, pool, stop_criterion="none", max_iter=picks)
    for order in (rng.permutation(len(pool)), np.arange(len(pool))[::-1]):
        again = select(target, pool[order], stop_criterion="none", max_iter=picks)
        np.testing.assert_array_equal(order[again.indices], first.indices)
        np.testing.assert_allclose(again.kl, first.kl, rtol=1e-5)
    from gio_core import _engines
    monkeypatch.setattr(_engines.KnnEngine, "closeness",
                        lambda self: np.zeros(self.pool_rows, np.float32))
    by_index = select(target, pool, stop_criterion="none", max_iter=picks)
    assert (comp[first.indices] == 0).sum() > (comp[by_index.indices] == 0).sum() + 5


def test_tied_rows_go_by_closeness_to_the_target_not_by_index(rng):
    """Two rows far outside the target, the farther first in the pool: once every target point's
    neighbour list is full neither changes the KL, and the nearer one is picked first."""
    target = rng.normal(size=(60, 2)).astype(np.float32)
    near = target[:40] + 0.05 * rng.normal(size=(40, 2)).astype(np.float32)
    far, less_far = np.array([[40.0, 0.0]], np.float32), np.array([[8.0, 0.0]], np.float32)
    pool = np.concatenate([far, near, less_far])
    result = select(target, pool, stop_criterion="none", max_iter=len(pool))
    order = result.indices.tolist()
    assert order.index(len(pool) - 1) < order.index(0)
    assert sorted(order[-2:]) == [0, len(pool) - 1]


def test_a_row_budget_stops_at_the_pick_that_reaches_it(rng):
    """max_rows with row_counts (cluster sizes): the last pick brings the rows to the budget or
    past it, the one before is still below; without row_counts each row counts one; the
    stopping rule still fires first when it comes before the budget."""
    pool = rng.normal(size=(300, 4)).astype(np.float32)
    target = rng.normal(size=(80, 4)).astype(np.float32)
    sizes = rng.integers(1, 50, 300)
    result = select(target, pool, stop_criterion="none", max_rows=500, row_counts=sizes)
    assert result.stop_reason == "max_rows"
    assert sizes[result.indices].sum() >= 500 > sizes[result.indices[:-1]].sum()
    assert len(select(target, pool, stop_criterion="none", max_rows=17).indices) == 17
    ruled = select(target, pool, max_rows=10 ** 6, row_counts=sizes)
    assert ruled.stop_reason == "increase"
    with pytest.raises(ValueError, match="row_counts must be 300 non-negative integers"):
        select(target, pool, max_rows=5, row_counts=np.ones(299, np.int64))
    with pytest.raises(ValueError, match="max_rows"):
        select(target, pool, max_rows=0)


def test_negative_consistency_far_pool_gets_no_picks(rng):
    target = rng.normal([3, 4], 0.7, (100, 2))
    far = rng.normal([300, 400], 0.7, (100, 2))
    for estimator in ("knn", "averaged"):
        result = select(target, far, estimator=estimator,
                        init=UniformStart(0, 8, 100, normalize=False), seed=0)
        assert len(result.indices) == 0 and result.stop_reason == "increase"


def bad_calls(rng):
    t = rng.normal(size=(20, 4))
    p = rng.normal(size=(50, 4))
    nan_pool = p.copy()
    nan_pool[7, 2] = np.nan
    return [
        (dict(target=t, pool=p, k=20), "k=20 is too large"),
        (dict(target=t, pool=p, k=0), "k must be a positive integer"),
        (dict(target=t, pool=rng.normal(size=(50, 3))), "dimension mismatch"),
        (dict(target=t, pool=nan_pool), "pool has 1 row(s) with NaN or inf values (first at row 7)"),
        (dict(target=t, pool=np.zeros((0, 4))), "pool is empty"),
        (dict(target=t[0], pool=p), "target must be 2-D"),
        (dict(target=t, pool=p, estimator="mean"), "estimator='mean' is not one of"),
        (dict(target=t, pool=p, init=PoolFraction(1.0)), "pool is exhausted"),
        (dict(target=t, pool=p, stop_criterion="max_resets"), "needs resets_allowed=True"),
        (dict(target=t, pool=p, pool_weights=np.ones(49)), "pool_weights must have shape (50,)"),
        (dict(target=t, pool=p, target_weights=-np.ones(20)), "strictly positive"),
        (dict(target=t, pool=p, init=rng.normal(size=(3, 5))), "dimension mismatch"),
        (dict(target=t, pool=p, lr=0), "lr must be > 0"),
        (dict(target=t, pool=p, discard_nearest_for_xy=True), "discard_nearest_for_xy applies"),
        (dict(target=t, pool=p, seed=-1), "seed must be >= 0"),
        (dict(target=t, pool=p, max_resets=-1), "max_resets must be >= 0"),
        (dict(target=t, pool=p, resets_allowed="yes"), "resets_allowed must be true or false"),
        (dict(target=t, pool=p, smoothing=0), "smoothing must be > 0"),
        (dict(target=t, pool=p, dim="ambient"), "dim must be None"),
        (dict(target=t, pool=p, grad_desc_iter=0), "grad_desc_iter must be >= 1"),
    ]


def test_bad_input_messages(rng):
    for kwargs, message in bad_calls(rng):
        with pytest.raises(ValueError) as err:
            select(**kwargs)
        assert message in str(err.value), (message, str(err.value))


def test_options_are_checked_by_one_validator_without_data():
    from gio_core import check_select_options
    for kwargs, message in bad_calls(np.random.default_rng(0)):
        options = {key: v for key, v in kwargs.items() if key not in ("target", "pool")}
        if set(options) & {"init", "pool_weights", "target_weights"} or not options or (
                options.get("k") == 20):
            continue                      # these depend on the data
        with pytest.raises(ValueError) as err:
            check_select_options(**options)
        assert message in str(err.value)
    check_select_options(k=3, stop_criterion="min_kl", min_kl=-1.0, dim="auto", seed=2 ** 40)


def test_public_api_is_exported():
    assert gio_core.select is select
    assert {"select", "knn_kl", "averaged_kl", "GIOKL"} <= set(gio_core.__all__)


@pytest.mark.parametrize("weighted,cache_bytes", [(True, 0), (False, 0), (False, 2 ** 30)])
def test_incremental_exact_scores_equal_full_rescoring(mix16, monkeypatch, weighted, cache_bytes):
    """The exact method rescores only the targets whose neighbour lists changed (in closed form
    for unit weights, from cached distances when they fit); rescoring everything after every
    pick must give the same picks and KL values."""
    from gio_core._engines import KnnEngine
    pool, _, target, _, _ = mix16
    weights = np.random.default_rng(4).uniform(1, 3, len(pool)) if weighted else None
    kw = dict(pool_weights=weights, stop_criterion="none", max_iter=40, block_size=1024,
              cache_bytes=cache_bytes)
    incremental = select(target, pool, **kw)
    accept = KnnEngine.accept
    monkeypatch.setattr(KnnEngine, "accept",
                        lambda self, state, row: accept(self, state, row)._replace(gains=None))
    full = select(target, pool, **kw)
    np.testing.assert_array_equal(incremental.indices, full.indices)
    np.testing.assert_allclose(incremental.kl, full.kl, atol=1e-4)


@pytest.mark.parametrize("cache_bytes", [0, 2 ** 30, 40_000])
def test_weighted_closed_form_equals_inserting_into_each_list(mix16, monkeypatch, cache_bytes):
    """Weighted rows (the pipeline's cluster sizes): once the lists are full, the gains come
    from the closed form over the lists' cumulative weights (cached distances, recomputed ones,
    or some blocks of each); inserting each candidate into every list and rescoring it gives the
    same picks and KL values. Weights from 1 to 300, as cluster sizes spread."""
    from gio_core import _engines
    pool, _, target, _, _ = mix16
    rng = np.random.default_rng(5)
    kw = dict(pool_weights=rng.integers(1, 300, len(pool)).astype(float),
              target_weights=rng.integers(1, 20, len(target)).astype(float),
              stop_criterion="none", max_iter=60, block_size=128, cache_bytes=cache_bytes)
    closed = select(target, pool, **kw)
    init = _engines.KnnEngine.__init__
    engines = []

    def general(self, *args, **options):
        init(self, *args, **dict(options, closed_form=False))
        engines.append(self)
    monkeypatch.setattr(_engines.KnnEngine, "__init__", general)
    reference = select(target, pool, **kw)
    assert engines and not engines[0].closed_form
    np.testing.assert_array_equal(closed.indices, reference.indices)
    np.testing.assert_allclose(closed.kl, reference.kl, atol=1e-4)
    assert len(set(closed.indices.tolist())) == 60


@pytest.mark.parametrize("weighted", [False, True])
def test_without_the_cache_the_rows_inside_each_radius_give_the_same_picks(mix16, monkeypatch,
                                                                           weighted):
    """When the [n, M] distances do not fit in ``cache_bytes``, a changed target is rescored on
    the pool rows inside its neighbour radius (kept within the budget, 8 bytes a row) instead
    of the whole pool: the picks and KL values equal those with the whole cache, the kept rows
    stay within the budget, and most rescoring goes through them."""
    from gio_core import _engines
    pool, _, target, _, _ = mix16
    rng = np.random.default_rng(6)
    kw = dict(pool_weights=rng.integers(1, 300, len(pool)).astype(float) if weighted else None,
              stop_criterion="none", max_iter=80)
    cached = select(target, pool, cache_bytes=2 ** 30, **kw)
    engines, calls = [], {"rows": 0, "dense": 0}
    init, rows_delta, dense_delta = (_engines.KnnEngine.__init__, _engines.KnnEngine._rows_delta,
                                     _engines.KnnEngine._dense_delta)

    def keep(self, *args, **options):
        init(self, *args, **options)
        engines.append(self)

    def count_rows(self, state, new, changed, ranks):
        calls["rows"] += len(changed)
        return rows_delta(self, state, new, changed, ranks)

    def count_dense(self, targets, *args):
        calls["dense"] += len(targets)
        return dense_delta(self, targets, *args)
    monkeypatch.setattr(_engines.KnnEngine, "__init__", keep)
    monkeypatch.setattr(_engines.KnnEngine, "_rows_delta", count_rows)
    monkeypatch.setattr(_engines.KnnEngine, "_dense_delta", count_dense)
    monkeypatch.setattr(_engines, "PAIR_CHUNK", 1500)        # several slices of pairs a pick
    budget = 200_000
    rows = select(target, pool, cache_bytes=budget, **kw)
    engine = engines[-1]
    assert engine.cached_blocks == 0 and engine._cache is None
    np.testing.assert_array_equal(rows.indices, cached.indices)
    np.testing.assert_allclose(rows.kl, cached.kl, atol=1e-4)
    kept = sum(len(r[0]) for r in engine._rows.values())
    assert 0 < kept == engine._row_count <= budget // 8
    assert calls["rows"] > 2 * calls["dense"] > 0


@pytest.mark.parametrize("method", ["exact", "gradient"])
def test_more_picks_do_not_retrace(mix16, method):
    """Shapes are fixed: a longer selection on the same arrays compiles nothing new."""
    from gio_core import _engines
    pool, _, target, _, _ = mix16
    kw = dict(method=method, stop_criterion="none", v_init="jump")
    select(target, pool, max_iter=12, **kw)
    jitted = [_engines._knn_gradient_step, _engines._knn_gain_kernel,
              _engines._knn_gain_delta_kernel, _engines._insert_point,
              _engines._fast_gain_kernel_cached, _engines._fast_delta_kernel_cached]
    before = [f._cache_size() for f in jitted]
    select(target, pool, max_iter=60, **kw)
    assert [f._cache_size() for f in jitted] == before


def test_candidate_clusters_take_the_chosen_then_those_nearest_the_target():
    """The chosen clusters first (in pick order, once each), then the nearest to any target
    centroid until the rows are reached; ties go to the lower index."""
    from gio_core import candidate_clusters
    pool_c = np.array([[0.0], [10.0], [3.0], [-3.0], [20.0], [5.0]])
    target_c = np.array([[0.0], [21.0]])
    sizes = np.array([5, 5, 5, 5, 5, 5])
    assert candidate_clusters(pool_c, target_c, sizes, [1, 1], 5).tolist() == [1]
    # 1 chosen; then 0 (distance 0), 4 (1), 2 and 3 (9 each: 2 first), 5 (16), 1 is taken
    assert candidate_clusters(pool_c, target_c, sizes, [1], 21).tolist() == [1, 0, 4, 2, 3]
    assert candidate_clusters(pool_c, target_c, sizes, [], 100).tolist() == [0, 4, 2, 3, 5, 1]
    with pytest.raises(ValueError, match="5 sizes for 6 pool centroids"):
        candidate_clusters(pool_c, target_c, sizes[:5], [], 10)


def test_proportional_size_counts_pool_rows_in_each_target_rows_ball():
    """On a line, with one neighbour: each target row's ball reaches the next target row
    (radius 1); 6 pool rows lie within 1 of 0 and of 1, 2 within 1 of 10 and of 11, 10 far
    off. The estimates n_target * count / 1 are 24, 24, 8, 8; the size is their lower
    (1 - share) quantile, the far rows count nowhere."""
    from gio_core import proportional_size
    target = np.array([[0.0], [1.0], [10.0], [11.0]])
    pool = np.array([[0.2], [0.4], [0.6], [0.8], [0.5], [0.5], [10.5], [10.5]] + [[100.0]] * 10)
    assert proportional_size(target, pool, neighbours=1, share=0.5) == 16
    assert proportional_size(target, pool, neighbours=1, share=0.75) == 8
    assert proportional_size(target, pool, neighbours=1, share=1.0) == 8
    assert proportional_size(target, pool[:7], neighbours=1, share=0.5) == 7   # at most the pool
    # pool rows on the balls' edges (copies of the target rows) count, whatever the blocks
    rng = np.random.default_rng(3)
    t = rng.normal(size=(50, 7)).astype(np.float32)
    p = np.concatenate([t, rng.normal(size=(200, 7)).astype(np.float32)])
    sizes = {proportional_size(t, p, share=0.5, block=b) for b in (1, 7, 64, 4096)}
    assert len(sizes) == 1, sizes
    for bad, match in ((dict(target=target[:1]), "at least 2 target rows"),
                       (dict(share=0.0), "share must be a number in"),
                       (dict(share=True), "share must be a number in"),
                       (dict(neighbours=0), "neighbours must be an integer"),
                       (dict(block=0), "block must be an integer"),
                       (dict(pool=np.zeros((3, 2))), "dimension")):
        with pytest.raises(ValueError, match=match):
            proportional_size(**{"target": target, "pool": pool, **bad})


def test_proportional_size_finds_the_largest_subset_in_the_targets_proportions(rng):
    """A target of three pool components in proportions 0.5 / 0.3 / 0.2: the largest pool
    subset in those proportions is limited by the first component, n_0 / 0.5 rows. The
    estimate lands within 20% of it, whatever the pool rows' order and the block size."""
    from gio_core import proportional_size
    pool, comp, target, _, _ = mixture(rng, components=8, pool_rows=4000, target_rows=300)
    exact = (comp == 0).sum() / 0.5
    size = proportional_size(target, pool)
    assert abs(size - exact) <= 0.2 * exact, (size, exact)
    order = rng.permutation(len(pool))
    assert proportional_size(target, pool[order], block=333) == size
    assert proportional_size(target[:40], pool) < len(pool) / 2    # few target rows: still sized


def test_row_regions_cut_at_the_median_row_and_keep_enough_target_rows():
    """Clusters on a line: the first plane falls between the halves of the rows (6.5), the
    target rows go to their side of it; a cut that would leave a side fewer than min_target
    target rows is not made; regions are numbered depth first, the lower side first, and the
    target rows' order does not change their regions."""
    from gio_core import row_regions
    centroids = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    sizes = np.full(8, 10)
    target = np.array([[0.5], [1.0], [2.0], [12.0], [12.5], [7.0], [6.0]])
    two = row_regions(centroids, sizes, target, cap=40, min_target=3)
    assert two.cluster_region.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert two.target_region.tolist() == [0, 0, 0, 1, 1, 1, 0] and two.rows.tolist() == [40, 40]
    assert row_regions(centroids, sizes, target, cap=40, min_target=4).rows.tolist() == [80]
    four = row_regions(centroids, sizes, target, cap=20, min_target=1)
    assert four.cluster_region.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert four.target_region.tolist() == [0, 0, 1, 3, 3, 2, 1]
    flipped = row_regions(centroids, sizes, target[::-1], cap=20, min_target=1)
    assert flipped.target_region[::-1].tolist() == four.target_region.tolist()
    # one cluster over the cap stays one region (the caller deals its rows into parts)
    assert row_regions(centroids[:1], [500], target, cap=20, min_target=1).rows.tolist() == [500]
    with pytest.raises(ValueError, match="same d"):
        row_regions(centroids, sizes, np.zeros((3, 2)), cap=20, min_target=1)


def test_share_out_is_proportional_capped_and_exact():
    """Largest remainders to the lower index; what a full part cannot take goes to the others
    by weight; weightless parts only when the weighted ones are full; never more than the
    caps."""
    from gio_core import share_out
    assert share_out(10, [1, 1, 2], [100, 1, 100]).tolist() == [3, 1, 6]
    assert share_out(3, [1, 1, 1], [9, 9, 9]).tolist() == [1, 1, 1]
    assert share_out(5, [1, 1, 1], [9, 9, 9]).tolist() == [2, 2, 1]
    assert share_out(10, [1, 1, 0], [2, 100, 100]).tolist() == [2, 8, 0]
    assert share_out(10, [0, 1, 0], [5, 3, 5]).tolist() == [4, 3, 3]
    assert share_out(50, [1, 2], [3, 4]).tolist() == [3, 4]
    with pytest.raises(ValueError, match="one non-negative value per part"):
        share_out(3, [1, -1], [2, 2])
