"""Our stand-in for the helpers that imnn 0.3.2's test files import as ``test.defaults``.

The reference publishes its test files (``imnn/imnn/*_test.py`` in its sdist) but not the
helpers they call (``test/defaults.py`` and the rest live only in its repository). These
helpers are written here, from what the reference's tests check: the same fixtures (the same
keys, network, optimiser, simulator and simulations), the same calls on the class under test,
and the same expectations: which inputs each constructor and ``fit`` refuse, with which
exception type; that the Fisher statistics and estimates of one configuration are the same
bit for bit however the fit is driven; that ``plot`` writes its file.

One thing is ours: a refusal with the right exception type whose message says it in other
words than the reference's is recorded (``WORDING``), not failed. ``conftest.py`` reports
such a test as an expected failure that names the message, so the wording differences are
counted and listed while a wrong exception type, or no exception, still fails.
"""
from __future__ import annotations

import copy
import datetime
import inspect
import pathlib
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as onp
import pytest
from jax.example_libraries import optimizers, stax

from gio_core.imnn import value_and_jacfwd

# (pattern the reference's message matches, our message), per test; conftest.py reads it.
WORDING: list[tuple[str, str]] = []

rng = jax.random.PRNGKey(0)
rng, model_key, data_key, fit_key, stats_key = jax.random.split(rng, num=5)


def _network(width: int, outputs: int, layers: int):
    hidden = []
    for _ in range(layers):
        hidden += [stax.Dense(width), stax.LeakyRelu]
    return stax.serial(*hidden, stax.Dense(outputs))


model = _network(128, 3, 3)
bad_model = stax.serial(stax.Dense(5))
optimiser = optimizers.adam(step_size=1e-3)
_, initial_w = model[0](model_key, (10,))
state = optimiser[0](initial_w)
FIDUCIAL = jnp.array([0., 1.])


def simulator(rng, θ):
    """Ten draws of a Gaussian with mean θ[0] and variance θ[1]."""
    return θ[0] + jnp.sqrt(θ[1]) * jax.random.normal(rng, shape=(10,))


def simulator_gradient(rng, θ):
    return value_and_jacfwd(simulator, argnums=1)(rng, θ)


def is_array(value) -> bool:
    return isinstance(value, (jax.Array, onp.ndarray))


def names_agree(pattern: str, message: str) -> bool:
    """Whether ``message`` names one of the arguments the reference's message names (the
    words it writes in backticks), so that a refusal in other words is a refusal of the same
    argument and not one for another reason."""
    quoted = re.findall(r"`([^`]*)`", pattern.replace("\\", ""))
    names = {w for q in quoted for w in re.findall(r"[^\W\d]\w*", q)} - {"and", "or"}
    return not names or bool(names & set(re.findall(r"[^\W\d]\w*", message)))


def refuses(kind, pattern: str, call) -> None:
    """``call()`` must raise ``kind``, naming the argument the reference names; a message that
    ``pattern`` does not match is noted (``WORDING``)."""
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    if not re.search(pattern, message):
        assert names_agree(pattern, message), \
            f"refused for another reason: the reference says /{pattern}/, ours {message!r}"
        WORDING.append((pattern, message))


def _arity(function):
    """How many parameters ``function`` declares, or None when it cannot be inspected."""
    try:
        return len(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


NOT_FITTED = re.escape(
    "Fisher information has not yet been calculated. Please run "
    "`imnn.set_F_statistics({w}, {key}, {validate}) with `w = imnn.final_w`, "
    "`w = imnn.best_w`, `w = imnn.inital_w` or otherwise, `validate = True` should be set if "
    "not simulating on the fly.")
NOT_IMPLEMENTED = "`get_summaries` not implemented"
SWITCHED_BAR = {
    True: "Cannot run IMNN with progress bar after running without progress bar",
    False: "Cannot run IMNN without progress bar after running with progress bar",
}
OPTIMISER_TRIPLE = ("`optimiser` must be tuple of three functions. The first for initialising "
                    "the state, the second to update the state and the third to get "
                    "parameters from the state.")
MODEL_PAIR = ("`model` must be a tuple of two functions. The first for initialising the "
              "model and the second to call the model")
OPTIMISER_ELEMENTS = [("first", 1, "one argument"), ("second", 3, "three arguments"),
                      ("third", 1, "one argument")]
MODEL_ELEMENTS = [("first", 2, "two arguments"), ("second", 3, "three arguments")]


class defaultTests:  # noqa: N801 - the name the reference's test files import
    """Fixtures and checks shared by every class of the family."""

    def __init__(self, rng=rng, model_key=model_key, data_key=data_key, fit_key=fit_key,
                 stats_key=stats_key, n_s=1000, n_d=1000, reduced_n_d=100, n_params=2,
                 n_summaries=3, input_shape=(10,), θ_fid=FIDUCIAL, model=model,
                 optimiser=optimiser, state=state, λ=10., ϵ=0.01, patience=5,
                 min_iterations=1, max_iterations=10, print_rate=None, best=True, imnn=None,
                 filename=None, force_save=False):
        self.rng, self.model_key, self.data_key = rng, model_key, data_key
        self.fit_key, self.stats_key = fit_key, stats_key
        self.n_s, self.n_d, self.reduced_n_d = n_s, n_d, reduced_n_d
        self.n_params, self.n_summaries = n_params, n_summaries
        self.input_shape, self.θ_fid = input_shape, θ_fid
        self.model, self.bad_model = model, bad_model
        self.optimiser, self.state = optimiser, state
        self.kwargs = dict(n_s=n_s, n_d=n_d, n_params=n_params, n_summaries=n_summaries,
                           input_shape=input_shape, θ_fid=θ_fid, model=model,
                           optimiser=optimiser, key_or_state=model_key)
        self.reduced_kwargs = {**copy.deepcopy(self.kwargs), "n_d": reduced_n_d}
        self.λ, self.ϵ, self.patience = λ, ϵ, patience
        self.min_iterations, self.max_iterations = min_iterations, max_iterations
        self.print_rate, self.best = print_rate, best
        self.fit_kwargs = {"λ": λ, "ϵ": ϵ, "rng": fit_key, "patience": patience,
                           "min_iterations": min_iterations, "max_iterations": max_iterations,
                           "print_rate": print_rate, "best": best}
        self.arrays = ["θ_fid"]
        self.single_target_data = jax.random.normal(data_key, input_shape)
        self.batch_target_data = jnp.expand_dims(self.single_target_data, 0)
        self.imnn = imnn
        self.simulate = False
        self.filename = filename
        # The reference compares each configuration's results with a file its first run
        # wrote; here the file is written by the first test of a run that reaches it.
        self.save = force_save or filename is None or not self._store().is_file()

    # -- hooks the test files override ----------------------------------------------------
    def preload(self, dictionary, state=False, validate=False):
        if state:
            dictionary["key_or_state"] = self.state
        return dictionary

    def specific_exceptions(self, variable, input_variable, kwargs):
        return False

    def valid_type(self, variable, kwargs):
        return type(kwargs[variable]) if variable in kwargs else None

    # -- constructor arguments -------------------------------------------------------------
    def _array_refusal(self, variable, value, kwargs):
        if value is None:
            return None
        if not is_array(value):
            return TypeError, f"`{variable}` must be a jax array"
        wanted = kwargs[variable].shape
        if value.shape != wanted:
            return ValueError, re.escape(
                f"`{variable}` should have shape {wanted} but has {value.shape}")
        return None

    def _state_refusal(self, value):
        """None is refused; a key or an optimiser state is taken; anything the optimiser
        cannot read parameters from is refused. Nothing else is checked."""
        if value is None:
            return ValueError, "`key_or_state` is None"
        if is_array(value) and value.shape == (2,):
            return "accepted"
        if isinstance(value, optimizers.OptimizerState):
            return "accepted"
        try:
            self.optimiser[2](value)
        except Exception:
            return TypeError, "`state` is not valid for extracting parameters from"
        return "accepted"

    @staticmethod
    def _functions_refusal(value, elements, length_error):
        """A tuple of functions with the reference's numbers of parameters."""
        kind, message = length_error
        try:
            length = len(value)
        except TypeError:
            return kind, message
        if length != len(elements):
            return kind, message
        variable = "optimiser" if len(elements) == 3 else "model"
        for function, (ordinal, wanted, words) in zip(value, elements, strict=True):
            message = f"{ordinal} element of `{variable}` must take {words}"
            got = _arity(function)
            if got is None:
                return TypeError, message
            if got != wanted:
                return ValueError, message
        return None

    def _model_refusal(self, value):
        if value is None:
            return None
        if not isinstance(value, tuple):
            return TypeError, f"`model` must be type {tuple} but is {type(value)}"
        return self._functions_refusal(value, MODEL_ELEMENTS, (ValueError, MODEL_PAIR))

    def _optimiser_refusal(self, value):
        if value is None:
            return None
        return self._functions_refusal(value, OPTIMISER_ELEMENTS, (TypeError, OPTIMISER_TRIPLE))

    def constructor_refusal(self, variable, value, kwargs, valid_type):
        """What the constructor must do with ``kwargs[variable] = value``: None when the
        reference's tests do not try it, "accepted", or (exception type, message pattern)."""
        special = None
        if variable in self.arrays:
            special = self._array_refusal(variable, value, kwargs)
        elif variable == "key_or_state":
            special = self._state_refusal(value)
        elif variable == "optimiser":
            special = self._optimiser_refusal(value)
        elif variable == "model":
            special = self._model_refusal(value)
        if special is not None:
            return special
        if isinstance(value, valid_type):
            return "accepted"
        if value is None:
            return ValueError, f"`{variable}` is None"
        return TypeError, f"`{variable}` must be type {valid_type} but is {type(value)}"

    def initialise_parameters(self, variable, kwargs, input_variable, state=False,
                              validate=True):
        # As the reference's helper: the validation sets are left out here whatever
        # ``validate`` says (it loads the arguments without passing it on).
        arguments = self.preload(copy.deepcopy(kwargs), state=state)
        valid_type = self.valid_type(variable, arguments)
        if self.specific_exceptions(variable, input_variable, arguments):
            return
        expected = self.constructor_refusal(variable, input_variable, arguments, valid_type)
        if expected == "accepted":
            return
        arguments[variable] = input_variable
        refuses(*expected, lambda: self.imnn(**arguments))

    # -- fit's arguments -------------------------------------------------------------------
    def fit_refusal(self, variable, value, fit_kwargs):
        if variable == "rng":
            if value is None:
                return "accepted"
            if not is_array(value):
                return TypeError, "`rng` must be a jax array"
            if value.shape != fit_kwargs["rng"].shape:
                return ValueError, re.escape(
                    f"`rng` should have shape {fit_kwargs['rng'].shape} but has {value.shape}")
        if variable == "print_rate":
            if value is None or isinstance(value, int):
                return "accepted"
            return TypeError, f"`print_rate` must be type {int} but is {type(value)}"
        valid_type = type(fit_kwargs[variable])
        if isinstance(value, valid_type):
            return "accepted"
        if value is None:
            return ValueError, f"`{variable}` is None"
        return TypeError, f"`{variable}` must be type {valid_type} but is {type(value)}"

    def fit_parameters(self, variable, kwargs, fit_kwargs, input_variable, state=False,
                       validate=True):
        arguments = self.preload(copy.deepcopy(kwargs), state=state, validate=validate)
        fit_arguments = copy.deepcopy(fit_kwargs)
        expected = self.fit_refusal(variable, input_variable, fit_arguments)
        if expected == "accepted":
            return
        fit_arguments[variable] = input_variable
        λ, ϵ = fit_arguments.pop("λ"), fit_arguments.pop("ϵ")
        refuses(*expected, lambda: self.imnn(**arguments).fit(λ, ϵ, **fit_arguments))

    # -- results ---------------------------------------------------------------------------
    def set_name(self, state, validate, fit, size, name=""):
        prefix = ("validate_" if validate else "") + ("from_state_" if state else "") + \
            ("fit_" if fit else "") + ("reduced_" if size == self.reduced_n_d else "")
        return prefix + name

    def _store(self) -> pathlib.Path:
        return pathlib.Path("test") / f"{self.filename}.pickle"

    def same_as_first_run(self, results: dict) -> None:
        """Each result equal, bit for bit, to what the first run of its name stored."""
        path = self._store()
        stored = pickle.loads(path.read_bytes()) if path.is_file() else {}
        if self.save:
            fresh = {k: onp.asarray(v) if not isinstance(v, list)
                     else [onp.asarray(e) for e in v] for k, v in results.items()
                     if k not in stored}
            if fresh:
                stored.update(fresh)
                path.write_bytes(pickle.dumps(stored))
        for key, value in results.items():
            want = stored[key]
            if isinstance(value, list):
                assert len(value) == len(want), key
                for got, expected in zip(value, want, strict=True):
                    assert onp.array_equal(onp.asarray(got), expected), key
            else:
                assert onp.array_equal(onp.asarray(value), want), key

    @staticmethod
    def statistics(imnn, name):
        return {f"{name}{k}": getattr(imnn, k) for k in ("F", "C", "invC", "dμ_dθ", "μ", "invF")}

    def _figure(self, name, when):
        return f"test/figures/{self.filename}/{name}_{when}.pdf"

    def combined_running_test(self, data, kwargs, fit_kwargs, state=False, validate=True,
                              fit=False, none_first=True, implemented=True, aggregated=False):
        arguments = self.preload(copy.deepcopy(kwargs), state=state, validate=validate)
        imnn = self.imnn(**arguments)
        refuses(ValueError, NOT_FITTED, lambda: imnn.get_estimate(data))
        when = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        name = self.set_name(state, validate, fit, arguments["n_d"])
        fit_arguments = copy.deepcopy(fit_kwargs)
        λ, ϵ = fit_arguments.pop("λ"), fit_arguments.pop("ϵ")
        if not implemented:
            step = (lambda: imnn.fit(λ, ϵ, **fit_arguments)) if fit else \
                (lambda: imnn.set_F_statistics(key=self.stats_key))
            refuses(ValueError, NOT_IMPLEMENTED, step)
        elif fit:
            # A first fit with or without the progress bar, then the other way round.
            fit_arguments["print_rate"] = None if none_first else 100
            imnn.fit(λ, ϵ, **fit_arguments)
            fit_arguments["print_rate"] = 100 if none_first else None
        else:
            imnn.set_F_statistics(key=self.stats_key)
        if implemented:
            # Ours, beside the reference's checks: the statistics are usable at all (a Fisher
            # matrix with a positive determinant, finite estimates), so the stored first
            # result that later runs are compared with is not an empty or broken one.
            F = onp.asarray(imnn.F)
            assert onp.all(onp.isfinite(F)) and onp.linalg.det(F) > 0, F
            results = self.statistics(imnn, name)
            results[f"{name}estimates"] = [imnn.get_estimate(element) for element in data]
            assert all(onp.all(onp.isfinite(onp.asarray(e)))
                       for e in results[f"{name}estimates"])
            self.same_as_first_run(results)
        figure = self._figure(name, when)
        imnn.plot(expected_detF=50, filename=figure)
        import matplotlib.pyplot as plt
        plt.close("all")
        assert pathlib.Path(figure).is_file()
        if fit and implemented and not aggregated:
            refuses(ValueError, SWITCHED_BAR[none_first], lambda: imnn.fit(λ, ϵ, **fit_arguments))
