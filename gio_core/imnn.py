"""Information Maximising Neural Networks (IMNN): summaries that keep the Fisher information.

A network ``f_w`` compresses each simulation ``d`` to a few summaries ``x = f_w(d)``. From
``n_s`` simulations at the fiducial parameters ``θ_fid`` (the covariance ``C`` of ``x`` and its
mean ``μ``) and ``n_d`` of them with derivatives with respect to the parameters (the mean
derivative ``dμ/dθ``), the Gaussian Fisher information of the summaries is

    F = dμ/dθᵀ C⁻¹ dμ/dθ        (n_params x n_params).

Fitting maximises ``ln det F``; since any rescaling of a sufficient summary is sufficient too,
the scale is fixed by pulling ``C`` (and ``C⁻¹``) towards the identity with a regulariser that
turns itself off once ``C`` is close enough:

    loss = -ln det F + r(Λ2) Λ2,   Λ2 = ||C - I|| + ||C⁻¹ - I||,   r = λ Λ2 / (Λ2 + exp(-α Λ2)),

with ``α`` set from the coupling ``λ`` and the closeness ``ϵ`` (:func:`coupling_rate`).

Two layers:

* A functional core: :func:`fisher_statistics`, :func:`imnn_loss`, :func:`chunk_summaries`
  (summaries and their parameter derivatives for one batch of simulations: by the chain rule
  from simulation derivatives, or by finite differences of simulations at ``θ_fid ± δθ/2``) and
  :func:`chunk_gradient` (a batch's share of the loss gradient, given the loss's gradient with
  respect to that batch's summaries). Pure functions of arrays; jit them.
* The reference package's class family (``imnn`` 0.3): :class:`SimulatorIMNN`,
  :class:`GradientIMNN`, :class:`NumericalGradientIMNN`, the aggregated variants
  :class:`AggregatedSimulatorIMNN` / :class:`AggregatedGradientIMNN` /
  :class:`AggregatedNumericalGradientIMNN`, the :func:`IMNN` function that picks one from its
  arguments, and the streamed
  :class:`DatasetGradientIMNN` / :class:`DatasetNumericalGradientIMNN`, with the same
  constructor arguments, ``fit(λ, ϵ, ...)``, ``F``, ``C``, ``invC``, ``μ``, ``dμ_dθ``,
  ``invF``, ``get_estimate`` and ``plot``. The network is any stax-style ``(init_fn,
  apply_fn)`` pair; the optimiser an optax transformation or the ``(init, update,
  get_params)`` triple of ``jax.example_libraries.optimizers``.
* The reference's ``imnn.utils`` Jacobians: :func:`value_and_jacfwd`, :func:`value_and_jacrev`,
  :func:`jacfwd`, :func:`jacrev` (the function's value with its Jacobian from one trace; its
  tutorial builds simulators' derivatives with ``value_and_jacfwd``), on JAX's public API, and
  its :func:`add_nested_pytrees` and :class:`container`.

Aggregated gradients: the loss depends on the network weights only through the summaries, so
its gradient is ``Σ_batches vjp(batch summaries)(∂loss/∂summaries of the batch)``. The
aggregated classes compute all summaries batch by batch without gradients, take the loss's
gradient with respect to them (small arrays), then sum each batch's vector-Jacobian product:
memory is one batch, and the result equals the full-batch gradient up to float rounding.

Example (the reference's tutorial: mean and variance of 10 Gaussian draws, det F = 50):
    >>> sims = example_simulations(jax.random.PRNGKey(0), n_s=1000, n_d=1000)
    >>> imnn = GradientIMNN(n_s=1000, n_d=1000, n_params=2, n_summaries=2,
    ...     input_shape=(10,), θ_fid=jnp.array([0., 1.]), model=mlp((128, 128, 128), 2),
    ...     optimiser=optax.adam(1e-3), key_or_state=jax.random.PRNGKey(1), **sims)
    >>> imnn.fit(10., 0.1, patience=100, max_iterations=2000)
    >>> float(jnp.linalg.det(imnn.F))          # close to 50
"""
from __future__ import annotations

import inspect
import math
import os
from functools import partial
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.example_libraries import stax
from jax.flatten_util import ravel_pytree

# History columns, in the order they are stored (training in [:, 0], validation in [:, 1]).
HISTORY = ("detF", "detC", "detinvC", "Λ2", "r", "loss")
DERIVATIVE_MODES = ("gradient", "numerical")
SINGULAR_RCOND = 1e-6          # reciprocal condition number under which C counts as singular


# ---------------------------------------------------------------------------
# Functional core
# ---------------------------------------------------------------------------

class FisherStatistics(NamedTuple):
    """What the summaries of one set of simulations say about the parameters."""
    F: jax.Array          # [n_params, n_params] Fisher information
    C: jax.Array          # [n_summaries, n_summaries] covariance of the summaries
    invC: jax.Array       # [n_summaries, n_summaries] its inverse
    dμ_dθ: jax.Array      # [n_summaries, n_params] derivative of the mean summary
    μ: jax.Array          # [n_summaries] mean summary


class LossTerms(NamedTuple):
    """The loss's parts for one set of simulations (arrays)."""
    F: jax.Array
    C: jax.Array
    invC: jax.Array
    Λ2: jax.Array         # covariance regularisation
    r: jax.Array          # its coupling strength
    loss: jax.Array


def coupling_rate(λ: float, ϵ: float) -> float:
    """α, the rate at which the regulariser's coupling turns off: chosen so that the coupling
    is small once ``C`` is within ``ϵ`` of the identity (the reference's ``get_α``)."""
    inner = ϵ * (λ - 1.0) + ϵ ** 2 / (1.0 + ϵ)
    if not inner > 0:
        raise ValueError(f"λ={λ} and ϵ={ϵ} give no coupling rate (ϵ(λ-1) + ϵ²/(1+ϵ) must be "
                         "positive); use λ > 1 and ϵ > 0.")
    return -math.log(inner) / ϵ


def fisher_statistics(summaries, derivatives) -> FisherStatistics:
    """Gaussian Fisher information of the summaries.

    Args:
      summaries: ``[n_s, n_summaries]`` network outputs at the fiducial parameters.
      derivatives: ``[n_d, n_summaries, n_params]`` their derivatives with respect to the
        parameters.
    """
    μ = jnp.mean(summaries, axis=0)
    centred = summaries - μ
    C = centred.T @ centred / (summaries.shape[0] - 1)
    invC = jnp.linalg.inv(C)
    dμ_dθ = jnp.mean(derivatives, axis=0)
    F = jnp.einsum("ij,ik,kl->jl", dμ_dθ, invC, dμ_dθ)
    return FisherStatistics(F, C, invC, dμ_dθ, μ)


def regularisation(C, invC):
    """Λ2 = ||C - I||_F + ||C⁻¹ - I||_F."""
    eye = jnp.eye(C.shape[0], dtype=C.dtype)
    return jnp.linalg.norm(C - eye) + jnp.linalg.norm(invC - eye)


def coupling_strength(Λ2, λ, α):
    """r(Λ2) = λ Λ2 / (Λ2 + exp(-α Λ2)): near λ when C is far from I, near 0 once close."""
    return λ * Λ2 / (Λ2 + jnp.exp(-α * Λ2))


def _signed_logdet(matrix):
    sign, logdet = jnp.linalg.slogdet(matrix)
    return sign * logdet


def imnn_loss(summaries, derivatives, λ, α) -> tuple[jax.Array, LossTerms]:
    """The regularised loss ``-ln det F + r Λ2`` and its parts (``jax.grad(..., has_aux=True)``
    it with respect to the summaries and derivatives, or to weights they depend on)."""
    stats = fisher_statistics(summaries, derivatives)
    Λ2 = regularisation(stats.C, stats.invC)
    r = coupling_strength(Λ2, λ, α)
    loss = -_signed_logdet(stats.F) + r * Λ2
    return loss, LossTerms(stats.F, stats.C, stats.invC, Λ2, r, loss)


def loss_terms(summaries, derivatives, λ, α) -> LossTerms:
    return imnn_loss(summaries, derivatives, λ, α)[1]


def chunk_summaries(apply_fn: Callable, w, fiducial, derivative=None, *, mode: str = "gradient",
                    δθ=None):
    """Summaries of one batch of simulations and, where given, their parameter derivatives.

    Args:
      apply_fn: ``apply_fn(w, d) -> [batch, n_summaries]``.
      fiducial: ``[batch, *input_shape]`` simulations at ``θ_fid``.
      derivative: None (summaries only); for ``mode="gradient"`` ``[batch, *input_shape,
        n_params]``, each simulation's derivative with respect to the parameters (chain rule:
        ``dx/dθ = ∂f/∂d · dd/dθ``, one forward-mode product per parameter); for
        ``mode="numerical"`` ``[batch, 2, n_params, *input_shape]``, the same seeds simulated
        at ``θ_fid - δθ/2`` (index 0) and ``θ_fid + δθ/2`` (index 1) per parameter.
      δθ: ``[n_params]`` the finite-difference steps (numerical mode).
    Returns:
      ``x`` ``[batch, n_summaries]`` and ``dx`` ``[batch, n_summaries, n_params]`` (or None).
    """
    if derivative is None:
        return apply_fn(w, fiducial), None
    if mode == "gradient":
        x, linear = jax.linearize(lambda d: apply_fn(w, d), fiducial)
        dx = jax.vmap(linear)(jnp.moveaxis(derivative, -1, 0))        # [P, batch, S]
        return x, jnp.transpose(dx, (1, 2, 0))
    x = apply_fn(w, fiducial)
    batch, _, n_params = derivative.shape[:3]
    flat = derivative.reshape((batch * 2 * n_params,) + derivative.shape[3:])
    x_mp = apply_fn(w, flat).reshape((batch, 2, n_params, -1))
    dx = jnp.swapaxes(x_mp[:, 1] - x_mp[:, 0], 1, 2) / jnp.asarray(δθ)
    return x, dx


def chunk_gradient(apply_fn: Callable, w, fiducial, derivative, x_cotangent, dx_cotangent=None,
                   *, mode: str = "gradient", δθ=None):
    """One batch's share of the loss gradient with respect to the weights ``w``:
    ``vjp(w -> chunk_summaries(w, batch))(∂loss/∂x, ∂loss/∂dx)``. Summed over batches it is
    the full-batch gradient."""
    def outputs(w):
        x, dx = chunk_summaries(apply_fn, w, fiducial, derivative, mode=mode, δθ=δθ)
        return (x, dx) if dx is not None else (x,)
    _, vjp = jax.vjp(outputs, w)
    cot = (x_cotangent, dx_cotangent) if derivative is not None else (x_cotangent,)
    return vjp(cot)[0]


def summary_cotangents(summaries, derivatives, λ, α):
    """``∂loss/∂summaries``, ``∂loss/∂derivatives`` and the loss's terms: the driver's part of
    an aggregated gradient."""
    (g_x, g_dx), terms = jax.grad(imnn_loss, argnums=(0, 1), has_aux=True)(
        summaries, derivatives, λ, α)
    return g_x, g_dx, terms


def score_estimate(θ_fid, invF, dμ_dθ, invC, μ, summaries):
    """Score compression: ``θ_fid + F⁻¹ dμ/dθᵀ C⁻¹ (x - μ)`` for ``[..., n_summaries]``
    summaries -> ``[..., n_params]`` quasi-maximum-likelihood estimates."""
    return θ_fid + jnp.einsum("ij,kj,kl,...l->...i", invF, dμ_dθ, invC, summaries - μ)


# ---------------------------------------------------------------------------
# Networks, optimisers and the tutorial's simulations
# ---------------------------------------------------------------------------

ACTIVATIONS = {"leaky_relu": stax.LeakyRelu, "relu": stax.Relu, "tanh": stax.Tanh,
               "gelu": stax.Gelu, "softplus": stax.Softplus}


def mlp(hidden=(128, 128, 128), n_summaries: int = 2, activation: str = "leaky_relu"):
    """A stax ``(init_fn, apply_fn)`` dense network: ``hidden`` layers, each followed by
    ``activation``, then ``n_summaries`` linear outputs (the tutorial's is the default)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got "
                         f"{activation!r}.")
    layers: list = []
    for width in hidden:
        layers += [stax.Dense(int(width)), ACTIVATIONS[activation]]
    return stax.serial(*layers, stax.Dense(int(n_summaries)))


class Optimiser(NamedTuple):
    """One interface over optax and ``jax.example_libraries.optimizers``."""
    init: Callable          # w -> state
    update: Callable        # (i, grad, state) -> state
    params: Callable        # state -> w


def as_optimiser(optimiser) -> Optimiser:
    """An optax ``GradientTransformation`` or an ``(init, update, get_params)`` triple."""
    if isinstance(optimiser, optax.GradientTransformation) or (
            hasattr(optimiser, "init") and hasattr(optimiser, "update")
            and not isinstance(optimiser, tuple)):
        def init(w):
            return (w, optimiser.init(w))

        def update(i, grad, state):
            w, opt_state = state
            updates, opt_state = optimiser.update(grad, opt_state, w)
            return (optax.apply_updates(w, updates), opt_state)

        def params(state):
            if not (isinstance(state, tuple) and len(state) == 2):
                raise TypeError("an optax state here is (weights, optimiser state); got "
                                f"{type(state).__name__}.")
            return state[0]
        return Optimiser(init, update, params)
    return Optimiser(*_functions(
        "optimiser", optimiser, 3, (1, 3, 1),
        "an optax GradientTransformation (optax.adam(1e-3)) or an (init(w), update(i, grad, "
        "state), get_params(state)) triple as jax.example_libraries.optimizers gives"))


def gaussian_simulator(key, θ, input_shape=(10,)):
    """The tutorial's simulator: ``input_shape`` draws from N(θ[0], θ[1])."""
    return θ[0] + jax.random.normal(key, shape=input_shape) * jnp.sqrt(θ[1])


def _value_and(jacobian: Callable, fun: Callable, argnums, holomorphic: bool) -> Callable:
    """``fun`` and its Jacobian by ``jacobian`` (``jax.jacfwd`` or ``jax.jacrev``) together:
    the returned function gives ``(fun(*args), jacobian(fun)(*args))`` from one trace."""
    def both(*args, **kwargs):
        def with_value(*inner):
            out = fun(*inner, **kwargs)
            return out, out
        jac, value = jacobian(with_value, argnums=argnums, has_aux=True,
                              holomorphic=holomorphic)(*args)
        return value, jac
    return both


def value_and_jacfwd(fun: Callable, argnums=0, holomorphic: bool = False) -> Callable:
    """``fun`` and its forward-mode Jacobian together, as the reference's ``imnn.utils`` has
    it."""
    return _value_and(jax.jacfwd, fun, argnums, holomorphic)


def value_and_jacrev(fun: Callable, argnums=0, holomorphic: bool = False) -> Callable:
    """``fun`` and its reverse-mode Jacobian together (see :func:`value_and_jacfwd`)."""
    return _value_and(jax.jacrev, fun, argnums, holomorphic)


def jacfwd(fun: Callable, argnums=0, holomorphic: bool = False) -> Callable:
    """The forward-mode Jacobian of ``fun`` (the reference's ``imnn.utils.jacfwd``)."""
    return jax.jacfwd(fun, argnums=argnums, holomorphic=holomorphic)


def jacrev(fun: Callable, argnums=0, holomorphic: bool = False) -> Callable:
    """The reverse-mode Jacobian of ``fun`` (the reference's ``imnn.utils.jacrev``)."""
    return jax.jacrev(fun, argnums=argnums, holomorphic=holomorphic)


def add_nested_pytrees(*pytrees):
    """The leaf-by-leaf sum of pytrees of one structure (the reference's
    ``imnn.utils.add_nested_pytrees``; here a different structure or leaf shape is a
    ``ValueError`` naming it, where the reference does not check)."""
    if not pytrees:
        raise ValueError("add_nested_pytrees needs at least one pytree.")
    leaves, tree = jax.tree_util.tree_flatten(pytrees[0])
    for i, other in enumerate(pytrees[1:], start=1):
        more, other_tree = jax.tree_util.tree_flatten(other)
        if other_tree != tree:
            raise ValueError(f"pytree {i} has the structure {other_tree}, not {tree}.")
        for j, (a, b) in enumerate(zip(leaves, more, strict=True)):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(f"pytree {i}'s leaf {j} has shape {jnp.shape(b)}, not "
                                 f"{jnp.shape(a)}.")
        leaves = [a + b for a, b in zip(leaves, more, strict=True)]
    return jax.tree_util.tree_unflatten(tree, leaves)


class container:  # noqa: N801 - the reference's name
    """The reference's ``imnn.utils.container``: an empty record of an approximate Bayesian
    computation's draws (``all``, ``accepted``, ``rejected``, ``ϵ``, ``size``, ``n_accepted``,
    each None until set)."""

    def __init__(self):
        self.all = self.accepted = self.rejected = None
        self.ϵ = self.size = self.n_accepted = None


def example_simulations(key, n_s: int = 1000, n_d: int = 1000, θ_fid=(0.0, 1.0),
                        input_shape=(10,), validation: bool = True) -> dict:
    """The tutorial's data set: ``n_s`` Gaussian simulations at ``θ_fid`` (the first ``n_d``
    with their derivatives with respect to (mean, variance)), and as many again for validation.

    Returns:
      ``{"fiducial": [n_s, *input_shape], "derivative": [n_d, *input_shape, 2],
      "validation_fiducial": ..., "validation_derivative": ...}`` (NumPy float32), the keyword
      arguments of :class:`GradientIMNN`. The analytic det F is ``n² / (2 Σ³)`` with ``n`` the
      number of draws: 50 for 10 draws at Σ = 1.
    """
    θ = jnp.asarray(θ_fid, jnp.float32)
    sim = partial(gaussian_simulator, input_shape=tuple(input_shape))
    both = jax.vmap(lambda k: (sim(k, θ), jax.jacfwd(sim, argnums=1)(k, θ)))
    only = jax.vmap(lambda k: sim(k, θ))
    out = {}
    for prefix, k in zip(("", "validation_"), jax.random.split(key, 2), strict=True):
        if prefix and not validation:
            break
        keys = jax.random.split(k, n_s)
        fid, der = both(keys[:n_d])
        rest = only(keys[n_d:])
        out[prefix + "fiducial"] = np.asarray(jnp.concatenate([fid, rest]), np.float32)
        out[prefix + "derivative"] = np.asarray(der, np.float32)
    return out


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

def _int(name, value, low=1):
    if value is None:
        raise ValueError(f"{name} is None; give an int.")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be at least {low}; got {value}.")
    return int(value)


def _float(name, value) -> float:
    """A Python float, as the reference's ``fit`` wants ``λ`` and ``ϵ``: None is a
    ValueError, anything else that is not a float (an int, a NumPy float32) a TypeError."""
    if value is None:
        raise ValueError(f"{name} is None; give a float such as 10.0.")
    if not isinstance(value, float):
        raise TypeError(f"{name} must be a float (write {value!r}.0 or float(...)); got "
                        f"{type(value).__name__} {value!r}.")
    return float(value)


def _bool(name, value) -> bool:
    if value is None:
        raise ValueError(f"{name} is None; give True or False.")
    if value is not True and value is not False:
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}.")
    return value


def _shape(name, value):
    """A tuple of positive ints, as the reference wants ``input_shape``: None is a ValueError,
    anything that is not a tuple (a list, an int) a TypeError."""
    if value is None:
        raise ValueError(f"{name} is None; give the shape of one simulation, a tuple such as "
                         "(10,).")
    if not isinstance(value, tuple):
        raise TypeError(f"{name} must be a tuple such as (10,); got {type(value).__name__} "
                        f"{value!r}.")
    if not value or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                            and v > 0 for v in value):
        raise TypeError(f"{name} must be a tuple of positive ints; got {value!r}.")
    return tuple(int(v) for v in value)


def _array(name, value, shape) -> np.ndarray:
    """A constructor's array argument, as the reference checks it: None is a ValueError,
    anything but a NumPy or JAX array (a list, a tuple, a number) a TypeError, another shape
    a ValueError; then :func:`check_array`."""
    if value is None:
        raise ValueError(f"{name} is None; give an array of shape {tuple(shape)}.")
    if not isinstance(value, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a NumPy or JAX array of shape {tuple(shape)} "
                        f"(jnp.array(...)); got {type(value).__name__}.")
    return check_array(name, value, shape)


def _positional(function, count: int) -> bool:
    """Whether ``function`` can be called with ``count`` positional arguments (True when its
    signature cannot be read, as for some builtins)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _functions(name, value, count: int, calls: tuple[int, ...], form: str):
    """A tuple of ``count`` functions, the i-th callable with ``calls[i]`` positional
    arguments: None is a ValueError, a non-tuple or an element that is not a function a
    TypeError, another length (a model) or an element taking other arguments a ValueError."""
    if value is None:
        raise ValueError(f"{name} is None; give {form}.")
    if not isinstance(value, tuple):
        raise TypeError(f"{name} must be {form}; got {type(value).__name__}.")
    if len(value) != count:
        raise (ValueError if name == "model" else TypeError)(
            f"{name} must be {form}; got a tuple of {len(value)}.")
    ordinals = ("first", "second", "third")
    for i, (function, arguments) in enumerate(zip(value, calls, strict=True)):
        if not callable(function):
            raise TypeError(f"the {ordinals[i]} element of {name} must be a function; got "
                            f"{type(function).__name__} ({form}).")
        if not _positional(function, arguments):
            raise ValueError(f"the {ordinals[i]} element of {name} must take {arguments} "
                             f"argument(s) ({form}).")
    return value


def _simulator(simulator):
    if simulator is None:
        raise ValueError("simulator is None; give a function simulator(key, θ) -> simulation.")
    if not callable(simulator):
        raise TypeError("simulator must be a function simulator(key, θ) -> simulation; got "
                        f"{type(simulator).__name__}.")
    if not _positional(simulator, 2):
        raise ValueError("simulator must take two arguments, a PRNG key and the parameters: "
                         "simulator(key, θ) -> simulation.")
    return simulator


class _Default:
    """A default that an explicit None must not be mistaken for."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return self.text


CPU = _Default("jax.devices('cpu')[0]")
HOST_ONLY = _Default("[host]")


def check_array(name, value, shape) -> np.ndarray:
    """``value`` as a float array of exactly ``shape``, finite everywhere."""
    if value is None:
        raise ValueError(f"{name} is missing.")
    array = np.asarray(value)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}; expected {tuple(shape)}.")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must hold numbers; got dtype {array.dtype}.")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.argwhere(bad.reshape(array.shape[0], -1).any(axis=1))[0, 0]) \
            if array.ndim else 0
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), the "
                         f"first in simulation {first}; drop or regenerate those simulations.")
    return array


def check_covariance(C, where: str = "the training simulations") -> None:
    """Raise if the summaries' covariance cannot be inverted (summaries that do not vary, or
    vary together)."""
    C = np.asarray(C, np.float64)
    if not np.all(np.isfinite(C)):
        raise ValueError(f"the covariance of the network's summaries of {where} is not finite; "
                         "check the simulations' scale and the network's initialisation.")
    eig = np.linalg.eigvalsh((C + C.T) / 2)
    if eig[-1] <= 0 or eig[0] / eig[-1] < SINGULAR_RCOND:
        raise ValueError(f"the covariance of the network's summaries of {where} is singular "
                         f"(eigenvalues {eig[0]:.3g} .. {eig[-1]:.3g}): the summaries do not "
                         "vary independently. Check that the simulations differ from each "
                         "other, and use more simulations (n_s) or fewer summaries.")


# ---------------------------------------------------------------------------
# The class family
# ---------------------------------------------------------------------------

class SummariesNotImplemented(NotImplementedError, ValueError):
    """The base class was fitted: a ``NotImplementedError`` that is also the reference's
    ``ValueError``."""


def _is_key(value) -> bool:
    try:
        arr = jnp.asarray(value) if not jax.dtypes.issubdtype(
            getattr(value, "dtype", None), jax.dtypes.prng_key) else None
    except TypeError:
        return False
    if arr is None:
        return True
    return arr.shape == (2,) and arr.dtype == jnp.uint32


class _IMNN:
    """Shared fitting machinery. Subclasses say where the summaries come from
    (:meth:`get_summaries`) and, for the aggregated ones, how the gradient is summed."""

    _jittable = True            # the whole iteration is one XLA program
    _mode = "gradient"

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state):
        self.n_s = _int("n_s", n_s, 2)
        self.n_d = _int("n_d", n_d, 1)
        self.n_params = _int("n_params", n_params)
        self.n_summaries = _int("n_summaries", n_summaries)
        if self.n_d > self.n_s:
            raise ValueError(f"n_d ({self.n_d}) is more than n_s ({self.n_s}): the simulations "
                             "with derivatives are some of the n_s fiducial ones; give n_d <= "
                             "n_s.")
        if self.n_s <= self.n_summaries:
            raise ValueError(f"n_s ({self.n_s}) must exceed n_summaries ({self.n_summaries}) "
                             "for the summaries' covariance to be invertible.")
        self.input_shape = _shape("input_shape", input_shape)
        self.θ_fid = jnp.asarray(_array("θ_fid", θ_fid, (self.n_params,)), jnp.float32)
        self.validate = False
        self.simulate = False
        self.F = self.invF = self.C = self.invC = self.μ = self.dμ_dθ = None
        self._model_initialiser, self.model = _functions(
            "model", model, 2, (2, 2), "an (init_fn(key, input_shape), apply_fn(w, x)) pair, "
            "as jax.example_libraries.stax.serial(...) returns")
        self._opt = as_optimiser(optimiser)
        if key_or_state is None:
            raise ValueError("key_or_state is None; give a PRNG key (jax.random.PRNGKey(0)) or "
                             "an optimiser state to continue from.")
        if _is_key(key_or_state):
            output_shape, w = self._model_initialiser(key_or_state, self.input_shape)
            if tuple(output_shape)[-1:] != (self.n_summaries,):
                raise ValueError(f"the model outputs shape {tuple(output_shape)}; its last axis "
                                 f"must be n_summaries ({self.n_summaries}).")
            self.state = self._opt.init(w)
        else:
            self.state = key_or_state
            try:
                w = self._opt.params(key_or_state)
            except Exception as err:
                raise TypeError(
                    "key_or_state is neither a PRNG key (shape (2,), jax.random.PRNGKey(0)) nor "
                    "an optimiser state this optimiser can read parameters from; got "
                    f"{type(key_or_state).__name__}.") from err
        self.initial_w = self.final_w = self.best_w = self.w = w
        self._counter = 0
        self._history: dict[str, np.ndarray] = {}
        self.history: dict[str, Any] = {}
        self._compiled: dict = {}
        self._start_checked = False
        self.progress: Callable | None = None    # progress(done, max_detF, patience) hook

    # -- where summaries come from ------------------------------------------------------------
    def get_summaries(self, w, key=None, validate=False):
        """``(x [n_s, n_summaries], dx [n_d, n_summaries, n_params])`` for the weights ``w``."""
        raise SummariesNotImplemented(
            f"{type(self).__name__} has no get_summaries: subclass it and say where the "
            "summaries come from, or use one of the classes that do (GradientIMNN, "
            "SimulatorIMNN, ...).")

    def _loss_and_gradient(self, w, λ, α, key):
        """The loss gradient with respect to ``w`` and the loss's terms (training set)."""
        def loss(w):
            x, dx = self.get_summaries(w, key=key)
            return imnn_loss(x, dx, λ, α)
        grad, terms = jax.grad(loss, has_aux=True)(w)
        return grad, terms

    def _terms(self, w, λ, α, key, validate):
        x, dx = self.get_summaries(w, key=key, validate=validate)
        return loss_terms(x, dx, λ, α)

    # -- fitting -----------------------------------------------------------------------------
    def _iteration(self, λ, α, min_iterations, carry):
        (state, best_w, max_detF, patience_counter, counter, rng, hist) = carry
        rng, k_train, k_val = jax.random.split(rng, 3)
        w = self._opt.params(state)
        grad, terms = self._loss_and_gradient(w, λ, α, k_train)
        state = self._opt.update(counter, grad, state)
        w = self._opt.params(state)
        row = jnp.stack([jnp.linalg.det(terms.F), jnp.linalg.det(terms.C),
                         jnp.linalg.det(terms.invC), terms.Λ2, terms.r, terms.loss])
        hist = hist.at[counter, 0].set(row)
        if self.validate:
            vterms = self._terms(w, λ, α, k_val, True)
            vrow = jnp.stack([jnp.linalg.det(vterms.F), jnp.linalg.det(vterms.C),
                              jnp.linalg.det(vterms.invC), vterms.Λ2, vterms.r, vterms.loss])
            hist = hist.at[counter, 1].set(vrow)
            detF = vrow[0]
        else:
            detF = row[0]
        better = detF > max_detF
        max_detF = jnp.where(better, detF, max_detF)
        best_w = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), w, best_w)
        patience_counter = jnp.where(better, 0, jnp.where(counter > min_iterations,
                                                          patience_counter + 1,
                                                          patience_counter))
        return (state, best_w, max_detF, patience_counter, counter + 1, rng, hist)

    def _run_block(self, λ, α, min_iterations, patience, carry, stop_at):
        def cond(c):
            return jnp.logical_and(c[3] < patience, c[4] < stop_at)
        return jax.lax.while_loop(cond, partial(self._iteration, λ, α, min_iterations), carry)

    def fit(self, λ, ϵ, rng=None, patience=100, min_iterations=100, max_iterations=int(1e5),
            print_rate=None, best=True):
        """Fit the network's weights.

        Args:
          λ: coupling strength of the covariance regulariser (> 1), a float: as the
            reference, None is a ValueError and an int (``10``) a TypeError.
          ϵ: how close to the identity the summaries' covariance should come (> 0), a float.
          rng: a PRNG key; needed only when simulating on the fly (:class:`SimulatorIMNN`).
          patience: stop after this many iterations without a larger det F (the validation
            set's when there is one), once ``min_iterations`` have run.
          max_iterations: stop after this many iterations in any case.
          print_rate: update a progress bar every this many iterations (None: no bar, and the
            in-memory classes then run the whole fit as one compiled loop).
          best: keep the weights with the largest det F (``self.w = self.best_w``), else the
            last ones.

        Calling ``fit`` again continues from the optimiser's state; the history grows.
        """
        λ = _float("λ", λ)
        ϵ = _float("ϵ", ϵ)
        α = coupling_rate(λ, ϵ)
        patience = _int("patience", patience)
        min_iterations = _int("min_iterations", min_iterations, 0)
        max_iterations = _int("max_iterations", max_iterations)
        best = _bool("best", best)
        if rng is not None and not _is_key(rng):
            if hasattr(rng, "shape"):
                raise ValueError(f"rng should be a PRNG key of shape (2,); got shape "
                                 f"{tuple(rng.shape)}.")
            raise TypeError(f"rng must be a PRNG key (jax.random.PRNGKey(0)); got "
                            f"{type(rng).__name__}.")
        if print_rate is not None:
            print_rate = _int("print_rate", print_rate)
        if self.simulate and rng is None:
            raise ValueError("rng is needed when simulating on the fly: fit(λ, ϵ, rng=key).")
        rng = jax.random.PRNGKey(0) if rng is None else rng
        if not self._start_checked:
            self._check_start(λ, α, rng)
        hist = jnp.full((max_iterations, 2, len(HISTORY)), jnp.nan, jnp.float32)
        carry = (self.state, self._opt.params(self.state), jnp.float32(-jnp.inf),
                 jnp.int32(0), jnp.int32(0), rng, hist)
        carry = self._fit_loop(λ, α, min_iterations, patience, max_iterations, print_rate,
                               carry)
        self.state, best_w, max_detF, _, counter, rng, hist = carry
        n = int(counter)
        self._append_history(np.asarray(hist[:n]), float(max_detF))
        self._counter += n
        self.best_w = best_w
        self.final_w = self._opt.params(self.state)
        self.set_F_statistics(self.best_w if best else self.final_w, key=rng)

    def _check_start(self, λ=None, α=None, rng=None):
        """Raise ValueError when the summaries' covariance at the current weights is singular
        (checked at the start of every fit; set ``_start_checked`` once checked elsewhere)."""
        if rng is None:
            rng = jax.random.PRNGKey(0)
        x, _ = self.get_summaries(self._opt.params(self.state), key=rng)
        x = np.asarray(x)
        check_covariance(np.cov(x, rowvar=False).reshape(self.n_summaries, self.n_summaries),
                         "the training simulations at the initial weights")

    def _fit_loop(self, λ, α, min_iterations, patience, max_iterations, print_rate, carry):
        bar = _progress(max_iterations, print_rate)
        if self._jittable:
            key = ("block", λ, α, min_iterations, patience)
            if key not in self._compiled:
                self._compiled[key] = jax.jit(partial(self._run_block, λ, α, min_iterations,
                                                      patience))
            run = self._compiled[key]
            step = max_iterations if print_rate is None else print_rate
            while True:
                done = int(carry[4])
                if done >= max_iterations or int(carry[3]) >= patience:
                    break
                carry = run(carry, jnp.int32(min(done + step, max_iterations)))
                _advance(bar, carry, done)
        else:
            iteration = partial(self._iteration, λ, α, min_iterations)
            while int(carry[4]) < max_iterations and int(carry[3]) < patience:
                done = int(carry[4])
                carry = iteration(carry)
                if self.progress is not None:
                    self.progress(done + 1, float(carry[2]), int(carry[3]))
                if print_rate is not None and (done + 1) % print_rate == 0:
                    _advance(bar, carry, done + 1 - print_rate)
            _advance(bar, carry, int(bar.n) if bar is not None else 0)
        if bar is not None:
            bar.close()
        return carry

    def _append_history(self, hist: np.ndarray, max_detF: float):
        for j, name in enumerate(HISTORY):
            for col, prefix in ((0, ""), (1, "val_")):
                if col == 1 and not self.validate:
                    continue
                old = self._history.get(prefix + name, np.zeros(0, np.float32))
                self._history[prefix + name] = np.concatenate([old, hist[:, col, j]])
        self._history["max_detF"] = np.asarray(max(max_detF, float(
            self._history.get("max_detF", -np.inf))), np.float32)
        self.history = dict(self._history)

    # -- after fitting -----------------------------------------------------------------------
    def set_F_statistics(self, w=None, key=None, validate=True):
        """Set ``F``, ``C``, ``invC``, ``dμ_dθ``, ``μ`` and ``invF`` from the weights ``w``
        (default ``self.w``), on the validation set when there is one."""
        if w is not None:
            self.w = w
        validate = validate and (self.validate or self.simulate)
        x, dx = self.get_summaries(self.w, key=key, validate=validate)
        stats = fisher_statistics(x, dx)
        check_covariance(stats.C, "the validation simulations" if validate
                         else "the training simulations")
        self.F, self.C, self.invC, self.dμ_dθ, self.μ = stats
        self.invF = jnp.linalg.inv(self.F)

    def get_estimate(self, d):
        """Score-compressed parameter estimates of data ``d`` (``input_shape`` or a batch
        ``[n, *input_shape]``): ``θ_fid + F⁻¹ dμ/dθᵀ C⁻¹ (f_w(d) - μ)``."""
        if self.invF is None:
            raise ValueError("the Fisher statistics are not set: call fit(...) or "
                             "set_F_statistics(w) first.")
        d = jnp.asarray(d)
        single = d.shape == self.input_shape
        if not single and d.shape[1:] != self.input_shape:
            raise ValueError(f"d has shape {d.shape}; expected {self.input_shape} or "
                             f"(n, *{self.input_shape}).")
        x = self.model(self.w, d[None] if single else d)
        est = score_estimate(self.θ_fid, self.invF, self.dμ_dθ, self.invC, self.μ, x)
        return est[0] if single else est

    def plot(self, ax=None, expected_detF=None, colour="C0", figsize=(5, 15), label="",
             filename=None, ncol=1):
        """Plot the fitting history: det F, det C and det C⁻¹, Λ2 and r (training solid,
        validation dashed). Returns the axes. With ``filename``, the figure is saved there, in
        the format its extension names (``.png``, ``.pdf``), making missing folders; before
        any fit the axes are empty."""
        return plot_history(self.history, ax=ax, expected_detF=expected_detF, colour=colour,
                            figsize=figsize, label=label, filename=filename, ncol=ncol)


def _progress(total, print_rate):
    if print_rate is None:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="IMNN fit", unit="it")


def _advance(bar, carry, before):
    if bar is None:
        return
    done = int(carry[4])
    hist = carry[6]
    row = np.asarray(hist[done - 1]) if done else None
    bar.update(done - bar.n)
    if row is not None:
        bar.set_postfix(detF=f"{row[0, 0]:.3g}", val_detF=f"{row[1, 0]:.3g}",
                        max_detF=f"{float(carry[2]):.3g}", patience=int(carry[3]))


def plot_history(history: dict, ax=None, expected_detF=None, colour="C0", figsize=(5, 15),
                 label="", filename=None, ncol=1):
    """Three panels from an IMNN fit's ``history`` dict (see :meth:`_IMNN.plot`)."""
    from matplotlib.figure import Figure
    if ax is None:
        fig = Figure(figsize=figsize)
        ax = fig.subplots(3, 1, sharex=True)
        fig.subplots_adjust(hspace=0.05)
    fig = ax[0].figure
    its = np.arange(len(history.get("detF", ())))
    for prefix, style, suffix in (("", "-", ""), ("val_", "--", " (validation)")):
        if prefix + "detF" not in history:
            continue
        ax[0].plot(its, history[prefix + "detF"], style, color=colour, label=label + suffix)
        ax[1].plot(its, history[prefix + "detC"], style, color=colour)
        ax[1].plot(its, history[prefix + "detinvC"], style, color=colour, alpha=0.5)
        ax[2].plot(its, history[prefix + "Λ2"], style, color=colour)
        ax[2].plot(its, history[prefix + "r"], style, color="C1")
    if expected_detF is not None:
        ax[0].axhline(expected_detF, linestyle="dotted", color="black", label="expected")
    ax[0].set_ylabel("det F")
    ax[0].legend(frameon=False, ncol=ncol)
    ax[1].axhline(1, linestyle="dotted", color="black")
    ax[1].set_yscale("log")
    ax[1].set_ylabel("det C and det C⁻¹")
    ax[2].set_ylabel("Λ2 (r in orange)")
    ax[2].set_xlabel("iteration")
    if filename is not None:
        folder = os.path.dirname(os.fspath(filename)) \
            if isinstance(filename, (str, os.PathLike)) else ""
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(filename, dpi=90, bbox_inches="tight")
    return ax


class SimulatorIMNN(_IMNN):
    """Fit from simulations generated on the fly by a JAX ``simulator(key, θ)``; derivatives
    by forward-mode differentiation of ``θ -> f_w(simulator(key, θ))``. Fresh simulations every
    iteration (``fit`` needs ``rng``); ``fit(..., best=False)`` is often the better choice here
    since a lucky draw can give a large det F."""

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, simulator):
        super().__init__(n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                         key_or_state)
        self.simulator = _simulator(simulator)
        self.simulate = True

    def get_summaries(self, w, key=None, validate=False):
        keys = jax.random.split(key, self.n_s)

        def summary(k, θ):
            return self.model(w, self.simulator(k, θ)[None])[0]
        x_d, dx = jax.vmap(lambda k: (summary(k, self.θ_fid),
                                      jax.jacfwd(summary, argnums=1)(k, self.θ_fid)))(
            keys[:self.n_d])
        x_rest = jax.vmap(lambda k: summary(k, self.θ_fid))(keys[self.n_d:])
        return jnp.concatenate([x_d, x_rest]), dx


class _InMemory(_IMNN):
    def _set_data(self, fiducial, derivative, validation_fiducial, validation_derivative,
                  derivative_shape):
        self.fiducial = jnp.asarray(_array("fiducial", fiducial,
                                           (self.n_s,) + self.input_shape))
        self.derivative = jnp.asarray(_array("derivative", derivative,
                                             (self.n_d,) + derivative_shape))
        if (validation_fiducial is None) != (validation_derivative is None):
            raise ValueError("give both validation_fiducial and validation_derivative, or "
                             "neither.")
        if validation_fiducial is not None:
            self.validation_fiducial = jnp.asarray(_array(
                "validation_fiducial", validation_fiducial, (self.n_s,) + self.input_shape))
            self.validation_derivative = jnp.asarray(_array(
                "validation_derivative", validation_derivative, (self.n_d,) + derivative_shape))
            self.validate = True

    def _data(self, validate):
        if validate:
            return self.validation_fiducial, self.validation_derivative
        return self.fiducial, self.derivative

    def get_summaries(self, w, key=None, validate=False):
        fiducial, derivative = self._data(validate)
        x_d, dx = chunk_summaries(self.model, w, fiducial[:self.n_d], derivative,
                                  mode=self._mode, δθ=getattr(self, "δθ", None))
        x_rest = self.model(w, fiducial[self.n_d:])
        return jnp.concatenate([x_d, x_rest]), dx


class GradientIMNN(_InMemory):
    """Fit from a fixed set of ``n_s`` fiducial simulations ``[n_s, *input_shape]`` (the first
    ``n_d`` with derivatives ``[n_d, *input_shape, n_params]``), all in memory. Use a
    validation set: with a fixed training set the network will also learn its accidents, and
    early stopping on the validation det F stops it there."""

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, fiducial, derivative, validation_fiducial=None,
                 validation_derivative=None):
        super().__init__(n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                         key_or_state)
        self._set_data(fiducial, derivative, validation_fiducial, validation_derivative,
                       self.input_shape + (self.n_params,))


class NumericalGradientIMNN(_InMemory):
    """As :class:`GradientIMNN`, with derivatives by finite differences: ``derivative`` is
    ``[n_d, 2, n_params, *input_shape]``, the seeds of the first ``n_d`` fiducial simulations
    re-simulated at ``θ_fid - δθ/2`` (index 0) and ``θ_fid + δθ/2`` (index 1) in each
    parameter; ``δθ`` ``[n_params]`` the steps."""

    _mode = "numerical"

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, fiducial, derivative, δθ, validation_fiducial=None,
                 validation_derivative=None):
        super().__init__(n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                         key_or_state)
        self.δθ = jnp.asarray(_steps(δθ, self.n_params))
        self._set_data(fiducial, derivative, validation_fiducial, validation_derivative,
                       (2, self.n_params) + self.input_shape)


def _steps(δθ, n_params):
    steps = _array("δθ", δθ, (n_params,)).astype(np.float32)
    if np.any(steps == 0):
        raise ValueError("δθ must be non-zero in every parameter (the finite-difference step).")
    return steps


# -- aggregated: batch by batch, gradients summed by the chain rule ---------------------------

class Batch(NamedTuple):
    """One batch of simulations: ``fiducial`` ``[b, *input_shape]`` and, for the simulations
    with derivatives, ``derivative`` (else None)."""
    fiducial: Any
    derivative: Any = None


class _Aggregated(_IMNN):
    """Summaries and gradients computed batch by batch (see the module's docstring). Subclasses
    give :meth:`batches`; the driver-side pieces are jitted once per batch shape."""

    _jittable = False

    def _setup_devices(self, host=CPU, devices=HOST_ONLY, n_per_device=100):
        """``host`` a jax device (default the first CPU), ``devices`` a non-empty list of jax
        devices (default ``[host]``): None is a ValueError, another kind a TypeError, as in
        the reference."""
        if host is CPU:
            host = jax.devices("cpu")[0]
        if host is None:
            raise ValueError("host is None; give a jax device, e.g. jax.devices('cpu')[0].")
        if not isinstance(host, jax.Device):
            raise TypeError(f"host must be a jax device, e.g. jax.devices('cpu')[0]; got "
                            f"{type(host).__name__}.")
        if devices is HOST_ONLY:
            devices = [host]
        if devices is None:
            raise ValueError("devices is None; give a list of jax devices, e.g. jax.devices().")
        if not isinstance(devices, list):
            raise TypeError(f"devices must be a list of jax devices, e.g. jax.devices(); got "
                            f"{type(devices).__name__}.")
        if not devices:
            raise ValueError("devices is empty: give at least one jax device.")
        if not all(isinstance(d, jax.Device) for d in devices):
            raise TypeError("every element of devices must be a jax device; got "
                            f"{[type(d).__name__ for d in devices]}.")
        self.host, self.devices = host, list(devices)
        self.n_devices = len(self.devices)
        self.n_per_device = _int("n_per_device", n_per_device)
        δθ = getattr(self, "δθ", None)
        self._summaries_fn = jax.jit(partial(chunk_summaries, self.model, mode=self._mode, δθ=δθ))
        self._gradient_fn = jax.jit(partial(chunk_gradient, self.model, mode=self._mode, δθ=δθ))
        self._cotangents = jax.jit(summary_cotangents)
        self._terms_fn = jax.jit(loss_terms)

    def batches(self, validate: bool) -> Iterable[Batch]:
        """The simulations in batches: those with derivatives first (``n_d`` in all), then the
        rest (``n_s - n_d``), the same order on every call."""
        raise NotImplementedError

    def _placed(self, batches):
        for i, batch in enumerate(batches):
            device = self.devices[i % self.n_devices]
            yield i, jax.device_put(batch, device)

    def get_summaries(self, w, key=None, validate=False):
        xs, dxs = [], []
        placed_w = {}
        for i, batch in self._placed(self.batches(validate)):
            device = self.devices[i % self.n_devices]
            if device not in placed_w:
                placed_w[device] = jax.device_put(w, device)
            x, dx = self._summaries_fn(placed_w[device], batch.fiducial, batch.derivative)
            xs.append(jax.device_put(x, self.host))
            if dx is not None:
                dxs.append(jax.device_put(dx, self.host))
        x, dx = jnp.concatenate(xs), jnp.concatenate(dxs)
        self._check_counts(x.shape[0], dx.shape[0], validate)
        return x, dx

    def _check_counts(self, n_s, n_d, validate):
        if (n_s, n_d) != (self.n_s, self.n_d):
            which = "validation" if validate else "training"
            raise ValueError(f"the {which} batches hold {n_s} simulations, {n_d} with "
                             f"derivatives; expected n_s={self.n_s}, n_d={self.n_d}.")

    def get_gradient(self, w, g_x, g_dx, validate=False):
        """``Σ_batches vjp`` of the loss's gradient with respect to the summaries ``g_x``
        ``[n_s, n_summaries]`` and derivatives ``g_dx`` ``[n_d, n_summaries, n_params]``."""
        total = None
        start_d = start_rest = 0
        placed_w = {}
        for i, batch in self._placed(self.batches(validate)):
            device = self.devices[i % self.n_devices]
            if device not in placed_w:
                placed_w[device] = jax.device_put(w, device)
            b = batch.fiducial.shape[0]
            if batch.derivative is not None:
                cx, cdx = g_x[start_d:start_d + b], g_dx[start_d:start_d + b]
                start_d += b
            else:
                cx, cdx = g_x[self.n_d + start_rest:self.n_d + start_rest + b], None
                start_rest += b
            part = self._gradient_fn(placed_w[device], batch.fiducial, batch.derivative,
                                     jax.device_put(cx, device),
                                     None if cdx is None else jax.device_put(cdx, device))
            part = jax.device_put(part, self.host)
            total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
        return total

    def _loss_and_gradient(self, w, λ, α, key):
        x, dx = self.get_summaries(w, key=key)
        g_x, g_dx, terms = self._cotangents(x, dx, λ, α)
        return self.get_gradient(w, g_x, g_dx), terms

    def _terms(self, w, λ, α, key, validate):
        x, dx = self.get_summaries(w, key=key, validate=validate)
        return self._terms_fn(x, dx, λ, α)

    def _iteration(self, λ, α, min_iterations, carry):
        if "book" not in self._compiled:
            self._compiled["book"] = jax.jit(_bookkeeping, static_argnums=(0,))
        state, best_w, max_detF, patience_counter, counter, rng, hist = carry
        rng, k_train, k_val = jax.random.split(rng, 3)
        w = self._opt.params(state)
        grad, terms = self._loss_and_gradient(w, λ, α, k_train)
        if "update" not in self._compiled:
            self._compiled["update"] = jax.jit(self._opt.update)
        state = self._compiled["update"](counter, grad, state)
        w = self._opt.params(state)
        vterms = self._terms(w, λ, α, k_val, True) if self.validate else terms
        best_w, max_detF, patience_counter, hist = self._compiled["book"](
            self.validate, terms, vterms, w, best_w, max_detF, patience_counter, counter,
            min_iterations, hist)
        return (state, best_w, max_detF, patience_counter, counter + 1, rng, hist)


def _bookkeeping(validate, terms, vterms, w, best_w, max_detF, patience_counter, counter,
                 min_iterations, hist):
    def row(t):
        return jnp.stack([jnp.linalg.det(t.F), jnp.linalg.det(t.C), jnp.linalg.det(t.invC),
                          t.Λ2, t.r, t.loss])
    hist = hist.at[counter, 0].set(row(terms))
    detF = row(terms)[0]
    if validate:
        vrow = row(vterms)
        hist = hist.at[counter, 1].set(vrow)
        detF = vrow[0]
    better = detF > max_detF
    max_detF = jnp.where(better, detF, max_detF)
    best_w = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), w, best_w)
    patience_counter = jnp.where(better, 0, jnp.where(counter > min_iterations,
                                                      patience_counter + 1, patience_counter))
    return best_w, max_detF, patience_counter, hist


class _AggregatedArrays(_Aggregated, _InMemory):
    """Arrays in host memory, sent to the devices ``n_per_device`` simulations at a time."""

    def _to_host(self):
        for name in ("fiducial", "derivative", "validation_fiducial", "validation_derivative"):
            if hasattr(self, name):
                setattr(self, name, np.asarray(getattr(self, name)))

    def batches(self, validate):
        fiducial, derivative = self._data(validate)
        size = self.n_per_device
        for start in range(0, self.n_d, size):
            stop = min(start + size, self.n_d)
            yield Batch(fiducial[start:stop], derivative[start:stop])
        for start in range(self.n_d, self.n_s, size):
            yield Batch(fiducial[start:min(start + size, self.n_s)])


def _dataset_hints(prefetch, cache):
    """The reference's TensorFlow dataset hints for aggregated arrays, checked as it checks
    them (``prefetch`` None or an int such as ``tf.data.AUTOTUNE``, ``cache`` a bool) and kept
    unused: the batches here are slices of host arrays, with nothing to prefetch or cache."""
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int)):
        raise TypeError(f"prefetch must be None or an int (tf.data.AUTOTUNE); got "
                        f"{type(prefetch).__name__}.")
    return prefetch, _bool("cache", cache)


class AggregatedGradientIMNN(_AggregatedArrays):
    """:class:`GradientIMNN` whose summaries and gradients are computed ``n_per_device``
    simulations at a time on ``devices`` (round robin) and summed on ``host``: for simulation
    sets or networks too large for one device. A last, smaller batch is allowed."""

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, fiducial, derivative, host=CPU, devices=HOST_ONLY,
                 n_per_device=100, validation_fiducial=None, validation_derivative=None,
                 prefetch=None, cache=False):
        _IMNN.__init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                       optimiser, key_or_state)
        self._set_data(fiducial, derivative, validation_fiducial, validation_derivative,
                       self.input_shape + (self.n_params,))
        self._to_host()
        self._setup_devices(host, devices, n_per_device)
        self.prefetch, self.cache = _dataset_hints(prefetch, cache)


class AggregatedNumericalGradientIMNN(_AggregatedArrays):
    """:class:`NumericalGradientIMNN`, aggregated as :class:`AggregatedGradientIMNN`."""

    _mode = "numerical"

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, fiducial, derivative, δθ, host=CPU, devices=HOST_ONLY,
                 n_per_device=100, validation_fiducial=None, validation_derivative=None,
                 prefetch=None, cache=False):
        _IMNN.__init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                       optimiser, key_or_state)
        self.δθ = jnp.asarray(_steps(δθ, self.n_params))
        self._set_data(fiducial, derivative, validation_fiducial, validation_derivative,
                       (2, self.n_params) + self.input_shape)
        self._to_host()
        self._setup_devices(host, devices, n_per_device)
        self.prefetch, self.cache = _dataset_hints(prefetch, cache)


class AggregatedSimulatorIMNN(_Aggregated):
    """:class:`SimulatorIMNN` computed ``n_per_device`` simulations at a time on ``devices``
    (round robin), summed on ``host``: simulations are made on the fly, batch by batch, from the
    iteration's key, so the whole set is never held at once. For the same key and weights its
    summaries are :class:`SimulatorIMNN`'s (the same keys, ``split(key, n_s)``, the first
    ``n_d`` with derivatives), and so are its gradients, up to float rounding."""

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, simulator, host=CPU, devices=HOST_ONLY, n_per_device=100):
        _IMNN.__init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                       optimiser, key_or_state)
        self.simulator = _simulator(simulator)
        self.simulate = True
        self._setup_devices(host, devices, n_per_device)
        self._key = None

        def simulate(keys, θ):
            return jax.vmap(lambda k: simulator(k, θ))(keys)

        def with_derivative(keys, θ):
            return jax.vmap(lambda k: (simulator(k, θ), jax.jacfwd(simulator, argnums=1)(k, θ)))(
                keys)
        self._simulate = jax.jit(simulate)
        self._simulate_with_derivative = jax.jit(with_derivative)

    def get_summaries(self, w, key=None, validate=False):
        if key is None:
            raise ValueError("a PRNG key is needed to simulate: get_summaries(w, key=key).")
        self._key = key                 # get_gradient, called next, re-makes these simulations
        return super().get_summaries(w, key=key, validate=validate)

    def get_gradient(self, w, g_x, g_dx, validate=False, key=None):
        """As the other aggregated classes', on the simulations of ``key`` (default: those of
        the last :meth:`get_summaries`, which the fit calls first with the same key)."""
        if key is not None:
            self._key = key
        return super().get_gradient(w, g_x, g_dx, validate=validate)

    def batches(self, validate):
        if self._key is None:
            raise ValueError("no simulations yet: call get_summaries(w, key=key) first, or "
                             "give get_gradient a key.")
        keys = jax.random.split(self._key, self.n_s)
        size = self.n_per_device
        for start in range(0, self.n_d, size):
            fid, der = self._simulate_with_derivative(keys[start:min(start + size, self.n_d)],
                                                      self.θ_fid)
            yield Batch(fid, der)
        for start in range(self.n_d, self.n_s, size):
            yield Batch(self._simulate(keys[start:min(start + size, self.n_s)], self.θ_fid))


class _Dataset(_Aggregated):
    """Batches read from iterators, the reference's ``DatasetGradientIMNN`` contract: ``main``
    is one source per device of ``(fiducial [n_per_device, *input_shape], derivative [...])``
    batches, ``remaining`` one per device of fiducial batches. A source is a re-iterable
    (a list, or any object whose ``iter()`` starts over) or an endless iterator (a repeated
    dataset); each pass takes ``n_d / (n_devices n_per_device)`` main batches and
    ``(n_s - n_d) / (n_devices n_per_device)`` remaining batches from every device's source,
    so an endless iterator must repeat exactly that many batches."""

    def _set_sources(self, main, remaining, validation_main, validation_remaining,
                     derivative_shape):
        self._main_batches, self._rest_batches = self._batches_per_pass(
            ("n_d", self.n_d), ("n_s - n_d", self.n_s - self.n_d))
        self._derivative_shape = derivative_shape

        self.main = self._sources("main", main, self._main_batches)
        self.remaining = self._sources("remaining", remaining, self._rest_batches)
        if validation_main is None and validation_remaining is not None:
            raise ValueError("validation_remaining is given without validation_main.")
        if validation_main is not None:
            self.validation_main = self._sources("validation_main", validation_main,
                                                 self._main_batches)
            self.validation_remaining = self._sources(
                "validation_remaining", validation_remaining, self._rest_batches)
            self.validate = True

    def _batches_per_pass(self, *counts) -> list[int]:
        """Batches of ``n_per_device`` each device's source gives a pass, for each ``(name,
        count)`` of simulations: a count the devices' batches do not divide is refused."""
        per_pass = self.n_devices * self.n_per_device
        for name, count in counts:
            if count % per_pass:
                raise ValueError(f"{name} ({count}) is not a multiple of n_devices x "
                                 f"n_per_device ({self.n_devices} x {self.n_per_device}); the "
                                 "datasets' batches must divide the simulations evenly.")
        return [count // per_pass for _, count in counts]

    def _sources(self, name, value, needed):
        """A list with one batch source per device (an empty list where no batch is needed):
        None is a ValueError, anything but a list a TypeError, as the reference has it."""
        if value is None:
            raise ValueError(f"{name} is None; give a list with one batch source per device "
                             f"({self.n_devices}).")
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list with one batch source per device "
                            f"({self.n_devices}), e.g. [dataset.repeat().as_numpy_iterator()]; "
                            f"got {type(value).__name__}.")
        if (needed or value) and len(value) != self.n_devices:
            raise ValueError(f"{name} must hold one batch source per device "
                             f"({self.n_devices}); got {len(value)}.")
        return list(value)

    def batches(self, validate):
        main = self.validation_main if validate else self.main
        rest = self.validation_remaining if validate else self.remaining
        shape = (self.n_per_device,) + self.input_shape
        for device, source in enumerate(main):
            for j, item in enumerate(_take(source, self._main_batches)):
                fid, der = item
                yield Batch(check_array(f"main[{device}] batch {j} fiducial", fid, shape),
                            check_array(f"main[{device}] batch {j} derivative", der,
                                        (self.n_per_device,) + self._derivative_shape))
        for device, source in enumerate(rest if self._rest_batches else []):
            for j, fid in enumerate(_take(source, self._rest_batches)):
                yield Batch(check_array(f"remaining[{device}] batch {j}", fid, shape))


class _Rows:
    """Rows pulled from a stream of batches, ``take(k)`` at a time whatever the batches'
    sizes; at most one batch is held beyond what was taken."""

    def __init__(self, batches: Iterable):
        self._batches = iter(batches)
        self._held: list = []
        self._count = 0

    def take(self, k: int):
        while self._count < k:
            batch = next(self._batches)
            self._held.append(batch)
            self._count += len(batch)
        rows = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        self._held = [rows[k:]] if len(rows) > k else []
        self._count = len(rows) - k
        return rows[:k]


def _take(source, count):
    it = iter(source)
    for _ in range(count):
        try:
            yield next(it)
        except StopIteration:
            raise ValueError(f"a batch source ran out before giving {count} batches; give "
                             "re-iterable or repeating sources.") from None


class DatasetGradientIMNN(_Dataset):
    """:class:`AggregatedGradientIMNN` reading its simulations from batch sources (see
    :class:`_Dataset`): the whole set never needs to be in memory."""

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, host, devices, n_per_device, main, remaining,
                 validation_main=None, validation_remaining=None):
        _IMNN.__init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                       optimiser, key_or_state)
        self._setup_devices(host, devices, n_per_device)
        self._set_sources(main, remaining, validation_main, validation_remaining,
                          self.input_shape + (self.n_params,))


class DatasetNumericalGradientIMNN(_Dataset):
    """:class:`AggregatedNumericalGradientIMNN` reading batch sources, in the reference's form:
    ``fiducial`` one source per device of ``[n_per_device, *input_shape]`` batches (all
    ``n_s`` fiducial simulations, the first ``n_d`` being those with derivatives), and
    ``derivative`` one source per device of ``[n_per_device, *input_shape]`` batches of the
    derivative simulations laid out ``[n_d, 2, n_params, *input_shape]`` and flattened over
    its first three axes (the seeds of the first ``n_d`` fiducial simulations at
    ``θ_fid ∓ δθ/2`` in each parameter, as :class:`NumericalGradientIMNN`). ``n_s`` and
    ``2 n_params n_d`` must be multiples of ``n_devices x n_per_device``. A pass reads
    ``n_s / (n_devices n_per_device)`` fiducial and ``2 n_params n_d / (n_devices
    n_per_device)`` derivative batches from each device's source, device after device.

    Instead of ``fiducial`` and ``derivative``, ``main`` and ``remaining`` sources as
    :class:`DatasetGradientIMNN` reads them are taken too, main batches being
    ``(fiducial, derivative [n_per_device, 2, n_params, *input_shape])``."""

    _mode = "numerical"

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,
                 key_or_state, fiducial=None, derivative=None, δθ=None, host=CPU,
                 devices=HOST_ONLY, n_per_device=100, validation_fiducial=None,
                 validation_derivative=None, *, main=None, remaining=None,
                 validation_main=None, validation_remaining=None):
        _IMNN.__init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                       optimiser, key_or_state)
        self.δθ = jnp.asarray(_steps(δθ, self.n_params))
        self._setup_devices(host, devices, n_per_device)
        shape = (2, self.n_params) + self.input_shape
        self._flat = main is None and remaining is None
        extra = _given(fiducial=fiducial, derivative=derivative,
                       validation_fiducial=validation_fiducial,
                       validation_derivative=validation_derivative) if not self._flat else \
            _given(validation_main=validation_main, validation_remaining=validation_remaining)
        if extra:
            raise ValueError(f"{', '.join(extra)} given with "
                             f"{'fiducial and derivative' if self._flat else 'main and remaining'}"
                             ": give fiducial and derivative sources (and their validation "
                             "pair), or main and remaining (and theirs), not both.")
        if not self._flat:
            self._set_sources(main, remaining, validation_main, validation_remaining, shape)
            return
        self._fiducial_batches, self._derivative_batches = self._batches_per_pass(
            ("n_s", self.n_s), ("2 n_params n_d", 2 * self.n_params * self.n_d))
        self.fiducial = self._sources("fiducial", fiducial, True)
        self.derivative = self._sources("derivative", derivative, True)
        _both_or_neither("validation_fiducial", validation_fiducial, "validation_derivative",
                         validation_derivative)
        if validation_fiducial is not None:
            self.validation_fiducial = self._sources("validation_fiducial",
                                                     validation_fiducial, True)
            self.validation_derivative = self._sources("validation_derivative",
                                                       validation_derivative, True)
            self.validate = True

    def batches(self, validate):
        if not self._flat:
            yield from super().batches(validate)
            return
        shape = (self.n_per_device,) + self.input_shape

        def rows(sources, count, name):
            for device, source in enumerate(sources):
                for j, batch in enumerate(_take(source, count)):
                    yield check_array(f"{name}[{device}] batch {j}", batch, shape)
        prefix = "validation_" if validate else ""
        fiducial = _Rows(rows(getattr(self, prefix + "fiducial"), self._fiducial_batches,
                              prefix + "fiducial"))
        derivative = _Rows(rows(getattr(self, prefix + "derivative"),
                                self._derivative_batches, prefix + "derivative"))
        size, done = self.n_per_device, 0
        while done < self.n_d:
            k = min(size, self.n_d - done)
            yield Batch(fiducial.take(k), derivative.take(2 * self.n_params * k).reshape(
                (k, 2, self.n_params) + self.input_shape))
            done += k
        while done < self.n_s:
            k = min(size, self.n_s - done)
            yield Batch(fiducial.take(k))
            done += k


# -- the reference's IMNN(...): the class chosen from the arguments given ---------------------

def _given(**named) -> list[str]:
    return [name for name, value in named.items() if value is not None]


def _both_or_neither(a: str, a_value, b: str, b_value) -> None:
    if (a_value is None) != (b_value is None):
        have, lack = (a, b) if a_value is not None else (b, a)
        raise ValueError(f"{have} is given without {lack}; give both or neither.")


def _validation_sources(validation_fiducial, validation_derivative) -> dict:
    return {k: v for k, v in (("validation_fiducial", validation_fiducial),
                              ("validation_derivative", validation_derivative))
            if v is not None}


def _arrays_or_lists(simulator, fiducial, derivative, δθ, validation_fiducial,
                     validation_derivative, aggregate, cache, prefetch, sources) -> None:
    """The reference's first checks of ``fiducial`` and ``derivative``, in its order: arrays
    and lists of batch sources not mixed (TypeError), validation sets given in pairs with
    ``δθ`` (ValueError), lists only with ``δθ`` and the devices (TypeError)."""
    if fiducial is None or derivative is None or simulator is not None:
        return
    if not aggregate and (cache is not None or prefetch is not None):
        return
    lists = [isinstance(fiducial, list), isinstance(derivative, list)]
    if any(lists) and not all(lists):
        raise TypeError("fiducial and derivative must both be lists (of batch sources, one per "
                        "device) or both arrays.")
    if δθ is not None:
        _both_or_neither("validation_fiducial", validation_fiducial, "validation_derivative",
                         validation_derivative)
    if all(lists) and δθ is None:
        raise TypeError("fiducial and derivative are lists but δθ is not given: lists of batch "
                        "sources are for finite differences (with δθ); for simulations with "
                        "their derivatives from datasets, give main and remaining instead.")
    if all(lists) and not aggregate:
        raise TypeError("fiducial and derivative as lists of batch sources need host, devices "
                        "and n_per_device (the batches each device reads).")
    if validation_fiducial is None or validation_derivative is None:
        return
    every = lists + [isinstance(validation_fiducial, list),
                     isinstance(validation_derivative, list)]
    if any(every) and not all(every):
        if sources:
            raise ValueError(f"{', '.join(sources)} given with fiducial and derivative: give one "
                             "source of simulations only.")
        raise TypeError("fiducial, derivative, validation_fiducial and validation_derivative "
                        "must all be lists (of batch sources) or all arrays.")


def _derivative_shape(name: str, value, expected: tuple, hint: str) -> None:
    if not hasattr(value, "shape"):
        raise TypeError(f"{name} must be an array with a shape; got {type(value).__name__}.")
    if tuple(value.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {expected} {hint}.")


def IMNN(n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser,  # noqa: N802
         key_or_state, simulator=None, fiducial=None, derivative=None, main=None,
         remaining=None, δθ=None, validation_fiducial=None, validation_derivative=None,
         validation_main=None, validation_remaining=None, host=None, devices=None,
         n_per_device=None, cache=None, prefetch=None, verbose=True):
    """The reference's ``IMNN(...)``: builds the class its arguments call for.

    - where the simulations come from, exactly one of: ``simulator`` (made on the fly:
      :class:`SimulatorIMNN`), ``fiducial`` and ``derivative`` arrays (:class:`GradientIMNN`;
      with ``δθ``, finite differences: :class:`NumericalGradientIMNN`), or ``main`` and
      ``remaining`` batch sources (:class:`DatasetGradientIMNN`);
    - ``host``, ``devices`` and ``n_per_device`` together (all three or none) ask for the
      aggregated class of each (:class:`AggregatedSimulatorIMNN`,
      :class:`AggregatedGradientIMNN`, :class:`AggregatedNumericalGradientIMNN`); batch sources
      need them;
    - validation data goes with its kind: ``validation_fiducial`` and
      ``validation_derivative`` with arrays, ``validation_main`` and ``validation_remaining``
      with batch sources, none with a simulator.

    ``cache`` and ``prefetch`` are the reference's TensorFlow dataset hints for aggregated
    arrays: accepted there (and nowhere else, as the reference) and unused, since no TensorFlow
    dataset is built here. ``verbose`` prints the class chosen. Misuse raises what the
    reference raises (``ValueError`` for a missing or extra argument or a wrong shape,
    ``TypeError`` for a wrong kind), with messages of our own. ``fiducial`` and
    ``derivative`` given as lists of batch sources with ``δθ`` build
    :class:`DatasetNumericalGradientIMNN`, as in the reference.
    """
    common = dict(n_s=n_s, n_d=n_d, n_params=n_params, n_summaries=n_summaries,
                  input_shape=input_shape, θ_fid=θ_fid, model=model, optimiser=optimiser,
                  key_or_state=key_or_state)
    keras = [name for name, value in (("model", model), ("optimiser", optimiser))
             if type(value).__module__.split(".")[0] in ("keras", "tensorflow", "tf_keras")]
    if keras:
        raise ValueError(f"{' and '.join(keras)} from Keras: gio_core.imnn is the JAX IMNN; give "
                         "a stax (init_fn, apply_fn) pair and an optax or "
                         "jax.example_libraries optimiser (the reference's TensorFlow IMNN is "
                         "not part of gio-spark).")
    spread = _given(host=host, devices=devices, n_per_device=n_per_device)
    if spread and len(spread) < 3:
        lacking = [n for n in ("host", "devices", "n_per_device") if n not in spread]
        raise ValueError(f"{' and '.join(spread)} given without {' and '.join(lacking)}: to "
                         "aggregate, give all three (e.g. host=jax.devices('cpu')[0], "
                         "devices=jax.devices(), n_per_device=100), or none.")
    aggregate = bool(spread)
    if aggregate:
        common.update(host=host, devices=devices, n_per_device=n_per_device)
    _arrays_or_lists(simulator, fiducial, derivative, δθ, validation_fiducial,
                     validation_derivative, aggregate, cache, prefetch,
                     _given(main=main, remaining=remaining, validation_main=validation_main,
                            validation_remaining=validation_remaining))
    sources = {"simulator": _given(simulator=simulator),
               "arrays": _given(fiducial=fiducial, derivative=derivative),
               "datasets": _given(main=main, remaining=remaining)}
    kinds = [kind for kind, names in sources.items() if names]
    if not kinds:
        raise ValueError("no simulations given: pass simulator, or fiducial and derivative, or "
                         "main and remaining.")
    if len(kinds) > 1:
        named = " and ".join("/".join(sources[k]) for k in kinds)
        raise ValueError(f"{named} given: pass one source of simulations only (simulator, or "
                         "fiducial and derivative, or main and remaining).")
    kind = kinds[0]
    hints = _given(cache=cache, prefetch=prefetch)
    if hints and not (aggregate and kind == "arrays"):
        raise ValueError(f"{' and '.join(hints)} apply only to aggregated fiducial and "
                         "derivative arrays (with host, devices and n_per_device); leave "
                         "them out here.")

    def chosen(cls, **more):
        if verbose:
            print(f"using {cls.__name__}")       # the reference says which class it built
        return cls(**common, **more)

    if kind == "simulator":
        extra = _given(validation_fiducial=validation_fiducial,
                       validation_derivative=validation_derivative,
                       validation_main=validation_main, validation_remaining=validation_remaining,
                       δθ=δθ)
        if extra:
            raise ValueError(f"{', '.join(extra)} given with simulator: a simulator makes its "
                             "own simulations (and their derivatives); leave them out.")
        return chosen(AggregatedSimulatorIMNN if aggregate else SimulatorIMNN,
                      simulator=simulator)

    if kind == "datasets":
        _both_or_neither("main", main, "remaining", remaining)
        _both_or_neither("validation_main", validation_main, "validation_remaining",
                         validation_remaining)
        extra = _given(validation_fiducial=validation_fiducial,
                       validation_derivative=validation_derivative, δθ=δθ)
        if extra:
            raise ValueError(f"{', '.join(extra)} given with main and remaining: those hold "
                             "simulations with their derivatives (validate with "
                             "validation_main and validation_remaining); leave them out, or, "
                             "for finite differences from batch sources, give fiducial and "
                             "derivative lists with δθ, or build "
                             "DatasetNumericalGradientIMNN(..., δθ=δθ, main=..., "
                             "remaining=...) directly.")
        if not aggregate:
            raise ValueError("main and remaining need host, devices and n_per_device (the "
                             "batches each device reads).")
        # (δθ with main and remaining is refused above, as the reference refuses it)
        return chosen(DatasetGradientIMNN, main=main, remaining=remaining,
                      validation_main=validation_main,
                      validation_remaining=validation_remaining)

    _both_or_neither("fiducial", fiducial, "derivative", derivative)
    _both_or_neither("validation_fiducial", validation_fiducial, "validation_derivative",
                     validation_derivative)
    extra = _given(validation_main=validation_main, validation_remaining=validation_remaining)
    if extra:
        raise ValueError(f"{', '.join(extra)} given with fiducial and derivative; validate "
                         "with validation_fiducial and validation_derivative instead.")
    pairs = [("fiducial", fiducial, "derivative", derivative)]
    if validation_fiducial is not None:
        pairs.append(("validation_fiducial", validation_fiducial, "validation_derivative",
                      validation_derivative))
        if isinstance(fiducial, list) != isinstance(validation_fiducial, list):
            raise TypeError("fiducial and validation_fiducial must both be lists (of dataset "
                            "iterators) or both arrays.")
    for a, a_value, b, b_value in pairs:
        if isinstance(a_value, list) != isinstance(b_value, list):
            raise TypeError(f"{a} and {b} must both be lists (of dataset iterators) or both "
                            "arrays.")
    if isinstance(fiducial, list):
        if hints:
            raise ValueError(f"{' and '.join(hints)} apply only to fiducial and derivative "
                             "arrays, not to lists of batch sources; leave them out.")
        if δθ is None:
            raise TypeError("fiducial and derivative are lists but δθ is not given: for "
                            "simulations with their derivatives from datasets, give main and "
                            "remaining instead.")
        return chosen(DatasetNumericalGradientIMNN, fiducial=fiducial, derivative=derivative,
                      δθ=δθ, **_validation_sources(validation_fiducial, validation_derivative))
    n_d_checked = _int("n_d", n_d, 1)
    shape = _shape("input_shape", input_shape)
    params = _int("n_params", n_params)
    validation = dict(validation_fiducial=validation_fiducial,
                      validation_derivative=validation_derivative)
    if δθ is None:
        expected = (n_d_checked,) + shape + (params,)
        hint = "(n_d, *input_shape, n_params); for finite differences give δθ"
    else:
        expected = (n_d_checked, 2, params) + shape
        hint = ("(n_d, 2, n_params, *input_shape): simulations below and above θ_fid; without "
                "finite differences leave δθ out")
    for name, value in (("derivative", derivative),
                        ("validation_derivative", validation_derivative)):
        if value is not None:
            _derivative_shape(name, value, expected, hint)
    if δθ is None:
        return chosen(AggregatedGradientIMNN if aggregate else GradientIMNN,
                      fiducial=fiducial, derivative=derivative, **validation)
    return chosen(AggregatedNumericalGradientIMNN if aggregate else NumericalGradientIMNN,
                  fiducial=fiducial, derivative=derivative, δθ=δθ, **validation)


class Estimator(NamedTuple):
    """A fitted IMNN reduced to what estimation needs (see ``jobs.stages.imnn.load_estimator``)."""
    apply_fn: Callable
    w: Any
    θ_fid: Any            # [n_params]
    F: Any                # [n_params, n_params]
    invF: Any
    invC: Any             # [n_summaries, n_summaries]
    dμ_dθ: Any            # [n_summaries, n_params]
    μ: Any                # [n_summaries]

    def summaries(self, d):
        """Network outputs of a batch ``[n, *input_shape]``."""
        return self.apply_fn(self.w, jnp.asarray(d))

    def estimate(self, d):
        """Score-compressed estimates ``[n, n_params]`` of a batch ``[n, *input_shape]``."""
        return score_estimate(self.θ_fid, self.invF, self.dμ_dθ, self.invC, self.μ,
                              self.summaries(d))


# ---------------------------------------------------------------------------
# Weights to bytes (for storing a fitted network)
# ---------------------------------------------------------------------------

def weights_to_bytes(w) -> bytes:
    """The network's weights as one float32 vector's bytes (restore with
    :func:`weights_from_bytes` and a template of the same network)."""
    flat, _ = ravel_pytree(w)
    return np.asarray(flat, np.float32).tobytes()


def weights_from_bytes(data: bytes, template):
    flat, unravel = ravel_pytree(template)
    values = np.frombuffer(data, np.float32)
    if values.size != flat.size:
        raise ValueError(f"the stored weights hold {values.size} values; this network has "
                         f"{flat.size}: the network settings differ from the fitted one's.")
    return unravel(jnp.asarray(values))


# The reference's imnn.lfi (its Gaussian approximation), importable from here as from there.
from gio_core.imnn_lfi import (ApproximateBayesianComputation,  # noqa: E402,F401
                               GaussianApproximation, LikelihoodFreeInference,
                               PopulationMonteCarlo)
