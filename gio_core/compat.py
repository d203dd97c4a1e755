"""A drop-in for the GIO source package's ``GIOKL`` class (numerics only).

``from gio_core import GIOKL`` replaces ``from GIO import GIOKL``; ``fit`` and
``calculate_statistical_distance`` keep the source's signatures, defaults and
results, including its quirks, so existing scripts give the same selections:

* ``max_iter=N`` adds N + 1 points;
* the returned ``W`` starts with the start set (uniform, random or ``D``);
* ``'max_resets'`` and ``'sequential_increase_tolerance'`` never fire (as in the
  source; use :func:`gio_core.select` for rules that do);
* inputs are checked, though: NaN rows, dimension mismatches and a ``k`` too
  large for the target raise ``ValueError`` where the source ran silently.

What differs is the engine: fixed shapes, jit and incremental sums instead of
re-tracing a growing array every step. Without ``seed`` the class draws from
NumPy's and Python's global generators exactly where the source does; with a
``seed`` it uses its own generator and touches no global state.

``GIOKL.GIOKL`` is the class itself (the source README's ``from GIO import GIOKL`` gives
its module), and ``gradient_descend`` is public, as in the source.

The Spark-side methods (``quantize``, ``explode``, the readers) belong to the
pipeline package ``jobs``, since this package never imports Spark.
"""
from __future__ import annotations

import logging
import random

import jax
import jax.numpy as jnp
import numpy as np

from gio_core._engines import AveragedEngine
from gio_core._estimators import averaged_kl_reference, averaged_kl_reference_jit
from gio_core._selection import UniformStart, uniform_points
from gio_core._validation import as_points, check_choice, check_k, same_dim

log = logging.getLogger(__name__)

_SOURCE_STOP_CRITERIA = ("increase", "max_resets", "min_difference",
                         "sequential_increase_tolerance", "min_kl", "data_size")


class _GlobalRandom:
    """The source's randomness: NumPy's global generator and Python's ``random``."""

    def uniform(self, low, high, shape):
        return np.random.uniform(low=low, high=high, size=shape)

    def random(self):
        return random.random()

    def sample_index(self, n, count):
        return random.sample(range(n), count)


class _SeededRandom:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def uniform(self, low, high, shape):
        return self.rng.uniform(low, high, shape)

    def random(self):
        return self.rng.random()

    def sample_index(self, n, count):
        return list(self.rng.choice(n, size=count, replace=False))


class GIOKL:
    """Gradient Information Optimization with the source's KL estimator.

    Args:
      uniform_low, uniform_high, uniform_start_size, dim: the uniform start set drawn when
        ``fit`` gets no ``D`` and no ``random_init_pct``.
      seed: optional int; when given, all randomness comes from it.

    Example:
      >>> gio = GIOKL(uniform_low=0, uniform_high=8, uniform_start_size=100, dim=2)
      >>> W, kl_divs, _ = gio.fit(pool, target, normalize=False)
      >>> chosen = W[100:]           # drop the uniform start
    """

    def __init__(self, uniform_low=-1, uniform_high=1, uniform_start_size=20, dim=768, seed=None):
        self.uniform_low = uniform_low
        self.uniform_high = uniform_high
        self.uniform_start_size = uniform_start_size
        self.dim = dim
        self.seed = seed
        self.random_init = False
        self._random = _GlobalRandom() if seed is None else _SeededRandom(seed)

    def calculate_statistical_distance(self, x, y, k=5, eps=1e-8, discard_nearest_for_xy=False):
        """KL(x || y) by the source's estimator; ``x`` is the target, ``y`` the selected set."""
        x = as_points("x", x)
        y = as_points("y", y)
        same_dim(x=x, y=y)
        check_k(k, x.shape[0])
        return averaged_kl_reference(x, y, k, eps, discard_nearest_for_xy)

    def gradient_descend(self, X, W, v, scaling_factor, max_iterations, lr=0.01, k=5,
                         discard_nearest_for_xy=False):
        """Moves ``v`` by ``max_iterations`` gradient steps of ``lr * scaling_factor`` down the
        KL from the target ``X`` to ``W`` with ``v`` added, as the source's method does (the
        step GIO takes before it picks the pool point nearest ``v``); returns the new ``v``."""
        x = as_points("X", X)
        w = as_points("W", W)
        v = jnp.asarray(v, dtype=w.dtype)
        same_dim(X=x, W=w)
        if v.shape != (w.shape[1],):
            raise ValueError(f"v must be one point of {w.shape[1]} dimensions; got shape "
                             f"{tuple(v.shape)}.")
        check_k(k, x.shape[0])
        # Not jitted, as in the source: near a kink of the estimator (v about as near two
        # points) fused float32 arithmetic takes another path within a few dozen steps.
        gradient = jax.grad(lambda p: averaged_kl_reference(
            x, jnp.concatenate((w, p[None, :])), k, 1e-8, discard_nearest_for_xy))
        for _ in range(int(max_iterations)):
            v = v - lr * scaling_factor * gradient(v)
        return v

    def _get_uniform_start(self, do_normalize):
        spec = UniformStart(self.uniform_low, self.uniform_high, self.uniform_start_size,
                            bool(do_normalize))
        return jnp.asarray(uniform_points(spec, self.dim, self._random.uniform))

    def fit(self, train, X, D=None, k=5, max_iter=100, stop_criterion="increase",
            min_difference=0, resets_allowed=False, max_resets=2, max_data_size=1, min_kl=0,
            max_sequential_increases=3, random_init_pct=0, random_restart_prob=0,
            scale_factor="auto", v_init="mean", grad_desc_iter=50,
            discard_nearest_for_xy=False, normalize=True, lr=0.01):
        """Run GIO as the source does.

        Args:
          train: pool ``[M, D]``; X: target ``[N, D]``; D: optional start set ``[s, D]``.
          Other arguments: as in the source (see the README's option table).
        Returns:
          ``(W, kl_divs, (v, scale_factor, just_reset, num_resets, increases, adder, kl_divs))``
          where ``W`` is the start set followed by the picks and ``adder`` the pool rows left.
        """
        pool = as_points("train", train)
        target = as_points("X", X)
        same_dim(train=pool, X=target)
        k = check_k(k, target.shape[0])
        check_choice("stop_criterion", stop_criterion, _SOURCE_STOP_CRITERIA)
        check_choice("v_init", v_init, ("mean", "prev_opt", "jump"))
        rnd = self._random

        if not random_init_pct and D is None:
            start = np.asarray(self._get_uniform_start(normalize))
            self.random_init = True
        elif D is None:
            rows = rnd.sample_index(pool.shape[0], int(random_init_pct * pool.shape[0]))
            start = pool[np.asarray(rows, np.int64)]
        else:
            start = as_points("D", D)
        same_dim(train=pool, D=start)

        ones = jnp.ones
        engine = AveragedEngine(jnp.asarray(target), ones((target.shape[0],), jnp.float32),
                                jnp.asarray(pool), ones((pool.shape[0],), jnp.float32), k,
                                discard_nearest_for_xy=discard_nearest_for_xy)
        state = engine.initial_state(jnp.asarray(start), ones((start.shape[0],), jnp.float32))
        kl_prev = float(averaged_kl_reference_jit(target, start, k, 1e-8,
                                                  discard_nearest_for_xy=discard_nearest_for_xy))
        log.info("Starting KL: %s", kl_prev)

        def fresh_v():
            if v_init == "jump":
                return target[rnd.sample_index(target.shape[0], 1)[0]]
            return target.mean(axis=0)

        v = fresh_v()
        if scale_factor == "auto":
            scale_factor = float(np.linalg.norm(v)) / engine.gradient_norm(state, jnp.asarray(v))
        lr_scale = lr * scale_factor

        available = np.ones(pool.shape[0], bool)
        picks, kl_divs = [], []
        i, total_iter, num_resets, increases, just_reset = 0, 0, 0, 0, False
        while True:
            long = i == 0 or just_reset or rnd.random() < random_restart_prob
            v_opt, row, kl = engine.propose_gradient(
                state, jnp.asarray(available), jnp.asarray(v),
                grad_desc_iter * 3 if long else grad_desc_iter, lr_scale)
            v = np.asarray(v_opt)
            available[row] = False
            log.info("KL Divergence at iteration %d: %s", i, kl)
            if total_iter > max_iter:
                break
            if v_init in ("mean", "jump"):
                v = fresh_v()

            # The source's stopping test, quirks included.
            stop = ((stop_criterion == "increase" and kl - kl_prev > 0)
                    or (stop_criterion == "max_resets" and kl - kl_prev > 0
                        and num_resets == max_resets)
                    or (stop_criterion == "min_difference" and kl_prev - kl < min_difference)
                    or (stop_criterion == "sequential_increase_tolerance" and kl - kl_prev > 0
                        and increases == max_sequential_increases)
                    or (stop_criterion == "min_kl" and kl < min_kl)
                    or (stop_criterion == "data_size" and i > int(max_data_size * pool.shape[0])))
            if stop:
                if just_reset:
                    increases += 1
                if resets_allowed and num_resets < max_resets:
                    num_resets += 1
                    if v_init == "prev_opt":
                        v = target.mean(axis=0)
                    log.info("KL Div Increase, Resetting G")
                    available[:] = True
                    i -= 1
                    stop = False
                just_reset = True
            else:
                just_reset = False
                increases = 0
            if stop:
                break
            if not just_reset:
                state = engine.accept(state, row)
                picks.append(row)
                kl_divs.append(kl)
                kl_prev = kl
                i += 1
                total_iter += 1

        W = jnp.asarray(np.concatenate([start, pool[np.asarray(picks, np.int64)]]))
        adder = jnp.asarray(pool[available])
        return W, kl_divs, (jnp.asarray(v), scale_factor, just_reset, num_resets, increases,
                            adder, kl_divs)


# The source's README imports its module (``from GIO import GIOKL``) and builds
# ``GIOKL.GIOKL(...)``; here ``GIOKL`` is the class, and ``GIOKL.GIOKL`` is that class again, so
# that code runs with only its import line changed.
GIOKL.GIOKL = GIOKL  # type: ignore[attr-defined]  # (the class body cannot name it)
