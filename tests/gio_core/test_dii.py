"""gio_core.dii against the DADApy tutorial's numbers, and its own guarantees."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gio_core import dii as dii_mod
from gio_core.dii import DiffImbalance, diff_imbalance, rank_matrix, rank_rows

TRUTH = np.array([10, 3, 1, 30, 7.3])


@pytest.fixture(scope="module")
def tutorial():
    """The tutorial's data: 500 standard-normal points in 5-D, B = A scaled per feature."""
    np.random.seed(0)
    data_a = np.random.normal(loc=0, scale=1.0, size=(500, 5))
    return data_a, TRUTH[None, :] * data_a


def rescaled(weights):
    return np.abs(weights) / (np.max(np.abs(weights)) / np.max(TRUTH))


def test_tutorial_full_batch_sgd(tutorial):
    dii = DiffImbalance(*tutorial, seed=0, num_epochs=500, batches_per_epoch=1, l1_strength=0.0,
                        point_adapt_lambda=True, k_init=1, k_final=1, params_init=None,
                        optimizer_name="sgd", learning_rate=1e-2, learning_rate_decay=None)
    weights, imbs = dii.train(progress=False)
    assert weights.shape == (501, 5) and imbs.shape == (501,)
    assert np.allclose(weights[0], 0.1)
    assert np.allclose(rescaled(weights[-1]), [9.99, 2.95, 0.89, 30, 7.31], atol=0.3)
    assert imbs[-1] < imbs[0] / 10 and np.all(np.isfinite(imbs))
    # Full batch, no row sampling: the final DII is the last training value (as in DADApy).
    imb, err = dii.return_final_dii(compute_error=False, ratio_rows_columns=None)
    assert err is None and imb == pytest.approx(
        float(diff_imbalance(jnp.asarray(weights[-1], jnp.float32),
                             jnp.asarray(tutorial[0], jnp.float32),
                             jnp.asarray(tutorial[0], jnp.float32),
                             rank_matrix(jnp.asarray(tutorial[1], jnp.float32),
                                         jnp.asarray(tutorial[1], jnp.float32)), 1)), rel=1e-5)


def test_tutorial_mini_batches_adam_cos(tutorial, monkeypatch):
    dii = DiffImbalance(*tutorial, seed=0, num_epochs=500, batches_per_epoch=5, k_init=5,
                        k_final=5, optimizer_name="adam", learning_rate=1e-2,
                        learning_rate_decay="cos")
    weights, imbs = dii.train(progress=False)
    assert np.allclose(rescaled(weights[-1]), [10.04, 2.86, 0.57, 30, 7.3], atol=0.5)
    assert imbs[-50:].mean() < imbs[0] / 5
    imb, _ = dii.return_final_dii(compute_error=False, ratio_rows_columns=None, seed=0)
    assert imb < 0.02                       # the tutorial shows 0.011225 (we get 0.011226)
    imb_e, err = dii.return_final_dii(compute_error=True, ratio_rows_columns=1, seed=0)
    assert 0 < err < imb_e < 0.05
    # The same value computed a few rows at a time.
    monkeypatch.setattr(dii_mod, "BLOCK_ELEMENTS", 250 * 5 * 7)
    assert dii.return_final_dii(compute_error=True, ratio_rows_columns=1, seed=0) == \
        pytest.approx((imb_e, err), rel=1e-5)


def test_blocked_rows_equal_the_whole_matrix():
    """The blocked computation (rows in blocks, recomputed in the backward pass) gives the same
    DII and gradient as the whole matrix, for both lambda schemes, periodic features, and rows
    that are a sample of the columns."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(90, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(90, 3)), jnp.float32)
    rows = a[:37]
    ranks = rank_matrix(b[:37], b)
    np.testing.assert_array_equal(rank_matrix(b[:37], b, block_rows=5), ranks)
    params = jnp.asarray([0.3, 1.0, 0.2, 0.7])
    periods = jnp.asarray([0.0, 2.5, 0.0, 0.0])
    for point_adaptive in (True, False):
        def f(p, block, point_adaptive=point_adaptive):
            return diff_imbalance(p, rows, a, ranks, 3, point_adaptive=point_adaptive,
                                  periods=periods, block_rows=block)
        whole, g_whole = jax.value_and_grad(f)(params, None)
        for block in (8, 36):
            part, g_part = jax.value_and_grad(f)(params, block)
            np.testing.assert_allclose(part, whole, rtol=1e-5)
            np.testing.assert_allclose(g_part, g_whole, rtol=1e-4, atol=1e-7)


def test_blocked_training_matches_unblocked(tutorial, monkeypatch):
    """Training with the row blocks forced small gives the same weights."""
    a, b = tutorial[0][:200], tutorial[1][:200]
    plain = DiffImbalance(a, b, num_epochs=60).train(progress=False)[0][-1]
    monkeypatch.setattr(dii_mod, "BLOCK_ELEMENTS", 200 * 5 * 16)      # 16 rows per block
    blocked = DiffImbalance(a, b, num_epochs=60)
    assert blocked._static().block_rows == 16
    np.testing.assert_allclose(blocked.train(progress=False)[0][-1], plain, rtol=2e-4)


def test_one_compiled_epoch_per_configuration(tutorial):
    a, b = tutorial[0][:100], tutorial[1][:100]
    before = dii_mod._epoch._cache_size()
    for seed in range(3):
        DiffImbalance(a, b, num_epochs=20, batches_per_epoch=2, seed=seed,
                      params_init=np.full(5, 0.1 + seed)).train(progress=False)
    assert dii_mod._epoch._cache_size() == before + 1


def test_forward_greedy_finds_the_informative_features_first():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 8))
    b = np.stack([4 * a[:, 2], a[:, 6]], axis=1)          # only features 2 and 6 inform B
    dii = DiffImbalance(a, b, num_epochs=60, learning_rate=5e-2)
    sets, diis, errors, weights = dii.forward_greedy_feature_selection(n_features_max=3, n_best=3)
    assert sets[0] == [2] and sets[1] == [2, 6] and len(sets) == 3
    assert diis[1] < diis[0] and errors == [None, None, None]
    assert weights[1][2] > weights[1][6] > 0 and np.count_nonzero(weights[1]) == 2
    dii.train(progress=False)
    back_sets, back_diis, _, _ = dii.backward_greedy_feature_selection(n_features_min=2,
                                                                        n_best=2)
    assert back_diis[-1] <= back_diis[0] + 0.02
    assert back_sets[0] == list(range(8)) and back_sets[-1] == [2, 6]


def test_l1_removes_useless_features():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(150, 4))
    b = a[:, :2] * [3, 1]
    weights, _ = DiffImbalance(a, b, num_epochs=150, l1_strength=0.5, learning_rate=5e-2) \
        .train(progress=False)
    assert np.all(weights[-1][2:] == 0) and np.all(weights[-1][:2] > 0)


def test_distances_b_equal_features_b(tutorial):
    a, b = tutorial[0][:120], tutorial[1][:120]
    dist = np.sqrt(((b[:, None] - b[None]) ** 2).sum(-1))
    w_feat = DiffImbalance(a, b, num_epochs=40).train(progress=False)[0]
    w_dist = DiffImbalance(a, None, distances_B=dist, num_epochs=40).train(progress=False)[0]
    np.testing.assert_allclose(w_feat, w_dist, rtol=1e-4)


def test_periodic_feature_learnt():
    """A is an angle (period 2 pi) plus noise; B is the point on the circle: only the
    periodic distance makes the angle informative."""
    rng = np.random.default_rng(5)
    angle = rng.uniform(0, 2 * np.pi, 300)
    a = np.stack([angle, rng.normal(size=300)], axis=1)
    b = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    periodic = DiffImbalance(a, b, periods_A=[2 * np.pi, 0], num_epochs=80, learning_rate=5e-2)
    w = periodic.train(progress=False)[0][-1]
    assert w[0] > 5 * w[1]
    imb_p = periodic.return_final_dii(compute_error=False, ratio_rows_columns=None)[0]
    plain = DiffImbalance(a, b, num_epochs=80, learning_rate=5e-2)
    plain.train(progress=False)
    assert imb_p < plain.return_final_dii(compute_error=False, ratio_rows_columns=None)[0]


def test_row_sampling_and_global_lambda(tutorial):
    dii = DiffImbalance(*tutorial, num_epochs=150, num_points_rows=200, point_adapt_lambda=False,
                        k_init=10, k_final=1, optimizer_name="adamw", learning_rate_decay="exp",
                        learning_rate=5e-2)
    assert dii.ranks_B.shape == (200, 500)
    weights, imbs = dii.train(progress=False)
    order = np.argsort(weights[-1])
    assert list(order[-2:]) == [0, 3] and imbs[-1] < imbs[0]


def test_progress_bar_silent_when_asked(tutorial, capsys):
    DiffImbalance(tutorial[0][:50], tutorial[1][:50], num_epochs=3).train(progress=False)
    assert capsys.readouterr().err == ""
    DiffImbalance(tutorial[0][:50], tutorial[1][:50], num_epochs=3).train(bar_label="x")
    assert "Training (x)" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,message", [
    (dict(data_B=np.ones((9, 2))), "data_A has 10 points and data_B 9"),
    (dict(k_init=5, batches_per_epoch=2), "k_init=5 needs more than 5 points per mini-batch"),
    (dict(batches_per_epoch=3), "batches_per_epoch (3) must divide the 10 rows"),
    (dict(data_A=np.full((10, 3), np.nan)), "data_A has 10 row(s) with NaN or inf"),
    (dict(periods_A=[1.0, 0, 0, 2.0]), "periods_A must be one period or one per feature (3)"),
    (dict(optimizer_name="rmsprop"), "optimizer_name must be one of sgd, adam, adamw"),
    (dict(learning_rate_decay="linear"), "learning_rate_decay must be None, 'cos' or 'exp'"),
    (dict(k_init=1, k_final=2), "k_init (1) must be >= k_final (2)"),
    (dict(params_init=[1.0, 2.0]), "params_init must hold 3 weights"),
    (dict(num_points_rows=10), "num_points_rows (10) must be smaller than the number of points"),
    (dict(params_groups=[1, 1]), "params_groups adds up to 2 features, but data_A has 3"),
    (dict(distances_B=np.ones((10, 9)), data_B=None), "distances_B must be [10, 10]"),
])
def test_bad_input_names_the_argument(kwargs, message):
    rng = np.random.default_rng(0)
    args = dict(data_A=rng.normal(size=(10, 3)), data_B=rng.normal(size=(10, 2)))
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        DiffImbalance(**args)
    assert message in str(err.value)


def test_average_ties_share_their_mean_rank():
    values = jnp.asarray([[0.0, 1.0, 1.0, 2.0], [3.0, 3.0, 3.0, 0.0]])
    np.testing.assert_array_equal(rank_rows(values, "average"), [[0, 1.5, 1.5, 3], [2, 2, 2, 0]])
    np.testing.assert_array_equal(rank_rows(values, "first"), [[0, 1, 2, 3], [1, 2, 3, 0]])
    distinct = jnp.asarray(np.random.default_rng(0).normal(size=(6, 9)))
    np.testing.assert_array_equal(rank_rows(distinct, "average"), rank_rows(distinct, "first"))


def test_labels_with_average_ties_do_not_depend_on_the_point_order():
    """Labels as B (one-hot: ties everywhere): with rank_ties='average' the learnt weights are
    the same for the points in any order; the label follows feature 1 only."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(120, 4))
    labels = (a[:, 1] > 0).astype(int) + (a[:, 1] > 1)
    b = np.eye(3)[labels]
    perm = rng.permutation(120)
    got, ranks = [], []
    for order in (np.arange(120), perm):
        dii = DiffImbalance(a[order], b[order], num_epochs=40, learning_rate=0.01,
                            rank_ties="average")
        ranks.append(np.asarray(dii.ranks_B))
        got.append(dii.train(progress=False)[0][-1])
    # The ranks of the permuted points are the permuted ranks, exactly.
    np.testing.assert_array_equal(ranks[1], ranks[0][perm][:, perm])
    np.testing.assert_allclose(got[0], got[1], rtol=1e-4, atol=1e-6)
    assert np.argmax(got[0]) == 1
    with pytest.raises(ValueError, match="rank_ties must be"):
        DiffImbalance(a, b, rank_ties="dense")
