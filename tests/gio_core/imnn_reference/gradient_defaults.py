"""Our stand-in for the reference's ``test.gradient_defaults``: simulations with their
derivatives by forward-mode differentiation, in memory (see ``defaults.py``)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from test.defaults import defaultTests, simulator_gradient

_, _, _data_key, _, _ = jax.random.split(jax.random.PRNGKey(0), num=5)
_training, _validation = jax.random.split(_data_key)
_at_fiducial = jax.vmap(partial(simulator_gradient, θ=jnp.array([0., 1.])))

fiducial, derivative = _at_fiducial(jax.random.split(_training, num=1000))
validation_fiducial, validation_derivative = _at_fiducial(
    jax.random.split(_validation, num=1000))

VALIDATION = ("validation_fiducial", "validation_derivative")


class gradientTests(defaultTests):  # noqa: N801 - the reference's name
    def __init__(self, fiducial=fiducial, derivative=derivative,
                 validation_fiducial=validation_fiducial,
                 validation_derivative=validation_derivative, **kwargs):
        super().__init__(**kwargs)
        self.fiducial, self.derivative = fiducial, derivative
        self.validation_fiducial = validation_fiducial
        self.validation_derivative = validation_derivative
        self.reduced_derivative = derivative[:self.reduced_n_d]
        self.reduced_validation_derivative = validation_derivative[:self.reduced_n_d]
        self.kwargs.update(fiducial=fiducial, derivative=derivative,
                           validation_fiducial=validation_fiducial,
                           validation_derivative=validation_derivative)
        self.reduced_kwargs.update(
            fiducial=fiducial, derivative=self.reduced_derivative,
            validation_fiducial=validation_fiducial,
            validation_derivative=self.reduced_validation_derivative)
        self.arrays = ["θ_fid", "fiducial", "derivative", *VALIDATION]

    def preload(self, dictionary, state=False, validate=False):
        dictionary = super().preload(dictionary, state=state)
        if not validate:
            for name in VALIDATION:
                dictionary.pop(name)
        return dictionary

    def specific_exceptions(self, variable, input_variable, kwargs):
        # A validation set left out is not tried.
        return variable in VALIDATION and variable not in kwargs
