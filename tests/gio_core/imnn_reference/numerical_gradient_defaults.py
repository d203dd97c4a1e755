"""Our stand-in for the reference's ``test.numerical_gradient_defaults``: derivatives by
finite differences, ``[2, n_params, *input_shape]`` per simulation (see ``defaults.py``)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from test.defaults import simulator
from test.gradient_defaults import gradientTests

STEP = jnp.array([0.1, 0.1])
FIDUCIAL = jnp.array([0., 1.])


def get_numerical_derivative(key, θ=FIDUCIAL, δθ=STEP):
    """The seed's simulation with each parameter moved by -δθ/2 (index 0) and +δθ/2 (1)."""
    def moved(sign, i):
        return simulator(key, tuple(θ[j] + sign * δθ[j] / 2. if j == i else θ[j]
                                    for j in range(2)))
    return jnp.stack([jnp.stack([moved(sign, i) for i in range(2)])
                      for sign in (-1., 1.)])


_, _, _data_key, _, _ = jax.random.split(jax.random.PRNGKey(0), num=5)
_training, _validation = (jax.random.split(k, num=1000)
                          for k in jax.random.split(_data_key))
_simulate = jax.vmap(partial(simulator, θ=jnp.array([0., 1.])))
_differences = jax.vmap(get_numerical_derivative)

fiducial, numerical_derivative = _simulate(_training), _differences(_training)
validation_fiducial = _simulate(_validation)
validation_numerical_derivative = _differences(_validation)


class numericalGradientTests(gradientTests):  # noqa: N801 - the reference's name
    def __init__(self, δθ=STEP, fiducial=fiducial, derivative=numerical_derivative,
                 validation_fiducial=validation_fiducial,
                 validation_derivative=validation_numerical_derivative, **kwargs):
        super().__init__(fiducial=fiducial, derivative=derivative,
                         validation_fiducial=validation_fiducial,
                         validation_derivative=validation_derivative, **kwargs)
        self.δθ = δθ
        self.kwargs["δθ"] = δθ
        self.reduced_kwargs["δθ"] = δθ
        self.arrays = ["θ_fid", "δθ", "fiducial", "derivative", "validation_fiducial",
                       "validation_derivative"]
