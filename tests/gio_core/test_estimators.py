import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gio_core import averaged_kl, intrinsic_dimension, knn_kl
from gio_core._estimators import averaged_kl_reference, insert_sorted, list_score
from tests.conftest import mixture


def numpy_source_estimator(x, y, k, eps=1e-8):
    """The GIO source's estimator written out independently in float64 NumPy."""
    n, d = x.shape
    m = y.shape[0]
    dxx = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 1e-10))
    rho = np.sort(dxx, axis=1)[:, k]                  # k-th neighbour after self
    dxy = np.sqrt(np.maximum(((x[:, None] - y[None]) ** 2).sum(-1), 1e-10))
    const = np.mean(np.log(k * m / (np.arange(1, m + 1) * (n - 1))))
    return np.mean(d * np.log(dxy + eps) - d * np.log(rho + eps)[:, None]) + const


def numpy_wkv(x, y, k):
    """Rank-averaged Wang-Kulkarni-Verdu estimator, unit weights, float64 NumPy."""
    n, d = x.shape
    m = y.shape[0]
    ranks = min(k, m)
    dxx = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(dxx, np.inf)
    rho = np.sort(dxx, axis=1)[:, :ranks]
    nu = np.sort(np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)), axis=1)[:, :ranks]
    return d * np.mean(np.log(nu) - np.log(rho)) + np.log(m / (n - 1))


def test_averaged_matches_independent_numpy(rng):
    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(25, 3)) + 0.5
    expected = numpy_source_estimator(x, y, k=5)
    assert float(averaged_kl_reference(x, y, k=5)) == pytest.approx(expected, abs=2e-4)
    assert averaged_kl(x, y, k=5) == pytest.approx(expected, abs=2e-4)


def test_averaged_reference_is_jittable_and_finite(rng):
    x = jnp.asarray(rng.normal(size=(30, 4)), jnp.float32)
    value = jax.jit(averaged_kl_reference, static_argnums=(2,))(x, x[:10] + 0.1, 5)
    assert np.isfinite(float(value))


@pytest.mark.parametrize("m", [1, 3, 5, 40])
def test_knn_matches_independent_numpy(rng, m):
    x = rng.normal(size=(60, 3))
    y = rng.normal(size=(m, 3))
    assert knn_kl(x, y, k=5) == pytest.approx(numpy_wkv(x, y, 5), abs=2e-4)


def test_knn_estimator_scores_fresh_sample_low_and_collapsed_set_high(rng):
    pool, comp, target, tcomp, centres = mixture(rng, target_rows=600)
    fresh = (centres[rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2], size=600)]
             + rng.normal(0, 1, (600, 16))).astype(np.float32)
    collapsed = target.mean(axis=0) + 0.1 * rng.normal(size=(600, 16)).astype(np.float32)
    assert abs(knn_kl(target, fresh)) < 0.2
    assert knn_kl(target, collapsed) > 2.0
    # The source's estimator prefers the collapsed set: the flaw that knn fixes.
    assert averaged_kl(target, collapsed) < averaged_kl(target, fresh)


def test_knn_weights_are_scale_free_and_unit_weights_change_nothing(rng):
    x = rng.normal(size=(50, 4))
    y = rng.normal(size=(20, 4))
    w = rng.uniform(1, 5, size=20)
    assert knn_kl(x, y, selected_weights=np.ones(20)) == pytest.approx(knn_kl(x, y), abs=1e-5)
    assert knn_kl(x, y, selected_weights=w) == pytest.approx(
        knn_kl(x, y, selected_weights=7 * w), abs=1e-4)
    assert knn_kl(x, y, selected_weights=w) != pytest.approx(knn_kl(x, y), abs=1e-3)


def test_insert_sorted_matches_sorting(rng):
    lists = np.sort(rng.normal(size=(6, 4)), axis=1).astype(np.float32)
    weights = rng.uniform(1, 2, size=(6, 4)).astype(np.float32)
    new = rng.normal(size=6).astype(np.float32)
    out_ld, out_w = jax.jit(insert_sorted)(lists, weights, new, jnp.float32(9.0))
    for i in range(6):
        merged = sorted(list(zip(lists[i], weights[i], strict=True)) + [(new[i], 9.0)])[:4]
        np.testing.assert_allclose(out_ld[i], [v for v, _ in merged])
        np.testing.assert_allclose(out_w[i], [w for _, w in merged])


def test_list_score_uses_cumulative_weights():
    ld = jnp.asarray([[0.0, 1.0, 2.0]])
    w = jnp.asarray([[1.0, 2.0, 3.0]])
    # ranks 2, dim 3: mean(3*0 - log 1, 3*1 - log 3)
    assert float(list_score(ld, w, 2, 3)[0]) == pytest.approx((0 - 0 + 3 - np.log(3)) / 2)


def test_intrinsic_dimension_of_a_subspace(rng):
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]          # a 3-D subspace of R^40
    points = rng.normal(size=(800, 3)) @ basis.T
    assert 2.4 < intrinsic_dimension(points) < 3.6
    assert 12 < intrinsic_dimension(rng.normal(size=(800, 16))) <= 16


def test_knn_with_intrinsic_dim_scores_a_fresh_sample_near_zero(rng):
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]
    target = rng.normal(size=(500, 3)) @ basis.T
    fresh = rng.normal(size=(500, 3)) @ basis.T
    shifted = (rng.normal(size=(500, 3)) + [1.5, 0, 0]) @ basis.T
    auto = knn_kl(target, fresh, dim="auto")
    assert abs(auto) < 0.15
    assert knn_kl(target, shifted, dim="auto") > auto + 0.5
    assert knn_kl(target, fresh, dim=3) == pytest.approx(auto, abs=0.1)
    with pytest.raises(ValueError, match="dim must be"):
        knn_kl(target, fresh, dim="intrinsic")


@pytest.mark.parametrize("estimator", [knn_kl, averaged_kl])
def test_estimators_refuse_bad_input(rng, estimator):
    x = rng.normal(size=(20, 3))
    nan_target = x.copy()
    nan_target[5, 1] = np.nan
    cases = [
        (dict(target=x, selected=np.zeros((0, 3))), "selected is empty"),
        (dict(target=x, selected=x[:4], k=20), "k=20 is too large"),
        (dict(target=x, selected=x[:4, :2]), "dimension mismatch"),
        (dict(target=x, selected=x[:4], selected_weights=np.ones(3)),
         "selected_weights must have shape (4,)"),
        (dict(target=nan_target, selected=x[:4]), "target has 1 row(s) with NaN or inf"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            estimator(**kwargs)
        assert message in str(err.value), (message, str(err.value))
