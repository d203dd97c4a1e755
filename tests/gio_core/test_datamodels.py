"""gio_core.datamodels: the lasso against scikit-learn, the path, the functional core."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso

from gio_core import datamodels as dm


def planted(rng, models=300, examples=120, targets=4, active=12, noise=1.0):
    """Masks of random halves; each target's output a sparse linear function plus noise."""
    masks = rng.random((models, examples)) < 0.5
    truth = np.zeros((examples, targets))
    for t in range(targets):
        idx = rng.choice(examples, active, replace=False)
        truth[idx, t] = rng.normal(0, 1, active)
    outputs = masks @ truth + rng.normal(0, noise, (models, targets))
    return masks, outputs, truth


def standardized(masks):
    stats = dm.standardization(masks)
    return (masks - stats.mean) / np.where(stats.scale > 0, stats.scale, 1.0), stats


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("shape", [(300, 120), (100, 400)], ids=["gram", "data"])
def test_lasso_is_sklearns_lasso_on_standardised_masks(rng, shape):
    """Same objective as sklearn's Lasso on standardised masks: cosine of the weight vectors
    >= 0.999 over a range of lambdas, weights returned on the masks' own scale."""
    masks, outputs, _ = planted(rng, *shape)
    x_std, stats = standardized(masks)
    lam_max = np.abs(x_std.T @ (outputs - outputs.mean(0))).max() / len(masks)
    for lam in lam_max * np.array([0.5, 0.1, 0.02, 0.005]):
        fit = dm.lasso(masks, outputs, lam, tol=1e-6, max_iter=50_000)
        assert fit.converged.all() and (fit.gap <= 1e-6).all()
        for t in range(outputs.shape[1]):
            ref = Lasso(alpha=lam, tol=1e-10, max_iter=200_000).fit(x_std, outputs[:, t])
            ours_std = fit.weight[t] * stats.scale         # back to the standardised scale
            assert cosine(ours_std, ref.coef_) >= 0.999, (lam, t)
            np.testing.assert_allclose(masks @ fit.weight[t] + fit.bias[t],
                                       ref.predict(x_std), atol=2e-3 * np.abs(outputs).max())


def test_modes_agree_and_chunks_do_not_change_a_target(rng):
    masks, outputs, _ = planted(rng, 200, 150, targets=5)
    lam = np.linspace(0.02, 0.1, 5)
    gram = dm.lasso(masks, outputs, lam, mode="gram", tol=1e-6, max_iter=50_000)
    data = dm.lasso(masks, outputs, lam, mode="data", tol=1e-6, max_iter=50_000)
    single = dm.lasso(masks, outputs, lam, mode="gram", tol=1e-6, max_iter=50_000,
                      target_chunk=2, batch_size=64)
    np.testing.assert_allclose(data.weight, gram.weight, atol=2e-4)
    np.testing.assert_allclose(single.weight, gram.weight, atol=2e-4)
    np.testing.assert_allclose(single.bias, gram.bias, atol=2e-4)


def test_fista_solve_is_pure_and_jittable():
    """With an identity Hessian the lasso's solution is the soft threshold of c."""
    c = jnp.array([[0.5, -0.2], [-0.05, 0.3], [0.0, -1.0]], jnp.float32)
    lam = jnp.array([0.1, 0.25], jnp.float32)
    yy = jnp.array([1.0, 2.0], jnp.float32)
    solve = jax.jit(lambda c, lam: dm.fista_solve(lambda w: w, c, yy, lam, jnp.zeros_like(c),
                                                  1.0, 1e-7, max_iter=100, check_every=5))
    state = solve(c, lam)
    expected = np.sign(c) * np.maximum(np.abs(c) - lam[None, :], 0)
    np.testing.assert_allclose(state.w, expected, atol=1e-6)
    assert bool(state.done.all())
    frozen = dm.fista_solve(lambda w: w, c, yy, lam, jnp.ones_like(c), 1.0, 1e-7, max_iter=100,
                            check_every=5, frozen=jnp.array([True, False]))
    np.testing.assert_allclose(frozen.w[:, 0], 1.0)           # left as it was
    np.testing.assert_allclose(frozen.w[:, 1], expected[:, 1], atol=1e-6)


def test_path_chooses_the_lambda_of_least_validation_error_and_refits(rng):
    masks, outputs, truth = planted(rng, 500, 80, targets=3, active=6, noise=0.3)
    train, val, test = slice(0, 300), slice(300, 400), slice(400, 500)
    path = dm.lasso_path(masks[train], outputs[train], val_masks=masks[val],
                         val_outputs=outputs[val], k=40, eps=1e-3, tol=1e-6, refit=False)
    for t in range(3):
        grid = path.lambdas[t]
        np.testing.assert_allclose(grid[0], path.lam_max[t])
        np.testing.assert_allclose(grid[1:] / grid[:-1], (1e-3) ** (1 / 39), rtol=1e-6)
        tried = path.val_mse[t, :path.steps[t]]
        assert np.isfinite(tried).all() and np.isnan(path.val_mse[t, path.steps[t]:]).all()
        assert path.val_mse[t, path.best[t]] == tried.min()
        assert path.lam[t] == grid[path.best[t]]
        assert path.nonzeros[t, 0] == 0                       # lam_max: all zero
        # the fast_l1 rule: the path ran past the best until the validation error rose
        assert path.steps[t] < 40 and path.steps[t] >= 10
        assert tried[path.steps[t] - 1] > tried[path.steps[t] - 2]
    mse, r = dm.evaluate(masks[test], outputs[test], path.weight, path.bias)
    assert (r > 0.85).all(), r
    # the planted examples of any size are among the nonzero weights, with the right sign
    for t in range(3):
        big = np.flatnonzero(np.abs(truth[:, t]) > 0.3)
        assert (np.sign(path.weight[t, big]) == np.sign(truth[big, t])).all(), t
    refit = dm.lasso_path(masks[train], outputs[train], val_masks=masks[val],
                          val_outputs=outputs[val], k=40, eps=1e-3, tol=1e-6, refit=True)
    both = np.r_[np.arange(0, 400)]
    again = dm.lasso(masks[both], outputs[both], refit.lam, tol=1e-6)
    np.testing.assert_allclose(refit.weight, again.weight, atol=1e-4)
    np.testing.assert_allclose(refit.lam, path.lam)


def test_patience_none_runs_the_whole_path_and_no_validation_takes_the_last(rng):
    masks, outputs, _ = planted(rng, 200, 50, targets=2)
    full = dm.lasso_path(masks[:150], outputs[:150], val_masks=masks[150:],
                         val_outputs=outputs[150:], k=12, patience=None)
    assert (full.steps == 12).all()
    bare = dm.lasso_path(masks, outputs, k=12)
    assert (bare.best == 11).all() and np.isnan(bare.val_mse).all() and np.isnan(bare.val_r).all()
    np.testing.assert_allclose(bare.lam, bare.lam_max * 1e-3, rtol=1e-6)


def test_constant_columns_and_constant_outputs_give_zero_weights(rng):
    masks = rng.random((60, 10)) < 0.5
    masks[:, 3] = True                       # in every mask: no information
    masks[:, 7] = False                      # in none
    outputs = np.c_[masks[:, 0] * 2.0 + rng.normal(0, 0.1, 60), np.full(60, 4.0)]
    fit = dm.lasso(masks, outputs, 0.01)
    assert np.isfinite(fit.weight).all()
    assert fit.weight[:, 3].tolist() == [0, 0] and fit.weight[:, 7].tolist() == [0, 0]
    assert (fit.weight[1] == 0).all() and fit.bias[1] == pytest.approx(4.0)
    path = dm.lasso_path(masks[:40], outputs[:40], val_masks=masks[40:], val_outputs=outputs[40:],
                         k=5)
    assert np.isfinite(path.weight).all() and path.lam_max[1] == 0


def test_predict_evaluate_and_positive_influence():
    masks = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], bool)
    weight = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    bias = np.array([0.5, -1.0])
    np.testing.assert_allclose(dm.predict(masks, weight, bias),
                               [[2.0, -2.0], [-1.0, 1.0], [-0.5, 2.0]])
    mse, r = dm.evaluate(masks, dm.predict(masks, weight, bias), weight, bias)
    np.testing.assert_allclose(mse, 0.0)
    np.testing.assert_allclose(r, 1.0)
    np.testing.assert_allclose(dm.positive_influence(weight), [1.0, 3.0, 0.5])


@pytest.mark.parametrize("call,says", [
    (lambda m, y: dm.lasso(m, y[:-1], 0.1), "models (as the masks)"),
    (lambda m, y: dm.lasso(m, np.where(np.arange(len(y))[:, None] == 3, np.nan, y), 0.1),
     "NaN or inf (model row 3"),
    (lambda m, y: dm.lasso(m, y, -1.0), "lam must be a number >= 0"),
    (lambda m, y: dm.lasso(m[:, :0], y, 0.1), "at least one of each"),
    (lambda m, y: dm.lasso(m, y, 0.1, mode="fast"), "mode must be one of"),
    (lambda m, y: dm.lasso_path(m, y, eps=2.0), "eps must be a number in (0.0, 1.0]"),
    (lambda m, y: dm.lasso_path(m, y, val_masks=m), "together, or neither"),
    (lambda m, y: dm.lasso_path(m, y, val_masks=m[:, :5], val_outputs=y), "same examples"),
    (lambda m, y: dm.lasso_path(m, y, k=0), "k must be an integer >= 1"),
])
def test_bad_input_is_named(rng, call, says):
    masks, outputs, _ = planted(rng, 40, 10, targets=2, active=3)
    with pytest.raises(ValueError, match=None) as info:
        call(masks, outputs)
    assert says in str(info.value)


def test_without_a_bias_it_is_sklearns_lasso_without_an_intercept(rng):
    """use_bias=False (fast_l1's use_bias=0): no intercept in the standardised masks' space,
    sklearn's Lasso(fit_intercept=False) on them; outputs with a large mean show it."""
    masks, outputs, _ = planted(rng, 300, 120, targets=3)
    outputs = outputs + 5.0
    x_std, stats = standardized(masks)
    lam = 0.05 * np.abs(x_std.T @ outputs).max() / len(masks)
    fit = dm.lasso(masks, outputs, lam, tol=1e-7, max_iter=50_000, use_bias=False)
    assert fit.converged.all()
    np.testing.assert_allclose(fit.bias, -fit.weight @ stats.mean, atol=1e-9)
    for t in range(outputs.shape[1]):
        ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-10, max_iter=200_000).fit(
            x_std, outputs[:, t])
        assert cosine(fit.weight[t] * stats.scale, ref.coef_) >= 0.999
        np.testing.assert_allclose(masks @ fit.weight[t] + fit.bias[t], ref.predict(x_std),
                                   atol=2e-3 * np.abs(outputs).max())
    with_bias = dm.lasso(masks, outputs, lam, tol=1e-7, max_iter=50_000)
    assert np.abs(with_bias.bias + with_bias.weight @ stats.mean - outputs.mean(0)).max() < 1e-6
    # the standardised masks are centred, so the weights are the same solve; only the intercept
    # differs (and the stopping rule does not loosen with the outputs' mean of 5)
    np.testing.assert_array_equal(fit.weight, with_bias.weight)
    assert (fit.gap == with_bias.gap).all()


def test_the_path_can_start_where_fast_l1_starts_it(rng):
    """lam_max_from='raw': fast_l1's calc_max_lambda, max |Xᵀ(y - ȳ)| / n over the masks as
    they are; the grid runs from there down to eps times it; the path and refit still run
    (with use_bias=False too)."""
    masks, outputs, _ = planted(rng, 240, 80, targets=3)
    train, val = slice(0, 200), slice(200, 240)
    centred = outputs[train] - outputs[train].mean(0)
    raw = np.abs(masks[train].astype(float).T @ centred).max(0) / 200
    x_std, _ = standardized(masks[train])
    standard = np.abs(x_std.T @ centred).max(0) / 200
    path = dm.lasso_path(masks[train], outputs[train], val_masks=masks[val],
                         val_outputs=outputs[val], k=12, eps=1e-2, lam_max_from="raw")
    np.testing.assert_allclose(path.lam_max, raw, rtol=1e-5)
    assert (path.lam_max < standard).all()                 # each term times a std <= 0.5
    np.testing.assert_allclose(path.lambdas[:, -1], 1e-2 * raw, rtol=1e-5)
    assert (path.nonzeros[:, 0] > 0).all()                  # some weights from the start
    plain = dm.lasso_path(masks[train], outputs[train], val_masks=masks[val],
                          val_outputs=outputs[val], k=12, eps=1e-2)
    np.testing.assert_allclose(plain.lam_max, standard, rtol=1e-5)
    assert (plain.nonzeros[:, 0] == 0).all()
    no_bias = dm.lasso_path(masks[train], outputs[train] + 3.0, val_masks=masks[val],
                            val_outputs=outputs[val] + 3.0, k=12, eps=1e-2, use_bias=False,
                            lam_max_from="raw")
    assert np.isfinite(no_bias.weight).all() and no_bias.converged.all()
    with pytest.raises(ValueError, match="lam_max_from must be one of standardized, raw"):
        dm.lasso_path(masks[train], outputs[train], lam_max_from="scaled")
