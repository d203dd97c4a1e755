import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from gio_core import GIOKL
from tests.gio_core.test_estimators import numpy_source_estimator


def quick_start_data():
    """The source README's 2-D quick-start, with its global-seed calls, then its uniform start."""
    def sample(seed):
        np.random.seed(seed)
        x, y = np.random.multivariate_normal([3, 4], [[0.5, 0], [0, 0.5]], 100).T
        return jnp.array([[x[i], y[i]] for i in range(len(x))])
    target = sample(1)
    pool = sample(5)
    start = np.random.uniform(low=0, high=8, size=(100, 2))
    return pool, target, start


def test_quick_start_reproduces_the_source():
    pool, target, start = quick_start_data()
    gio = GIOKL(uniform_low=0, uniform_high=8, uniform_start_size=100, dim=2)
    W, kl_divs, extras = gio.fit(pool, target, D=jnp.asarray(start), normalize=False)
    picked = np.asarray(W[100:])
    np.testing.assert_allclose(np.asarray(W[:100]), start, rtol=1e-6)
    assert len(np.unique(picked, axis=0)) == len(picked) == 96
    assert kl_divs[-1] == pytest.approx(1.4236, abs=1e-3)
    # 96 picks plus the rejected 97th candidate leave the pool, as in the source.
    assert extras[5].shape == (3, 2)


def test_quick_start_draws_the_same_uniform_start_from_numpy_global_state():
    pool, target, start = quick_start_data()
    np.random.seed(5)
    np.random.multivariate_normal([3, 4], [[0.5, 0], [0, 0.5]], 100)
    gio = GIOKL(uniform_low=0, uniform_high=8, uniform_start_size=100, dim=2)
    W, _, _ = gio.fit(pool, target, normalize=False, max_iter=0)
    np.testing.assert_allclose(np.asarray(W[:100]), start, rtol=1e-6)
    assert gio.random_init


def test_max_iter_adds_one_more_point_as_the_source_does():
    pool, target, start = quick_start_data()
    gio = GIOKL(0, 8, 100, 2)
    W, kl_divs, _ = gio.fit(pool, target, D=start, max_iter=10, stop_criterion="min_kl",
                            min_kl=-1e9)
    assert W.shape == (111, 2) and len(kl_divs) == 11


def test_negative_consistency_far_pool_gets_no_picks():
    _, target, start = quick_start_data()
    far = np.random.default_rng(0).normal([300, 400], 0.7, (100, 2))
    W, kl_divs, _ = GIOKL(0, 8, 100, 2).fit(far, target, D=start, normalize=False)
    assert W.shape == (100, 2) and kl_divs == []


def test_statistical_distance_is_the_source_formula(rng):
    x = rng.normal(size=(30, 3))
    y = rng.normal(size=(12, 3))
    value = GIOKL(dim=3).calculate_statistical_distance(x, y, k=4)
    assert float(value) == pytest.approx(numpy_source_estimator(x, y, 4), abs=2e-4)


def test_seed_makes_fit_repeatable_without_touching_global_state(rng):
    pool = rng.normal(size=(200, 8))
    target = rng.normal(size=(60, 8)) + 0.3
    state = np.random.get_state()
    runs = [GIOKL(dim=8, seed=11).fit(pool, target, v_init="jump", max_iter=15,
                                      random_restart_prob=0.5)[0] for _ in range(2)]
    np.testing.assert_array_equal(np.asarray(runs[0]), np.asarray(runs[1]))
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_random_init_pct_and_discard_nearest_run(rng):
    pool = rng.normal(size=(120, 3))
    target = pool[:50] + 0.01
    W, kl_divs, _ = GIOKL(dim=3, seed=0).fit(pool, target, random_init_pct=0.1, max_iter=5,
                                             discard_nearest_for_xy=True, min_kl=-1e9,
                                             stop_criterion="min_kl")
    assert W.shape == (12 + 6, 3) and np.all(np.isfinite(kl_divs))


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=200), "too large"),
    (dict(stop_criterion="never"), "stop_criterion='never'"),
    (dict(D=np.zeros((5, 4))), "dimension mismatch"),
])
def test_fit_rejects_bad_input(rng, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GIOKL(dim=3).fit(rng.normal(size=(50, 3)), rng.normal(size=(40, 3)), **kwargs)


def test_gio_core_never_imports_spark():
    code = ("import gio_core, sys; g = gio_core.GIOKL(dim=2); "
            "g.calculate_statistical_distance([[0.,0.],[1.,1.],[2.,0.]], [[0.,1.]], k=1); "
            "sys.exit(1 if any(m.startswith('pyspark') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_source_readme_pattern_and_gradient_descend(rng):
    """``GIOKL.GIOKL(...)``, as the source's README writes it after ``from GIO import GIOKL``,
    builds the class; ``gradient_descend`` moves ``v`` down the KL from the target to ``W + v``
    (``tests/gio_core/test_gio_vs_source.py`` checks both against the source itself)."""
    gio = GIOKL.GIOKL(dim=3, seed=0)
    assert isinstance(gio, GIOKL)
    target = rng.normal(size=(60, 3))
    selected = rng.normal(size=(12, 3)) + 3.0
    start = selected.mean(axis=0)

    def kl(v):
        return float(gio.calculate_statistical_distance(
            target, np.concatenate([selected, np.asarray(v)[None, :]]), k=4))
    moved = gio.gradient_descend(target, selected, start, 1.0, 40, lr=0.05, k=4)
    assert moved.shape == (3,) and kl(moved) < kl(start) - 1e-3
    with pytest.raises(ValueError, match="v must be one point of 3 dimensions"):
        gio.gradient_descend(target, selected, start[:2], 1.0, 5)
