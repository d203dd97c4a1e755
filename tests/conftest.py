import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def mixture(rng, components=10, dim=16, pool_rows=3000, target_rows=500,
            target_components=(0, 1, 2), target_weights=(0.5, 0.3, 0.2), spread=5.0):
    """Pool from ``components`` Gaussians; target from a few of them with unequal weights."""
    centres = rng.normal(0, spread, (components, dim))
    comp = rng.integers(0, components, pool_rows)
    pool = centres[comp] + rng.normal(0, 1, (pool_rows, dim))
    tcomp = rng.choice(target_components, p=target_weights, size=target_rows)
    target = centres[tcomp] + rng.normal(0, 1, (target_rows, dim))
    return pool.astype(np.float32), comp, target.astype(np.float32), tcomp, centres


@pytest.fixture
def mix16(rng):
    return mixture(rng)
