"""gio_core.imnn: the tutorial's numbers, aggregated gradients equal to full-batch ones, the
class family's contracts and its errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.example_libraries import optimizers
from jax.flatten_util import ravel_pytree

from gio_core import imnn as I

θ_FID = jnp.array([0.0, 1.0])
λ, ϵ = 10.0, 0.1


def common(n_s, n_d, seed=1, optimiser=None, hidden=(128, 128, 128)):
    return dict(n_s=n_s, n_d=n_d, n_params=2, n_summaries=2, input_shape=(10,), θ_fid=θ_FID,
                model=I.mlp(hidden, 2), optimiser=optimiser or optax.adam(1e-3),
                key_or_state=jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def sims():
    return I.example_simulations(jax.random.PRNGKey(0), n_s=1000, n_d=1000)


@pytest.fixture(scope="module")
def fitted(sims):
    imnn = I.GradientIMNN(**common(1000, 1000), **sims)
    imnn.fit(λ, ϵ, patience=100, min_iterations=100, max_iterations=3000)
    return imnn


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def relative(a, b):
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(a)))


def test_the_tutorials_fisher_information(fitted):
    """The seed's example: analytic det F = 50 (F = diag(10, 5)); the fit reaches det F >= 40
    on the validation set, F11 within 1.5 of 10 and F22 within 1 of 5."""
    h = fitted.history
    assert float(h["max_detF"]) >= 40
    assert float(jnp.linalg.det(fitted.F)) == pytest.approx(float(h["max_detF"]), rel=1e-4)
    F = np.asarray(fitted.F)
    assert abs(F[0, 0] - 10) < 1.5 and abs(F[1, 1] - 5) < 1
    assert len(h["detF"]) == len(h["val_detF"]) and len(h["detF"]) < 3000   # stopped early
    for key in ("detC", "detinvC", "Λ2", "r", "loss", "val_loss"):
        assert np.all(np.isfinite(h[key]))
    # the covariance was pulled to the identity and the coupling turned itself off
    assert np.asarray(fitted.C) == pytest.approx(np.eye(2), abs=0.2)
    assert h["r"][-1] < h["r"][0]


def test_estimates_at_the_fiducial_are_unbiased(fitted):
    """Estimates on fresh simulations at θ_fid: their mean is θ_fid within a small share of
    the Fisher error, and their scatter is near the Fisher error."""
    keys = jax.random.split(jax.random.PRNGKey(99), 4000)
    fresh = jax.vmap(lambda k: I.gaussian_simulator(k, θ_FID))(keys)
    est = np.asarray(fitted.get_estimate(fresh))
    sigma = np.sqrt(np.diag(np.asarray(fitted.invF)))
    assert np.all(np.abs(est.mean(axis=0) - np.asarray(θ_FID)) < 0.2 * sigma)
    assert np.all(np.abs(est.std(axis=0) / sigma - 1) < 0.25)
    one = np.asarray(fitted.get_estimate(fresh[0]))
    assert one == pytest.approx(est[0], abs=1e-5)


@pytest.mark.parametrize("mode", ["gradient", "numerical"])
def test_aggregated_gradient_equals_the_full_batch_one(mode):
    """Batches of 7 (the last one smaller), n_d < n_s: the summed chain-rule terms equal the
    full-batch gradient, and the loss's terms too."""
    key = jax.random.PRNGKey(3)
    n_s, n_d = 100, 60
    if mode == "gradient":
        sims = I.example_simulations(key, n_s=n_s, n_d=n_d)
        full = I.GradientIMNN(**common(n_s, n_d, hidden=(16, 16)), **sims)
        agg = I.AggregatedGradientIMNN(**common(n_s, n_d, hidden=(16, 16)), **sims,
                                       n_per_device=7)
    else:
        keys = jax.random.split(key, n_s)
        δθ = jnp.array([0.1, 0.1])
        fid = jax.vmap(lambda k: I.gaussian_simulator(k, θ_FID))(keys)

        def pm(k):
            steps = jnp.diag(δθ) / 2
            return jnp.stack([jnp.stack([I.gaussian_simulator(k, θ_FID + sign * steps[p])
                                         for p in range(2)]) for sign in (-1, 1)])
        der = jax.vmap(pm)(keys[:n_d])
        assert der.shape == (n_d, 2, 2, 10)
        kw = dict(fiducial=fid, derivative=der, δθ=δθ)
        full = I.NumericalGradientIMNN(**common(n_s, n_d, hidden=(16, 16)), **kw)
        agg = I.AggregatedNumericalGradientIMNN(**common(n_s, n_d, hidden=(16, 16)), **kw,
                                                n_per_device=7)
    α = I.coupling_rate(λ, ϵ)
    g_full, t_full = jax.jit(lambda w: full._loss_and_gradient(w, λ, α, None))(full.w)
    g_agg, t_agg = agg._loss_and_gradient(agg.w, λ, α, None)
    assert relative(g_full, g_agg) < 1e-5
    assert float(t_full.loss) == pytest.approx(float(t_agg.loss), rel=1e-5)
    assert np.linalg.norm(flat(g_full)) > 0
    if mode == "numerical":
        # The reference's dataset form: fiducial batches of all n_s, and the derivative
        # simulations flattened over (n_d, 2, n_params), 20 rows a batch (5 simulations),
        # read from endless iterators: the same gradient.
        import itertools
        per = 20

        def source(rows):
            return [itertools.cycle([np.asarray(rows[i:i + per])
                                     for i in range(0, len(rows), per)])]
        ds = I.DatasetNumericalGradientIMNN(
            **common(n_s, n_d, hidden=(16, 16)), fiducial=source(fid),
            derivative=source(der.reshape((-1, 10))), δθ=δθ, host=jax.devices("cpu")[0],
            devices=jax.devices("cpu")[:1], n_per_device=per)
        g_ds, t_ds = ds._loss_and_gradient(ds.w, λ, α, None)
        assert relative(g_full, g_ds) < 1e-5
        assert float(t_ds.loss) == pytest.approx(float(t_full.loss), rel=1e-5)
        with pytest.raises(ValueError, match=r"2 n_params n_d \(240\) is not a multiple"):
            I.DatasetNumericalGradientIMNN(
                **common(n_s, n_d, hidden=(16, 16)), fiducial=source(fid),
                derivative=source(der.reshape((-1, 10))), δθ=δθ, n_per_device=50)


def test_dataset_variant_matches_the_aggregated_one():
    """Batch sources (lists per device, and an endless iterator) give the same gradient as the
    arrays, and the same fit."""
    import itertools
    n_s, n_d, per = 120, 80, 20
    sims = I.example_simulations(jax.random.PRNGKey(5), n_s=n_s, n_d=n_d)
    agg = I.AggregatedGradientIMNN(**common(n_s, n_d, hidden=(8,)), **sims, n_per_device=per)
    devices = [jax.devices("cpu")[0]] * 2

    def main(prefix):
        fid, der = sims[prefix + "fiducial"][:n_d], sims[prefix + "derivative"]
        halves = np.split(np.arange(n_d), 2)
        return [[(fid[h][i:i + per], der[h][i:i + per]) for i in range(0, len(h), per)]
                for h in halves]

    def rest(prefix):
        fid = sims[prefix + "fiducial"][n_d:]
        halves = np.split(np.arange(n_s - n_d), 2)
        return [itertools.cycle([fid[h][i:i + per] for i in range(0, len(h), per)])
                for h in halves]
    ds = I.DatasetGradientIMNN(**common(n_s, n_d, hidden=(8,)), host=devices[0],
                               devices=devices, n_per_device=per, main=main(""),
                               remaining=rest(""), validation_main=main("validation_"),
                               validation_remaining=rest("validation_"))
    α = I.coupling_rate(λ, ϵ)
    assert relative(agg._loss_and_gradient(agg.w, λ, α, None)[0],
                    ds._loss_and_gradient(ds.w, λ, α, None)[0]) < 1e-5
    agg.fit(λ, ϵ, patience=5, min_iterations=0, max_iterations=6)
    ds.fit(λ, ϵ, patience=5, min_iterations=0, max_iterations=6)
    assert ds.history["val_detF"] == pytest.approx(agg.history["val_detF"], rel=1e-4)
    with pytest.raises(ValueError, match="multiple of n_devices x n_per_device"):
        I.DatasetGradientIMNN(**common(n_s, n_d), host=devices[0], devices=devices,
                              n_per_device=30,
                              main=main(""), remaining=rest(""))


def test_compiled_loop_and_progress_bar_loop_agree(sims):
    """print_rate runs the same iterations in blocks (with a tqdm bar): the same history; and a
    second fit continues from the optimiser's state, the history growing."""
    small = {k: v[:200] for k, v in sims.items()}
    a = I.GradientIMNN(**common(200, 200, hidden=(16,)), **small)
    b = I.GradientIMNN(**common(200, 200, hidden=(16,)), **small)
    a.fit(λ, ϵ, patience=10, min_iterations=0, max_iterations=25)
    b.fit(λ, ϵ, patience=10, min_iterations=0, max_iterations=25, print_rate=4)
    assert a.history["val_detF"] == pytest.approx(b.history["val_detF"], rel=1e-5)
    a.fit(λ, ϵ, patience=10, min_iterations=0, max_iterations=5)
    assert len(a.history["detF"]) == len(b.history["detF"]) + 5


def test_the_optimizers_triple_is_accepted(sims):
    """jax.example_libraries.optimizers.adam and optax.adam take the same steps (compared by
    det F: the last layer's bias has a zero gradient up to rounding, since the loss ignores a
    shift of the summaries, and Adam turns that noise into full-size steps)."""
    small = {k: v[:200] for k, v in sims.items()}
    a = I.GradientIMNN(**common(200, 200, hidden=(32,), optimiser=optax.adam(1e-3)), **small)
    b = I.GradientIMNN(**common(200, 200, hidden=(32,), optimiser=optimizers.adam(1e-3)),
                       **small)
    for m in (a, b):
        m.fit(λ, ϵ, patience=10, min_iterations=0, max_iterations=10, best=False)
    assert a.history["detF"] == pytest.approx(b.history["detF"], rel=1e-4)
    assert a.history["detF"][-1] > a.history["detF"][0]


def test_simulator_imnn_learns():
    imnn = I.SimulatorIMNN(**common(100, 100, hidden=(16,)),
                           simulator=lambda k, θ: I.gaussian_simulator(k, θ))
    with pytest.raises(ValueError, match="rng is needed"):
        imnn.fit(λ, ϵ)
    imnn.fit(λ, ϵ, rng=jax.random.PRNGKey(7), patience=400, min_iterations=0,
             max_iterations=150, best=False)
    detF = imnn.history["detF"]
    assert np.mean(detF[-20:]) > 5 * np.mean(detF[:5])


def test_plot_writes_a_png(tmp_path, sims):
    small = {k: v[:100] for k, v in sims.items()}
    imnn = I.GradientIMNN(**common(100, 100, hidden=(8,)), **small)
    imnn.fit(λ, ϵ, patience=5, min_iterations=0, max_iterations=5)
    out = tmp_path / "history.png"
    ax = imnn.plot(expected_detF=50, filename=str(out))
    assert len(ax) == 3 and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weights_roundtrip_and_estimator(fitted):
    init, apply_fn = I.mlp()
    _, template = init(jax.random.PRNGKey(0), (10,))
    w = I.weights_from_bytes(I.weights_to_bytes(fitted.w), template)
    est = I.Estimator(apply_fn, w, fitted.θ_fid, fitted.F, fitted.invF, fitted.invC,
                      fitted.dμ_dθ, fitted.μ)
    d = jax.vmap(lambda k: I.gaussian_simulator(k, θ_FID))(jax.random.split(
        jax.random.PRNGKey(1), 5))
    assert np.asarray(est.estimate(d)) == pytest.approx(np.asarray(fitted.get_estimate(d)),
                                                        abs=1e-5)
    _, other = I.mlp((8,))[0](jax.random.PRNGKey(0), (10,))
    with pytest.raises(ValueError, match="network settings differ"):
        I.weights_from_bytes(I.weights_to_bytes(fitted.w), other)


@pytest.mark.parametrize("change, error, says", [
    (dict(fiducial=np.zeros((99, 10))), ValueError, r"fiducial has shape \(99, 10\); "
                                                    r"expected \(100, 10\)"),
    (dict(derivative=np.zeros((100, 10))), ValueError, "derivative has shape"),
    (dict(n_d=101), ValueError, r"n_d \(101\) is more than n_s \(100\)"),
    (dict(nan=True), ValueError, "non-finite value.*simulation 3"),
    (dict(n_s=2), ValueError, r"n_s \(2\) must exceed n_summaries"),
    (dict(θ_fid=jnp.zeros(3)), ValueError, r"θ_fid has shape \(3,\); expected \(2,\)"),
    (dict(optimiser="adam"), TypeError, "optimiser must be an optax"),
    (dict(optimiser=None), ValueError, "optimiser is None"),
    (dict(optimiser=(1, 2)), TypeError, "optimiser must be an optax .* a tuple of 2"),
    (dict(optimiser=(len, len, len)), ValueError, "second element of optimiser must take 3"),
    (dict(model=None), ValueError, "model is None"),
    (dict(model=(len,)), ValueError, "model must be an .* a tuple of 1"),
    (dict(model=(lambda key, shape: None, 0)), TypeError,
     "second element of model must be a function"),
    (dict(model=(len, len)), ValueError, "first element of model must take 2 argument"),
    (dict(input_shape=[10]), TypeError, "input_shape must be a tuple such as"),
    (dict(input_shape=None), ValueError, "input_shape is None"),
    (dict(θ_fid=[0.0, 1.0]), TypeError, "θ_fid must be a NumPy or JAX array"),
    (dict(fiducial=[[0.0] * 10] * 100), TypeError, "fiducial must be a NumPy or JAX array"),
    (dict(validation_fiducial=np.zeros((100, 10)), validation_derivative=None), ValueError,
     "give both validation_fiducial"),
])
def test_bad_input_is_named(sims, change, error, says):
    small = {"fiducial": sims["fiducial"][:100].copy(), "derivative": sims["derivative"][:100]}
    kw = common(100, 100, hidden=(8,))
    if change.pop("nan", False):
        small["fiducial"][3, 4] = np.nan
    for key in list(change):
        (small if key in ("fiducial", "derivative", "validation_fiducial",
                          "validation_derivative") else kw)[key] = change[key]
    if kw["n_s"] == 2:
        small = {"fiducial": small["fiducial"][:2], "derivative": small["derivative"][:1]}
        kw["n_d"] = 1
    with pytest.raises(error, match=says):
        I.GradientIMNN(**kw, **small)


def test_a_singular_covariance_is_named():
    """Every simulation the same: the summaries cannot vary, and fit says so before any
    step."""
    same = np.ones((50, 10), np.float32)
    imnn = I.GradientIMNN(**common(50, 50, hidden=(8,)), fiducial=same,
                          derivative=np.ones((50, 10, 2), np.float32))
    with pytest.raises(ValueError, match="covariance of the network's summaries .* singular"):
        imnn.fit(λ, ϵ, max_iterations=3)
    with pytest.raises(ValueError, match="no coupling rate"):
        imnn.fit(0.5, ϵ)


def test_value_and_jacobians_as_the_reference_utils_give_them():
    """``value_and_jacfwd`` / ``value_and_jacrev`` (the reference's ``imnn.utils``, which its
    tutorial imports): the value and the Jacobian of a simulator-like function, with keyword
    arguments passed through and several ``argnums``."""
    from gio_core.imnn import jacfwd, jacrev, value_and_jacfwd, value_and_jacrev

    def simulate(θ, noise, scale=1.0):
        return scale * (θ[0] + jnp.sqrt(θ[1]) * noise)

    θ, noise = jnp.array([0.5, 2.0]), jnp.linspace(-1.0, 1.0, 5)
    want_value = simulate(θ, noise, scale=3.0)
    want_jac = jnp.stack([3.0 * jnp.ones(5), 3.0 * noise / (2 * jnp.sqrt(2.0))], axis=1)
    for both, single in ((value_and_jacfwd, jacfwd), (value_and_jacrev, jacrev)):
        value, jac = both(simulate)(θ, noise, scale=3.0)
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_allclose(jac, want_jac, rtol=1e-5)
        np.testing.assert_allclose(single(simulate)(θ, noise), want_jac / 3.0, rtol=1e-5)
        _, (dθ, dnoise) = both(simulate, argnums=(0, 1))(θ, noise)
        assert dθ.shape == (5, 2) and dnoise.shape == (5, 5)
        np.testing.assert_allclose(jnp.diag(dnoise), jnp.full(5, jnp.sqrt(2.0)), rtol=1e-6)


def test_fit_and_the_constructor_refuse_what_the_reference_refuses(sims):
    """The reference's checks and exception types: ``λ`` and ``ϵ`` must be floats (None: a
    ValueError; an int: a TypeError), ``best`` a bool, ``rng`` a key of shape (2,), and
    ``key_or_state`` a key or a state the optimiser reads parameters from. Nothing is fitted
    before a refusal."""
    small = {k: v[:100] for k, v in sims.items()}
    imnn = I.GradientIMNN(**common(100, 100, hidden=(8,)), **small)
    for args, kw, error, says in [
            ((1, ϵ), {}, TypeError, "λ must be a float .*got int 1"),
            ((λ, 1), {}, TypeError, "ϵ must be a float"),
            ((None, ϵ), {}, ValueError, "λ is None"),
            ((λ, None), {}, ValueError, "ϵ is None"),
            ((λ, ϵ), {"best": None}, ValueError, "best is None"),
            ((λ, ϵ), {"best": 1}, TypeError, "best must be True or False"),
            ((λ, ϵ), {"patience": None}, ValueError, "patience is None"),
            ((λ, ϵ), {"rng": jnp.zeros(3, jnp.uint32)}, ValueError, "shape \\(3,\\)"),
            ((λ, ϵ), {"rng": 7}, TypeError, "rng must be a PRNG key")]:
        with pytest.raises(error, match=says):
            imnn.fit(*args, max_iterations=3, **kw)
    assert not imnn.history and imnn.F is None            # no iteration ran
    with pytest.raises(ValueError, match="key_or_state is None"):
        I.GradientIMNN(**dict(common(100, 100, hidden=(8,)), key_or_state=None), **small)
    with pytest.raises(TypeError, match="key_or_state is neither a PRNG key"):
        I.GradientIMNN(**dict(common(100, 100, hidden=(8,)), key_or_state=jnp.zeros(3)),
                       **small)


def _simulator(k, θ):
    return I.gaussian_simulator(k, θ)


def test_the_aggregated_simulator_equals_the_simulator_for_the_same_key():
    """Batches of 7 (the last smaller), n_d < n_s: the same simulations (keys split from the
    iteration's key), so the same summaries, loss and gradient as SimulatorIMNN; then a fit."""
    n_s, n_d = 60, 40
    key = jax.random.PRNGKey(5)
    one = I.SimulatorIMNN(**common(n_s, n_d, hidden=(16, 16)), simulator=_simulator)
    agg = I.AggregatedSimulatorIMNN(**common(n_s, n_d, hidden=(16, 16)), simulator=_simulator,
                                    host=jax.devices("cpu")[0], devices=jax.devices("cpu"),
                                    n_per_device=7)
    x1, dx1 = one.get_summaries(one.w, key=key)
    x2, dx2 = agg.get_summaries(agg.w, key=key)
    assert x2.shape == (n_s, 2) and dx2.shape == (n_d, 2, 2)
    assert np.allclose(x1, x2, atol=1e-5) and np.allclose(dx1, dx2, atol=1e-5)
    α = I.coupling_rate(λ, ϵ)
    g1, t1 = one._loss_and_gradient(one.w, λ, α, key)
    g2, t2 = agg._loss_and_gradient(agg.w, λ, α, key)
    assert relative(g1, g2) < 1e-4 and np.linalg.norm(flat(g1)) > 0
    assert float(t1.loss) == pytest.approx(float(t2.loss), rel=1e-5)
    other = agg.get_summaries(agg.w, key=jax.random.PRNGKey(6))[0]
    assert not np.allclose(other, x2)                     # another key, other simulations
    g_x, g_dx, _ = I.summary_cotangents(x2, dx2, λ, α)
    again = agg.get_gradient(agg.w, g_x, g_dx, key=key)  # back to the first key's simulations
    assert relative(g2, again) < 1e-4
    fresh = I.AggregatedSimulatorIMNN(**common(n_s, n_d, hidden=(16, 16)), simulator=_simulator,
                                      n_per_device=7)
    with pytest.raises(ValueError, match="no simulations yet"):
        fresh.get_gradient(fresh.w, g_x, g_dx)
    with pytest.raises(ValueError, match="rng is needed"):
        agg.fit(λ, ϵ)
    agg.fit(λ, ϵ, rng=jax.random.PRNGKey(7), patience=400, min_iterations=0,
            max_iterations=40, best=False)
    assert len(agg.history["detF"]) == 40 and np.all(np.isfinite(agg.history["detF"]))
    assert agg.F.shape == (2, 2) and agg.get_estimate(np.zeros(10)).shape == (2,)


def test_the_imnn_function_builds_the_class_its_arguments_call_for(sims, capsys):
    small = {k: v[:100] for k, v in sims.items()}
    spread = dict(host=jax.devices("cpu")[0], devices=jax.devices("cpu"), n_per_device=50)
    base = common(100, 100, hidden=(8,))
    δθ = jnp.array([0.1, 0.1])
    numerical = jnp.zeros((100, 2, 2, 10))
    cases = [
        (dict(simulator=_simulator), I.SimulatorIMNN),
        (dict(simulator=_simulator, **spread), I.AggregatedSimulatorIMNN),
        (dict(small), I.GradientIMNN),
        (dict(small, validation_fiducial=small["fiducial"],
              validation_derivative=small["derivative"]), I.GradientIMNN),
        (dict(small, **spread, cache=True, prefetch=None), I.AggregatedGradientIMNN),
        (dict(fiducial=small["fiducial"], derivative=numerical, δθ=δθ), I.NumericalGradientIMNN),
        (dict(fiducial=small["fiducial"], derivative=numerical, δθ=δθ, **spread),
         I.AggregatedNumericalGradientIMNN),
    ]
    for given, cls in cases:
        built = I.IMNN(**base, **given)
        assert type(built) is cls, (sorted(given), type(built))
        assert capsys.readouterr().out == f"using {cls.__name__}\n"
    assert type(I.IMNN(**base, simulator=_simulator, verbose=False)) is I.SimulatorIMNN
    assert capsys.readouterr().out == ""
    main = [[(small["fiducial"][:50], small["derivative"][:50]),
             (small["fiducial"][50:], small["derivative"][50:])]]
    built = I.IMNN(**base, main=main, remaining=[[]], verbose=False, **spread)
    assert type(built) is I.DatasetGradientIMNN


@pytest.mark.parametrize("given, error, says", [
    (dict(), ValueError, "no simulations given"),
    (dict(simulator=_simulator, fiducial="F"), ValueError, "pass one source of simulations"),
    (dict(fiducial="F"), ValueError, "fiducial is given without derivative"),
    (dict(main=["m"]), ValueError, "main is given without remaining"),
    (dict(main=["m"], remaining=["r"]), ValueError, "need host, devices and n_per_device"),
    (dict(simulator=_simulator, host="h"), ValueError, "host given without devices and "
                                                         "n_per_device"),
    (dict(simulator=_simulator, δθ=1.0), ValueError, "δθ given with simulator"),
    (dict(simulator=_simulator, cache=True), ValueError, "cache apply only to aggregated"),
    (dict(fiducial=[1], derivative=2), TypeError, "both be lists"),
    (dict(fiducial=[1], derivative=[2]), TypeError, "δθ is not given"),
    (dict(fiducial=[1], derivative=[2], δθ=1.0), TypeError,
     "need host, devices and n_per_device"),
    (dict(fiducial="F", derivative="D"), TypeError, "derivative must be an array"),
    (dict(fiducial="F", derivative=np.zeros((100, 10, 3))), ValueError,
     r"derivative has shape \(100, 10, 3\); expected \(100, 10, 2\)"),
    (dict(fiducial="F", derivative=np.zeros((100, 10, 2)), δθ=1.0), ValueError,
     r"expected \(100, 2, 2, 10\)"),
    (dict(fiducial="F", derivative="D", validation_main=["m"]), ValueError,
     "validate with validation_fiducial"),
])
def test_the_imnn_function_refuses_what_the_reference_refuses(given, error, says):
    with pytest.raises(error, match=says):
        I.IMNN(**common(100, 100, hidden=(8,)), verbose=False, **given)


def test_the_reference_utils_pytree_sum_and_container():
    a = {"w": jnp.ones((2, 3)), "b": [jnp.zeros(3), 1.0]}
    b = {"w": 2 * jnp.ones((2, 3)), "b": [jnp.arange(3.0), 2.0]}
    total = I.add_nested_pytrees(a, b, a)
    assert np.allclose(total["w"], 4.0) and np.allclose(total["b"][0], [0.0, 1.0, 2.0])
    assert float(total["b"][1]) == 4.0
    with pytest.raises(ValueError, match="structure"):
        I.add_nested_pytrees(a, {"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"leaf 2 has shape \(2, 2\), not \(2, 3\)"):
        I.add_nested_pytrees(a, {"w": jnp.ones((2, 2)), "b": [jnp.zeros(3), 1.0]})
    record = I.container()
    assert (record.all, record.accepted, record.rejected, record.ϵ, record.size,
            record.n_accepted) == (None,) * 6


class _Prior:
    """A uniform prior as the reference's tutorial gives one (only low and high are read)."""
    def __init__(self, low, high):
        self.low, self.high = np.asarray(low), np.asarray(high)
        self.event_shape = (len(low),)


def test_the_gaussian_approximation_is_the_estimates_normal_on_the_priors_grid():
    from scipy.stats import multivariate_normal, norm
    prior = _Prior([-3.0, 0.0], [3.0, 4.0])
    estimates = np.array([[0.5, 1.5], [-1.0, 2.5]])
    invF = np.array([[0.2, 0.05], [0.05, 0.1]])
    ga = I.GaussianApproximation(estimates, invF, prior, gridsize=[121, 101])
    x0, x1 = ga.ranges
    assert (len(x0), len(x1), ga.n_targets, ga.n_params) == (121, 101, 2, 2)
    np.testing.assert_allclose(ga.marginals[0][0][1], norm.pdf(x0, -1.0, np.sqrt(0.2)))
    np.testing.assert_allclose(ga.marginals[1][1][0], norm.pdf(x1, 1.5, np.sqrt(0.1)))
    joint = ga.marginals[1][0]                     # [targets, grid of θ0, grid of θ1]
    assert joint.shape == (2, 121, 101)
    a, b = 70, 40
    np.testing.assert_allclose(joint[0, a, b], multivariate_normal.pdf(
        [x1[b], x0[a]], mean=[1.5, 0.5], cov=[[0.1, 0.05], [0.05, 0.2]]), rtol=1e-10)
    mass = joint[0].sum() * (x0[1] - x0[0]) * (x1[1] - x1[0])
    assert mass == pytest.approx(1.0, abs=1e-3)
    # the same from the reference's other way in: a density over the whole grid
    grid0, grid1 = np.meshgrid(x0, x1, indexing="ij")
    full = multivariate_normal.pdf(np.stack([grid0, grid1], -1), mean=[0.5, 1.5],
                                   cov=invF)[None]
    lfi = I.LikelihoodFreeInference(prior, gridsize=[121, 101], marginals=full)
    np.testing.assert_allclose(lfi.marginals[0][0][0], ga.marginals[0][0][0], rtol=1e-3,
                               atol=1e-6)
    np.testing.assert_allclose(lfi.marginals[1][0][0] / lfi.marginals[1][0][0].sum(),
                               joint[0] / joint[0].sum(), rtol=1e-6, atol=1e-12)
    # the 68% and 95% contours of a 2-D normal: exp(-r²/2) at r² = 2.28 and 5.99
    peak = joint[0].max()
    levels = ga.get_levels(joint[0], ga.ranges)
    np.testing.assert_allclose(np.array(levels) / peak, np.exp(-np.array([5.99, 2.28]) / 2),
                               rtol=0.05)


def test_the_marginal_plot_draws_every_target_and_refuses_a_prior_without_bounds(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    prior = _Prior([-3.0, 0.0], [3.0, 4.0])
    ga = I.GaussianApproximation(np.array([0.5, 1.5]), np.eye(2) * 0.1, prior, gridsize=60)
    ax = ga.marginal_plot(known=[0.4, 1.6], label="Gaussian approximation",
                          axis_labels=["mean", "variance"], colours="C1")
    assert ax.shape == (2, 2) and len(ax[0, 0].lines) == 2       # the density and the truth
    assert ax[1, 0].collections                                    # the contours
    ga.marginal_plot(ax=ax, colours="C2")                          # overlaid on the same axes
    assert len(ax[0, 0].lines) == 3                               # one more density
    ax[0, 0].figure.savefig(tmp_path / "marginals.png")
    assert (tmp_path / "marginals.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="low and high"):
        I.GaussianApproximation(np.zeros(2), np.eye(2), object())
    with pytest.raises(ValueError, match="gridsize lists 3 counts; there are 2 parameters"):
        I.LikelihoodFreeInference(prior, gridsize=[10, 10, 10])
    with pytest.raises(ValueError, match=r"invF has shape \(3, 3\)"):
        I.GaussianApproximation(np.zeros(2), np.eye(3), prior)


class _SamplingPrior(_Prior):
    def sample(self, n, seed):
        u = jax.random.uniform(seed, (n, len(self.low)))
        return self.low + u * (self.high - self.low)


def _draws(key, θ):
    """10 Gaussian draws per row of θ = (mean, variance): the IMNN tutorial's model."""
    θ = jnp.atleast_2d(θ)
    return θ[:, :1] + jnp.sqrt(θ[:, 1:]) * jax.random.normal(key, (θ.shape[0], 10))


def _estimates(data):
    data = np.atleast_2d(np.asarray(data))
    return np.stack([data.mean(1), data.var(1)], -1)


def test_rejection_abc_keeps_the_parameters_whose_summaries_are_near_the_target(capsys):
    prior = _SamplingPrior([-1.0, 0.2], [1.0, 2.5])
    target = np.asarray(_draws(jax.random.PRNGKey(0), jnp.array([0.0, 1.0])))[0]
    abc = I.ApproximateBayesianComputation(target, prior, _draws, _estimates, gridsize=40)
    parameters, distances, summaries = abc(ϵ=0.3, rng=jax.random.PRNGKey(1), n_samples=4000)
    assert parameters.all.shape == (4000, 2) and distances.all.shape == (1, 4000)
    np.testing.assert_allclose(distances.all[0], np.linalg.norm(
        summaries.all - abc.target_summaries[0], axis=1))
    kept = parameters.n_accepted[0]
    assert 20 < kept < 4000 and (distances.accepted[0] < 0.3).all()
    assert len(parameters.rejected[0]) == 4000 - kept
    # the kept parameters sit nearer the target's estimate than those turned away
    near = np.linalg.norm(parameters.accepted[0] - abc.target_summaries[0], axis=1).mean()
    far = np.linalg.norm(parameters.rejected[0] - abc.target_summaries[0], axis=1).mean()
    assert near < far
    step = abc.ranges[0][1] - abc.ranges[0][0]
    assert abc.marginals[0][0].shape == (1, 40) and abc.marginals[1][0].shape == (1, 40, 40)
    assert abc.marginals[0][0][0].sum() * step == pytest.approx(1.0)
    # more rounds until every target has 150 accepted, keeping the earlier draws
    abc(ϵ=0.3, rng=jax.random.PRNGKey(2), n_samples=1000, min_accepted=kept + 150)
    assert parameters.n_accepted[0] >= kept + 150 and parameters.size > 4000
    assert "accepted in the last" in capsys.readouterr().out
    # F-weighted distances: sqrt(ΔᵀFΔ), here sqrt(10) times the Euclidean one
    weighted = I.ApproximateBayesianComputation(target, prior, _draws, _estimates,
                                                F=10 * np.eye(2))
    weighted(parameters=parameters.all[:100], summaries=summaries.all[:100])
    np.testing.assert_allclose(weighted.distances.all, np.sqrt(10) * distances.all[:, :100])
    with pytest.raises(ValueError, match="there are no simulations yet"):
        I.ApproximateBayesianComputation(target, prior, _draws, _estimates)(ϵ=0.1)
    with pytest.raises(ValueError, match="min_accepted needs ϵ"):
        abc(rng=jax.random.PRNGKey(3), n_samples=10, min_accepted=5)
    with pytest.raises(ValueError, match=r"F has shape \(3, 3\)"):
        I.ApproximateBayesianComputation(target, prior, _draws, _estimates, F=np.eye(3))


def test_population_monte_carlo_moves_its_population_towards_the_target(capsys):
    """The population starts as the 200 of 1,000 prior draws nearest the target; moving its
    outer half can only bring points closer, and over the rounds it does; the same key gives
    the same population."""
    prior = _SamplingPrior([-1.0, 0.2], [1.0, 2.5])
    target = np.asarray(_draws(jax.random.PRNGKey(0), jnp.array([0.0, 1.0])))[0]
    run = dict(n_points=200, percentile=50, n_initial_points=1000, max_iteration=15,
               acceptance_ratio=0.05, max_acceptance=3)
    pmc = I.PopulationMonteCarlo(target, prior, _draws, _estimates, gridsize=40)
    parameters, distances, summaries = pmc(jax.random.PRNGKey(1), **run)
    abc = I.ApproximateBayesianComputation(target, prior, _draws, _estimates)
    _, key = jax.random.split(jax.random.PRNGKey(1))
    start = np.sort(abc._distances(abc.get_samples(key, 1000)[1])[0])[:200]
    final = distances.all[0]
    assert parameters.all.shape == (1, 200, 2) and final.shape == (200,)
    assert (np.diff(final) >= 0).all()
    np.testing.assert_allclose(final, np.linalg.norm(
        summaries.all[0] - pmc.target_summaries[0], axis=1), rtol=1e-6)
    assert np.all(final <= start + 1e-9) and final.mean() < 0.8 * start.mean()
    assert np.all((parameters.all >= prior.low) & (parameters.all <= prior.high))
    assert 1 <= pmc.iterations[0] <= 15 and pmc.total_draws[0] >= 100
    assert 0.0 <= pmc.acceptance_reached[0] <= 1.0
    assert parameters.n_accepted[0] == 200 and pmc.marginals[0][0].shape == (1, 40)
    assert "Acceptance reached" in capsys.readouterr().out
    again = I.PopulationMonteCarlo(target, prior, _draws, _estimates, gridsize=40)
    again(jax.random.PRNGKey(1), **run)
    assert np.array_equal(again.parameters.all, parameters.all)
    # a second call goes on from the population it holds
    pmc(jax.random.PRNGKey(2), n_points=200, percentile=50, max_iteration=3)
    assert np.all(pmc.distances.all[0] <= final + 1e-9)
    with pytest.raises(ValueError, match=r"n_initial_points \(100\) must be at least n_points"):
        pmc(jax.random.PRNGKey(3), n_points=200, n_initial_points=100)
    with pytest.raises(ValueError, match="no simulations to start from"):
        I.PopulationMonteCarlo(target, prior, _draws, _estimates)(jax.random.PRNGKey(3), 10)


def test_abc_scatter_plots_draw_the_accepted_parameters_and_summaries(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    prior = _SamplingPrior([-1.0, 0.2], [1.0, 2.5])
    targets = np.asarray(_draws(jax.random.PRNGKey(0), jnp.array([[0.0, 1.0], [0.5, 2.0]])))
    abc = I.ApproximateBayesianComputation(targets, prior, _draws, _estimates, gridsize=30)
    parameters, _, summaries = abc(ϵ=0.4, rng=jax.random.PRNGKey(1), n_samples=2000)
    ax = abc.scatter_plot(label="ABC", axis_labels=["mean", "variance"])
    assert ax.shape == (2, 2)
    dots = ax[1, 0].collections
    assert len(dots) == 2                                            # one set per target
    for t in range(2):
        np.testing.assert_allclose(dots[t].get_offsets(), parameters.accepted[t])
    assert len(ax[0, 0].patches) == 2 and ax[1, 0].get_xlim() == (-1.0, 1.0)
    assert [text.get_text() for text in ax[0, 0].get_legend().get_texts()] == \
        ["ABC target 1", "ABC target 2"]
    ax = abc.scatter_summaries(target=1, gridsize=20)
    np.testing.assert_allclose(ax[1, 0].collections[0].get_offsets(), summaries.accepted[1])
    low, high = summaries.accepted[1][:, 0].min(), summaries.accepted[1][:, 0].max()
    assert ax[1, 0].get_xlim() == pytest.approx((low, high))
    ax[0, 0].figure.savefig(tmp_path / "scatter.png")
    assert (tmp_path / "scatter.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="colours must be None"):
        abc.scatter_plot(colours=3)
