"""Likelihood-free inference with IMNN estimates: the reference's ``imnn.lfi`` (part of it).

An IMNN gives, for observed data ``d``, a parameter estimate ``θ̂(d)`` (its score compression)
and the inverse Fisher information ``F⁻¹`` of its summaries. The simplest posterior these
give is a Gaussian centred on ``θ̂`` with covariance ``F⁻¹`` (the Cramér-Rao bound): this
module evaluates it on a grid spanning the prior's support, as one- and two-parameter
marginals, and draws them as a triangle plot.

* :class:`LikelihoodFreeInference`: the grid (``prior.low`` to ``prior.high`` in each
  parameter, ``gridsize`` points), marginals from a density over the whole grid
  (:meth:`~LikelihoodFreeInference.put_marginals`), highest-density contour levels
  (:meth:`~LikelihoodFreeInference.get_levels`) and the triangle plot
  (:meth:`~LikelihoodFreeInference.marginal_plot`; matplotlib, imported there only).
* :class:`GaussianApproximation`: those marginals for a Gaussian at each target's estimate.
* :class:`ApproximateBayesianComputation`: rejection ABC: parameters drawn from the prior,
  simulated, compressed (by the IMNN's ``get_estimate``, say), and kept where their summaries
  lie within ``ϵ`` of each target's (Euclidean, or weighted by the Fisher information ``F``);
  the kept parameters' histograms are the marginals.

Marginals are kept as the reference keeps them: ``marginals[i][i]`` is ``[n_targets,
gridsize[i]]``, the density of parameter ``i``; ``marginals[i][j]`` for ``j < i`` is
``[n_targets, gridsize[j], gridsize[i]]``, the joint density of parameters ``i`` and ``j``
(parameter ``j`` along the first grid axis).

The prior is any object with ``low`` and ``high`` (one bound per parameter), such as the
reference's ``tfpd.Uniform``-based priors; ``event_shape`` is read where it has one; ABC also
draws from it with ``prior.sample(n, seed=key)`` (TensorFlow Probability's signature).
* :class:`PopulationMonteCarlo`: ABC whose population of nearest simulations is moved, round
  after round, towards each target (the prior's ``prob`` weighs it where the prior has one).
"""
from __future__ import annotations

import jax
import numpy as np

LEVELS = (0.68, 0.95)


class LikelihoodFreeInference:
    """The grid and the marginals of a posterior over ``prior``'s support (see the module's
    docstring). ``gridsize``: points per parameter (an int, or one per parameter)."""

    def __init__(self, prior, gridsize=100, marginals=None):
        if not (hasattr(prior, "low") and hasattr(prior, "high")):
            raise ValueError("prior must have low and high attributes: the least and the most "
                             "value of each parameter (the grid spans them).")
        self.prior = prior
        low = np.atleast_1d(np.asarray(prior.low, np.float64))
        high = np.atleast_1d(np.asarray(prior.high, np.float64))
        shape = getattr(prior, "event_shape", None)
        try:
            self.n_params = int(shape[0]) if shape is not None and len(shape) else len(low)
        except TypeError:
            self.n_params = len(low)
        low = np.broadcast_to(low, (self.n_params,))
        high = np.broadcast_to(high, (self.n_params,))
        if not np.all(high > low):
            raise ValueError(f"the prior's high ({high.tolist()}) must exceed its low "
                             f"({low.tolist()}) in every parameter.")
        self.gridsize = self.get_gridsize(gridsize, self.n_params)
        self.ranges = [np.linspace(low[i], high[i], self.gridsize[i])
                       for i in range(self.n_params)]
        self.n_targets = None
        self.marginals = self.put_marginals(marginals)

    @staticmethod
    def get_gridsize(gridsize, size: int) -> list[int]:
        """``gridsize`` as one count per parameter: an int for all, or a list of ``size``."""
        if isinstance(gridsize, (int, np.integer)) and not isinstance(gridsize, bool):
            return [int(gridsize)] * size
        if isinstance(gridsize, (list, tuple)):
            if len(gridsize) != size:
                raise ValueError(f"gridsize lists {len(gridsize)} counts; there are {size} "
                                 "parameters.")
            return [int(g) for g in gridsize]
        raise TypeError(f"gridsize must be an int or a list of ints; got "
                        f"{type(gridsize).__name__}.")

    @staticmethod
    def get_levels(marginal, ranges, levels=LEVELS) -> list[float]:
        """The density values whose contours enclose the ``levels`` (shares of the mass) of
        ``marginal``, highest density first: for the widest level first, as contour plots want
        them increasing; a level that would repeat a lower one's value is dropped."""
        values = np.sort(np.asarray(marginal, np.float64).ravel())[::-1]
        mass = np.cumsum(values) / values.sum()
        found: list[float] = []
        for level in sorted(levels, reverse=True):
            value = float(values[np.argmin(np.abs(mass - level))])
            if found and value <= found[-1]:
                break
            found.append(value)
        return found

    def put_marginals(self, marginals):
        """Marginals (the layout in the module's docstring) of a density given over the whole
        grid, ``[n_targets, *gridsize]``; None stays None. Each one-parameter marginal is
        normalised to integrate to 1 over its range."""
        if marginals is None:
            return None
        density = np.asarray(marginals, np.float64)
        n = self.n_params
        out: list[list] = []
        for i in range(n):
            out.append([])
            for j in range(i + 1):
                if i == j:
                    one = density.sum(axis=tuple(a + 1 for a in range(n) if a != i))
                    step = self.ranges[i][1] - self.ranges[i][0]
                    out[i].append(one / (one.sum(axis=1, keepdims=True) * step))
                else:
                    out[i].append(density.sum(axis=tuple(a + 1 for a in range(n)
                                                          if a not in (i, j))))
        self.marginals = out
        return out

    def target_choice(self, target=None) -> tuple[list[int], int]:
        """Which targets to draw: all (None), a list of indices, or one index."""
        if target is None:
            if self.n_targets is None:
                raise ValueError("there are no targets yet: give the marginals first.")
            return list(range(self.n_targets)), self.n_targets
        if isinstance(target, (list, tuple)):
            return list(target), len(target)
        if isinstance(target, (int, np.integer)):
            return [int(target)], 1
        raise ValueError("target must be None (every target), a list of target indices or "
                         "one index.")

    def marginal_plot(self, ax=None, ranges=None, marginals=None, known=None, label=None,
                      axis_labels=None, levels=None, linestyle="solid", colours=None,
                      target=None, format=False, ncol=2, bbox_to_anchor=(1.0, 1.0),  # noqa: A002
                      figsize=(10, 10)):
        """A triangle plot of the marginals (matplotlib): each parameter's density on the
        diagonal, each pair's highest-density contours (``levels``, default 68% and 95%)
        below it. ``known``: the true parameters, drawn as lines; ``colours``: one colour or
        one per target; ``ax``: an earlier plot's axes to draw on (the reference's way of
        overlaying several posteriors). Returns the axes (``[n_params, n_params]``)."""
        import matplotlib.pyplot as plt

        ranges = self.ranges if ranges is None else ranges
        marginals = self.marginals if marginals is None else marginals
        if marginals is None:
            raise ValueError("there are no marginals to plot yet.")
        targets, n_targets = self.target_choice(target)
        levels = list(LEVELS) if levels is None else list(levels)
        if colours is None or isinstance(colours, str):
            colours = [colours or f"C{t % 10}" for t in range(n_targets)]
        n = self.n_params
        if ax is None:
            _, ax = plt.subplots(n, n, figsize=figsize, squeeze=False)
            for i in range(n):
                for j in range(i + 1, n):
                    ax[i, j].axis("off")
        known = None if known is None else np.atleast_2d(np.asarray(known, np.float64))
        for k, t in enumerate(targets):
            colour = colours[k % len(colours)]
            for i in range(n):
                diagonal = np.asarray(marginals[i][i])[t]
                ax[i, i].plot(ranges[i], diagonal, color=colour, linestyle=linestyle,
                              label=(label if k == 0 else None))
                ax[i, i].set_yticks([])
                for j in range(i):
                    joint = np.asarray(marginals[i][j])[t]          # [grid j, grid i]
                    drawn = self.get_levels(joint, [ranges[j], ranges[i]], levels)
                    ax[i, j].contour(ranges[j], ranges[i], joint.T, levels=sorted(drawn),
                                     colors=colour, linestyles=linestyle)
            if known is not None:
                truth = known[min(k, len(known) - 1)]
                for i in range(n):
                    ax[i, i].axvline(truth[i], color="black", linestyle="dashed", linewidth=1)
                    for j in range(i):
                        ax[i, j].axvline(truth[j], color="black", linestyle="dashed",
                                         linewidth=1)
                        ax[i, j].axhline(truth[i], color="black", linestyle="dashed",
                                         linewidth=1)
        if axis_labels is not None:
            for i in range(n):
                ax[n - 1, i].set_xlabel(axis_labels[i])
                if i > 0:
                    ax[i, 0].set_ylabel(axis_labels[i])
        if label is not None:
            ax[0, 0].legend(frameon=False, ncol=ncol, bbox_to_anchor=bbox_to_anchor,
                            loc="upper left")
        return ax


class GaussianApproximation(LikelihoodFreeInference):
    """The Gaussian approximation to the posterior at each target: mean the IMNN's estimate
    ``parameter_estimates`` (``[n_params]`` or ``[n_targets, n_params]``, from
    ``get_estimate``), covariance ``invF`` (``[n_params, n_params]``, or one per target), on
    the prior's grid. ``marginals`` is set at construction."""

    def __init__(self, parameter_estimates, invF, prior, gridsize=100):  # noqa: N803
        super().__init__(prior=prior, gridsize=gridsize)
        estimates = np.asarray(parameter_estimates, np.float64)
        estimates = estimates.reshape(1, -1) if estimates.ndim <= 1 else estimates
        if estimates.shape[-1] != self.n_params:
            raise ValueError(f"parameter_estimates has {estimates.shape[-1]} parameters; the "
                             f"prior has {self.n_params}.")
        self.parameter_estimates = estimates
        self.n_targets = estimates.shape[0]
        inverse = np.asarray(invF, np.float64)
        if inverse.shape == (self.n_params, self.n_params):
            inverse = np.broadcast_to(inverse, (self.n_targets,) + inverse.shape)
        if inverse.shape != (self.n_targets, self.n_params, self.n_params):
            raise ValueError(f"invF has shape {inverse.shape}; expected ({self.n_params}, "
                             f"{self.n_params}) or one per target ({self.n_targets}, "
                             f"{self.n_params}, {self.n_params}).")
        self.invF = inverse
        self.marginals = self.get_marginals()

    def get_marginals(self, parameter_estimates=None, invF=None, ranges=None,  # noqa: N803
                      gridsize=None):
        """The Gaussian's marginals on the grid (the layout in the module's docstring)."""
        mean = self.parameter_estimates if parameter_estimates is None else np.asarray(
            parameter_estimates, np.float64).reshape(-1, self.n_params)
        cov = self.invF if invF is None else np.asarray(invF, np.float64).reshape(
            -1, self.n_params, self.n_params)
        ranges = self.ranges if ranges is None else ranges
        out: list[list] = []
        for i in range(self.n_params):
            out.append([])
            for j in range(i + 1):
                if i == j:
                    var = cov[:, i, i][:, None]
                    out[i].append(np.exp(-0.5 * (ranges[i][None, :] - mean[:, i:i + 1]) ** 2
                                         / var) / np.sqrt(2 * np.pi * var))
                    continue
                # the (i, j) pair: parameter j along the first grid axis, i along the second
                pair = cov[:, [i, j]][:, :, [i, j]]                       # [targets, 2, 2]
                det = pair[:, 0, 0] * pair[:, 1, 1] - pair[:, 0, 1] * pair[:, 1, 0]
                inv = np.stack([np.stack([pair[:, 1, 1], -pair[:, 0, 1]], -1),
                                np.stack([-pair[:, 1, 0], pair[:, 0, 0]], -1)], -2) \
                    / det[:, None, None]
                di = ranges[i][None, None, :] - mean[:, i, None, None]   # [t, 1, grid i]
                dj = ranges[j][None, :, None] - mean[:, j, None, None]   # [t, grid j, 1]
                quad = (inv[:, 0, 0, None, None] * di ** 2
                        + (inv[:, 0, 1] + inv[:, 1, 0])[:, None, None] * di * dj
                        + inv[:, 1, 1, None, None] * dj ** 2)
                out[i].append(np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(det))[:, None, None])
        return out


class _Record:
    """What ABC keeps of one kind of value (parameters, summaries or distances): ``all`` of
    them, and per target the ``accepted`` and ``rejected`` ones at ``ϵ``, ``n_accepted`` and
    ``size`` (the reference's ``container``)."""

    def __init__(self, **more):
        self.all = self.accepted = self.rejected = None
        self.ϵ = self.size = self.n_accepted = None
        self.__dict__.update(more)


class ApproximateBayesianComputation(LikelihoodFreeInference):
    """Rejection ABC around the targets ``target_data`` (``[*input_shape]`` or ``[n_targets,
    *input_shape]``): ``compressor(data)`` gives summaries ``[n, n_summaries]`` (an IMNN's
    ``get_estimate``), ``simulator(key, parameters)`` data for parameters ``[n, n_params]``.
    ``F`` (``[n_params, n_params]`` or one per target; the compressor must then give parameter
    estimates) weighs the distance as ``sqrt(Δᵀ F Δ)``; without it, the Euclidean distance;
    ``distance_measure(summaries, target_summary, F)`` replaces either.

    Calling it draws (or takes) simulations and accepts those within ``ϵ``; ``parameters``,
    ``summaries`` and ``distances`` keep them (``.all``, ``.accepted``, ``.rejected``, per
    target), and ``marginals`` are the accepted parameters' histograms on the prior's grid."""

    def __init__(self, target_data, prior, simulator, compressor, gridsize=100, F=None,  # noqa: N803
                 distance_measure=None):
        super().__init__(prior=prior, gridsize=gridsize)
        self.simulator = simulator
        self.compressor = compressor
        target = np.asarray(target_data)
        self.target_summaries = np.atleast_2d(np.asarray(compressor(
            target[None] if target.ndim <= 1 else target), np.float64))
        self.n_targets, self.n_summaries = self.target_summaries.shape
        if F is not None:
            if self.n_summaries != self.n_params:
                raise ValueError(f"weighing distances by F needs the compressor to give "
                                 f"parameter estimates ({self.n_params} values); it gives "
                                 f"{self.n_summaries} summaries.")
            fisher = np.asarray(F, np.float64)
            if fisher.shape == (self.n_params, self.n_params):
                fisher = np.broadcast_to(fisher, (self.n_targets,) + fisher.shape)
            if fisher.shape != (self.n_targets, self.n_params, self.n_params):
                raise ValueError(f"F has shape {fisher.shape}; expected ({self.n_params}, "
                                 f"{self.n_params}) or one per target.")
            self.F = np.array(fisher)
            self.distance_measure = self.F_distance
        else:
            self.F = np.zeros(self.n_targets)
            self.distance_measure = self.euclidean_distance
        if distance_measure is not None:
            self.distance_measure = distance_measure
        self.parameters = _Record(n_params=self.n_params)
        self.summaries = _Record(n_summaries=self.n_summaries)
        self.distances = _Record(n_targets=self.n_targets)

    @staticmethod
    def euclidean_distance(x, y, aux=None):
        """Each row of ``x`` to ``y``."""
        return np.sqrt(np.sum(np.square(np.asarray(x) - np.asarray(y)[None]), -1))

    @staticmethod
    def F_distance(x, y, F):  # noqa: N802,N803
        """Each row of ``x`` to ``y``, weighed by the Fisher information: ``sqrt(Δᵀ F Δ)``."""
        d = np.asarray(x) - np.asarray(y)[None]
        return np.sqrt(np.einsum("ik,kl,il->i", d, np.asarray(F), d))

    def _distances(self, summaries) -> np.ndarray:
        return np.stack([np.asarray(self.distance_measure(summaries, t, f), np.float64)
                         for t, f in zip(self.target_summaries, self.F, strict=True)])

    def get_samples(self, rng, n_samples: int, dist=None):
        """``n_samples`` parameters drawn from the prior (or ``dist``), simulated and
        compressed: ``(parameters, summaries)``."""
        rng, key = jax.random.split(rng)
        parameters = np.asarray((dist or self.prior).sample(n_samples, seed=rng))
        return parameters, np.asarray(self.compressor(self.simulator(key, parameters)))

    def set_samples(self, parameters, summaries, distances=None, replace=False) -> None:
        """Keeps these simulations (their distances to each target computed where not
        given), after the earlier ones unless ``replace``."""
        parameters = np.asarray(parameters)
        summaries = np.asarray(summaries)
        distances = self._distances(summaries) if distances is None else np.asarray(distances)
        if self.parameters.all is None or replace:
            self.parameters.all, self.summaries.all, self.distances.all = (
                parameters, summaries, distances)
        else:
            self.parameters.all = np.concatenate([self.parameters.all, parameters])
            self.summaries.all = np.concatenate([self.summaries.all, summaries])
            self.distances.all = np.concatenate([self.distances.all, distances], axis=1)
        self.parameters.size = self.summaries.size = len(self.parameters.all)
        self.distances.size = self.distances.all.shape[-1]

    def set_accepted(self, ϵ, smoothing=None) -> None:
        """Accepts, per target, the simulations within ``ϵ`` (one value, or one per target)
        and sets the marginals from them (``smoothing``: a Gaussian filter's width in grid
        cells)."""
        eps = np.broadcast_to(np.asarray(ϵ, np.float64), (self.n_targets,))
        accepted = self.distances.all < eps[:, None]
        for record in (self.parameters, self.summaries, self.distances):
            record.ϵ = ϵ
        self.parameters.accepted = [self.parameters.all[a] for a in accepted]
        self.parameters.rejected = [self.parameters.all[~a] for a in accepted]
        self.summaries.accepted = [self.summaries.all[a] for a in accepted]
        self.summaries.rejected = [self.summaries.all[~a] for a in accepted]
        self.distances.accepted = [self.distances.all[t, a] for t, a in enumerate(accepted)]
        self.distances.rejected = [self.distances.all[t, ~a] for t, a in enumerate(accepted)]
        counts = accepted.sum(axis=1)
        self.parameters.n_accepted = self.summaries.n_accepted = counts
        self.distances.n_accepted = counts
        self.marginals = self.get_marginals(smoothing=smoothing)

    def get_min_accepted(self, rng, ϵ, accepted: int, n_simulations: int = 1,
                         max_iterations: int = 10, smoothing=None, verbose: bool = True):
        """Simulations, ``n_simulations`` at a time, until every target has ``accepted``
        within ``ϵ`` (counting those already kept) or ``max_iterations`` rounds ran: the kept
        and new ``(parameters, summaries, distances)`` together."""
        parts = []
        if self.parameters.all is not None:
            parts.append((self.parameters.all, self.summaries.all, self.distances.all))
        eps = np.broadcast_to(np.asarray(ϵ, np.float64), (self.n_targets,))

        def count():
            return sum((d < eps[:, None]).sum(axis=1) for _, _, d in parts) if parts else \
                np.zeros(self.n_targets, np.int64)
        before, rounds = count(), 0
        while rounds < max_iterations and np.min(count()) < accepted:
            rng, key = jax.random.split(rng)
            parameters, summaries = self.get_samples(key, n_simulations)
            parts.append((parameters, summaries, self._distances(summaries)))
            rounds += 1
        if verbose:
            print(f"{count() - before} accepted in the last {rounds} rounds "  # noqa: T201
                  f"({n_simulations * rounds} simulations).")
        return (np.concatenate([p for p, _, _ in parts]), np.concatenate([s for _, s, _ in parts]),
                np.concatenate([d for _, _, d in parts], axis=1))

    def __call__(self, ϵ=None, rng=None, n_samples=None, parameters=None, summaries=None,
                 min_accepted=None, max_iterations=10, smoothing=None, replace=False):
        """Draws ``n_samples`` simulations with ``rng`` (or, with ``min_accepted``, as many
        rounds of them as give every target that many within ``ϵ``), or takes ``parameters``
        and ``summaries`` made elsewhere, then accepts at ``ϵ`` when given. Returns
        ``(parameters, distances, summaries)``."""
        drawing = rng is not None and n_samples is not None
        given = parameters is not None and summaries is not None
        if self.parameters.all is None and not drawing and not given:
            raise ValueError("there are no simulations yet: give rng and n_samples to draw "
                             "them, or parameters and summaries made elsewhere.")
        if min_accepted is not None and ϵ is None:
            raise ValueError("min_accepted needs ϵ: the distance within which a simulation "
                             "is accepted.")
        if drawing:
            if min_accepted is not None:
                self.set_samples(*self.get_min_accepted(rng, ϵ, min_accepted, n_samples,
                                                        max_iterations, smoothing),
                                 replace=True)
            else:
                self.set_samples(*self.get_samples(rng, n_samples), replace=replace)
        if given:
            self.set_samples(parameters, summaries, replace=replace)
        if ϵ is not None:
            self.set_accepted(ϵ, smoothing=smoothing)
        return self.parameters, self.distances, self.summaries

    def _scatter(self, ax, ranges, points, label, axis_labels, colours, hist, s, alpha,
                 figsize, linestyle, target, ncol, bbox_to_anchor):
        """A triangle of scatter plots of ``points`` (one ``[n, k]`` array per target) over
        ``ranges`` (one grid per column), each column's histogram on the diagonal."""
        import matplotlib.pyplot as plt

        targets, n_targets = self.target_choice(target)
        if colours is None or isinstance(colours, str):
            colours = [colours or f"C{t % 10}" for t in range(n_targets)]
        elif not isinstance(colours, list):
            raise ValueError("colours must be None, one colour (a string) or a list of colours.")
        n = len(ranges)
        if ax is None:
            _, ax = plt.subplots(n, n, figsize=figsize, squeeze=False)
            for i in range(n):
                for j in range(i + 1, n):
                    ax[i, j].axis("off")
        for k, t in enumerate(targets):
            colour = colours[k % len(colours)]
            values = np.asarray(points[t])
            for i in range(n):
                if hist:
                    ax[i, i].hist(values[:, i], bins=ranges[i], color=colour, density=True,
                                  histtype="step", linestyle=linestyle)
                    ax[i, i].set_yticks([])
                for j in range(i):
                    ax[i, j].scatter(values[:, j], values[:, i], s=s, color=colour,
                                     alpha=alpha, label=f"{label or ''} target {t + 1}".strip()
                                     if j == 0 and i == 1 else None)
        for i in range(n):
            for j in range(i + 1):
                ax[i, j].set_xlim(ranges[j][0], ranges[j][-1])
                if j < i:
                    ax[i, j].set_ylim(ranges[i][0], ranges[i][-1])
        if axis_labels is not None:
            for i in range(n):
                ax[n - 1, i].set_xlabel(axis_labels[i])
                if i > 0:
                    ax[i, 0].set_ylabel(axis_labels[i])
        if label is not None and n > 1:
            handles, names = ax[1, 0].get_legend_handles_labels()
            ax[0, 0].legend(handles, names, frameon=False, ncol=ncol,
                            bbox_to_anchor=bbox_to_anchor, loc="upper left")
        return ax

    def scatter_plot(self, ax=None, ranges=None, points=None, label=None, axis_labels=None,
                     colours=None, hist=True, s=5, alpha=1.0, figsize=(10, 10),
                     linestyle="solid", target=None, ncol=2, bbox_to_anchor=(0.0, 1.0)):
        """The accepted parameters (or ``points``, one ``[n, n_params]`` array per target)
        as a triangle of scatter plots on the prior's ranges, each parameter's histogram on
        the diagonal (matplotlib). Returns the axes."""
        return self._scatter(ax, self.ranges if ranges is None else ranges,
                             self.parameters.accepted if points is None else points, label,
                             axis_labels, colours, hist, s, alpha, figsize, linestyle, target,
                             ncol, bbox_to_anchor)

    def scatter_summaries(self, ax=None, ranges=None, points=None, label=None, axis_labels=None,
                          colours=None, hist=True, s=5, alpha=1.0, figsize=(10, 10),
                          linestyle="solid", gridsize=100, target=None, format=False,  # noqa: A002
                          ncol=2, bbox_to_anchor=(0.0, 1.0)):
        """As :meth:`scatter_plot` for the accepted summaries (or ``points``), on ranges
        spanning the drawn targets' points, ``gridsize`` bins each."""
        points = self.summaries.accepted if points is None else points
        if points is None:
            raise ValueError("there are no accepted summaries yet: run the ABC with ϵ first.")
        targets, _ = self.target_choice(target)
        width = np.asarray(points[targets[0]]).shape[-1]
        sizes = self.get_gridsize(gridsize, width)
        if ranges is None:
            chosen = np.concatenate([np.asarray(points[t]) for t in targets])
            ranges = [np.linspace(chosen[:, i].min(), chosen[:, i].max(), sizes[i])
                      for i in range(width)]
        return self._scatter(ax, ranges, points, label, axis_labels, colours, hist, s, alpha,
                             figsize, linestyle, target, ncol, bbox_to_anchor)

    def get_marginals(self, accepted_parameters=None, ranges=None, gridsize=None,
                      smoothing=None):
        """The accepted parameters' histograms (densities) on the grid: bins centred on the
        grid's points (the layout in the module's docstring)."""
        accepted = self.parameters.accepted if accepted_parameters is None \
            else accepted_parameters
        points = self.ranges if ranges is None else ranges
        edges = [np.append(r, r[-1] + (r[1] - r[0])) - (r[1] - r[0]) / 2 for r in points]
        if smoothing is not None:
            from scipy.ndimage import gaussian_filter

            def smooth(x):
                return gaussian_filter(x, smoothing, mode="mirror")
        else:
            def smooth(x):
                return x
        out: list[list] = []
        for i in range(self.n_params):
            out.append([])
            for j in range(i + 1):
                if i == j:
                    out[i].append(np.array([smooth(np.histogram(
                        p[:, i], bins=edges[i], density=True)[0]) for p in accepted]))
                else:
                    out[i].append(np.array([smooth(np.histogramdd(
                        p[:, [j, i]], bins=[edges[j], edges[i]], density=True)[0])
                        for p in accepted]))
        return out

    def set_marginals(self, accepted_parameters=None, ranges=None, gridsize=None,
                      smoothing=None) -> None:
        self.marginals = self.get_marginals(accepted_parameters, ranges, gridsize, smoothing)


class PopulationMonteCarlo(ApproximateBayesianComputation):
    """Population Monte Carlo ABC (the reference's ``imnn.lfi.PopulationMonteCarlo`` call):
    start from the ``n_points`` simulations closest to each target, then move the farthest of
    them, each to a proposal drawn around it from a Gaussian with the population's weighted
    covariance (truncated to the prior's ``low``-``high`` box), kept when its simulation lands
    closer to the target; until the share of proposals kept falls to ``acceptance_ratio`` or
    ``max_iteration`` rounds ran. Every target has its own population.

    After a call, ``parameters.all`` / ``summaries.all`` are ``[n_targets, n_points, ...]``,
    ``distances.all`` ``[n_targets, n_points]``, all of them accepted, and ``marginals`` their
    histograms; ``acceptance_reached``, ``iterations`` and ``total_draws`` say, per target,
    how the moving went.

    Two differences from the reference, whose own docstring warns of a bug in this class: the
    proposal's covariance is the population's weighted covariance about its weighted mean (the
    reference used the second moment about zero, so a population far from the origin proposed
    far too widely), and the importance weight of a point is its prior density over the
    population's mixture density at that point (the reference evaluated each Gaussian at its
    own centre, the same value for every point)."""

    def __init__(self, target_data, prior, simulator, compressor, F=None,  # noqa: N803
                 gridsize=100, distance_measure=None):
        super().__init__(target_data=target_data, prior=prior, simulator=simulator,
                         compressor=compressor, gridsize=gridsize, F=F,
                         distance_measure=distance_measure)
        self.low = np.array([r[0] for r in self.ranges])
        self.high = np.array([r[-1] for r in self.ranges])
        self.weighting = None
        self.acceptance_reached = np.zeros(self.n_targets)
        self.iterations = np.zeros(self.n_targets, np.int32)
        self.total_draws = np.zeros(self.n_targets, np.int32)

    def _density(self, parameters) -> np.ndarray:
        """The prior's density at ``parameters`` ``[n, n_params]`` (its ``prob``; a prior
        without one is taken as uniform on its box)."""
        if hasattr(self.prior, "prob"):
            return np.asarray(self.prior.prob(parameters), np.float64).reshape(-1)
        inside = np.all((parameters >= self.low) & (parameters <= self.high), axis=-1)
        return inside.astype(np.float64)

    def _proposals(self, rng, centres, chol, max_samples: int) -> np.ndarray:
        """One draw around each centre from N(centre, chol cholᵀ), redrawn until it lies in
        the prior's box (NaN after ``max_samples`` tries)."""
        out = np.full(centres.shape, np.nan)
        missing = np.arange(len(centres))
        for _ in range(max_samples):
            if not len(missing):
                break
            rng, key = jax.random.split(rng)
            noise = np.asarray(jax.random.normal(key, (len(missing), self.n_params)),
                               np.float64)
            drawn = centres[missing] + noise @ chol.T
            inside = np.all((drawn >= self.low) & (drawn <= self.high), axis=1)
            out[missing[inside]] = drawn[inside]
            missing = missing[~inside]
        return out

    def _simulate(self, rng, parameters) -> np.ndarray:
        return np.asarray(self.compressor(self.simulator(rng, parameters)), np.float64)

    def move_samples(self, rng, samples, summaries, distances, weighting, target, F,
                     ϵ_ind=-1, acceptance_ratio=0.1, max_iteration=10, max_acceptance=1,
                     max_samples=int(1e5), n_parallel_simulations=None):
        """One target's population moved (see the class): returns the population
        ``(samples, summaries, distances, weighting)`` sorted by distance, the share of
        proposals kept in the last round, the rounds run and the proposals drawn."""
        per_point = n_parallel_simulations or 1
        reached, rounds, draws = np.inf, 0, 0
        while reached > acceptance_ratio and rounds < max_iteration:
            w = weighting / weighting.sum()
            mean = w @ samples
            centred = samples - mean
            cov = (centred * w[:, None]).T @ centred / max(1.0 - np.sum(w ** 2), 1e-12)
            chol = np.linalg.cholesky(cov + 1e-12 * np.eye(self.n_params) * np.trace(cov))
            moving = np.arange(len(samples))[ϵ_ind:]
            settled = np.zeros(len(moving), bool)
            tried = kept = 0
            for _ in range(max_acceptance):
                open_ = moving[~settled]
                if not len(open_):
                    break
                rng, k_draw, k_sim = jax.random.split(rng, 3)
                centres = np.repeat(samples[open_], per_point, axis=0)
                proposed = self._proposals(k_draw, centres, chol, max_samples)
                usable = ~np.isnan(proposed).any(axis=1)
                proposed_summaries = np.full((len(proposed), summaries.shape[1]), np.nan)
                if usable.any():
                    proposed_summaries[usable] = self._simulate(k_sim, proposed[usable])
                found = np.full(len(proposed), np.inf)
                if usable.any():
                    found[usable] = np.asarray(self.distance_measure(
                        proposed_summaries[usable], target, F), np.float64)
                tried += int(usable.sum())
                found = found.reshape(len(open_), per_point)
                best = np.argmin(found, axis=1)
                nearest = found[np.arange(len(open_)), best]
                closer = nearest < distances[open_]
                pick = np.arange(len(open_)) * per_point + best
                samples[open_[closer]] = proposed[pick[closer]]
                summaries[open_[closer]] = proposed_summaries[pick[closer]]
                distances[open_[closer]] = nearest[closer]
                settled[np.flatnonzero(~settled)[closer]] = True
                kept += int(closer.sum())
            inverse = np.linalg.inv(cov)
            norm = 1.0 / np.sqrt((2 * np.pi) ** self.n_params * np.linalg.det(cov))
            gaps = samples[:, None, :] - samples[None, :, :]
            kernel = norm * np.exp(-0.5 * np.einsum("ijk,kl,ijl->ij", gaps, inverse, gaps))
            weighting = self._density(samples) / np.maximum(kernel @ w, 1e-300)
            order = np.argsort(distances, kind="stable")
            samples, summaries = samples[order], summaries[order]
            distances, weighting = distances[order], weighting[order]
            reached = kept / tried if tried else 0.0
            rounds += 1
            draws += tried
        return samples, summaries, distances, weighting, reached, rounds, draws

    def __call__(self, rng, n_points, percentile=None, acceptance_ratio=0.1, max_iteration=10,
                 max_acceptance=1, max_samples=int(1e5), n_initial_points=None,
                 n_parallel_simulations=None, proposed=None, summaries=None, distances=None,
                 smoothing=None, replace=False):
        """Run the population Monte Carlo for ``n_points`` points a target: on
        ``n_initial_points`` fresh simulations from the prior, or on ``proposed`` and
        ``summaries`` made elsewhere (``distances`` optional), or on those kept from before.
        ``percentile`` (0-100): the points beyond it are moved each round (None: the farthest
        one only); ``max_acceptance`` tries per point and round, each of
        ``n_parallel_simulations`` simulations (the closest counts); ``max_samples`` draws to
        land a proposal in the prior's box."""
        if n_initial_points is not None:
            if n_initial_points < n_points:
                raise ValueError(f"n_initial_points ({n_initial_points}) must be at least "
                                 f"n_points ({n_points}): the population is chosen from them.")
            rng, key = jax.random.split(rng)
            proposed, summaries = self.get_samples(key, n_initial_points)
            distances = self._distances(summaries)
        elif proposed is not None and summaries is not None:
            proposed, summaries = np.asarray(proposed), np.asarray(summaries)
            distances = self._distances(summaries) if distances is None \
                else np.asarray(distances)
        elif self.parameters.all is not None and not replace:
            proposed = self.parameters.all.reshape((-1, self.n_params))
            summaries = self.summaries.all.reshape((-1, self.n_summaries))
            distances = self._distances(summaries)
        else:
            raise ValueError("give proposed and summaries (and optionally distances) or "
                             "n_initial_points: the population Monte Carlo has no simulations "
                             "to start from yet.")
        proposed = np.asarray(proposed, np.float64).reshape((-1, self.n_params))
        summaries = np.asarray(summaries, np.float64).reshape((-1, self.n_summaries))
        distances = np.asarray(distances, np.float64).reshape((self.n_targets, -1))
        if len(proposed) < n_points:
            raise ValueError(f"{len(proposed)} simulations to start from, fewer than n_points "
                             f"({n_points}).")
        ϵ_ind = -1 if percentile is None else int(percentile / 100 * n_points)
        populations = []
        for t in range(self.n_targets):
            rng, key = jax.random.split(rng)
            closest = np.argsort(distances[t], kind="stable")[:n_points]
            samples = proposed[closest].copy()
            populations.append(self.move_samples(
                key, samples, summaries[closest].copy(), distances[t, closest].copy(),
                self._density(samples), self.target_summaries[t], self.F[t], ϵ_ind=ϵ_ind,
                acceptance_ratio=acceptance_ratio, max_iteration=max_iteration,
                max_acceptance=max_acceptance, max_samples=max_samples,
                n_parallel_simulations=n_parallel_simulations))
        self.acceptance_reached = np.array([p[4] for p in populations])
        self.iterations = np.array([p[5] for p in populations], np.int32)
        self.total_draws = np.array([p[6] for p in populations], np.int32)
        self.parameters.all = np.stack([p[0] for p in populations])
        self.summaries.all = np.stack([p[1] for p in populations])
        self.distances.all = np.stack([p[2] for p in populations])
        self.weighting = np.stack([p[3] for p in populations])
        self.parameters.size = self.summaries.size = self.distances.size = n_points
        self.set_accepted(smoothing=smoothing)
        print(f"Acceptance reached {self.acceptance_reached} in {self.iterations} "  # noqa: T201
              f"iterations with a total of {self.total_draws} draws")
        return self.parameters, self.distances, self.summaries

    def set_accepted(self, ϵ=None, smoothing=None) -> None:
        """Every point of each target's population is accepted; sets the marginals."""
        for record in (self.parameters, self.summaries, self.distances):
            record.accepted = list(record.all)
            record.rejected = None
            record.n_accepted = np.array([len(a) for a in record.accepted])
            record.ϵ = None
        self.marginals = self.get_marginals(smoothing=smoothing)
