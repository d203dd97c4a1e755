"""The imnn command on real Spark and Delta: executor-aggregated gradients equal the driver's
full-batch one, the tutorial's example end to end from one command, local and spark modes
agree, the fit is reused and loads back as an estimator."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from gio_core import imnn as I
from jobs.stages import imnn as J
from jobs.state import stagelog
from jobs.io import tables
from jobs.cli import main
from jobs.config import load_config
from tests.jobs.test_pipeline import ROOT

CONF = os.path.join(ROOT, "conf", "imnn.yaml")


def relative(a, b):
    a, b = (np.asarray(ravel_pytree(t)[0], np.float64) for t in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_spark_and_streamed_gradients_equal_the_full_batch_one(spark, tmp_path):
    """n_s = 300 with n_d = 200 (fiducial and remaining rows), batches of 64 (padded): the
    executors' chain-rule sums, and the driver streaming the files, give the in-memory
    GradientIMNN's gradient on the same weights within 1e-5."""
    path = str(tmp_path / "sims")
    assert J.write_example(spark, path, n_s=300, n_d=200, seed=4)
    assert not J.write_example(spark, path, n_s=300, n_d=200, seed=4)     # there already
    cfg = load_config(None, [f"imnn.simulations={path}", "imnn.theta_fid=[0.0, 1.0]",
                             "imnn.batch_size=64", "imnn.partitions=3", "imnn.hidden=[16]",
                             f"output.path={tmp_path / 'out'}"], "imnn")
    frame, layout = J.read_simulations(spark, cfg)
    assert (layout.n_s, layout.n_d, layout.input_shape, layout.validation) == (300, 200, (10,),
                                                                               True)
    sims = I.example_simulations(jax.random.PRNGKey(4), n_s=300, n_d=200)
    full = I.GradientIMNN(n_s=300, n_d=200, n_params=2, n_summaries=2, input_shape=(10,),
                          θ_fid=jnp.array([0.0, 1.0]), model=I.mlp((16,)),
                          optimiser=optax.adam(1e-3), key_or_state=jax.random.PRNGKey(0),
                          **sims)
    α = I.coupling_rate(10.0, 0.1)
    expected, terms = full._loss_and_gradient(full.w, 10.0, α, None)
    for mode in ("spark", "local"):
        model = J.build_imnn(spark, cfg, layout, frame, mode)
        try:
            got, got_terms = model._loss_and_gradient(full.w, 10.0, α, None)
            assert relative(expected, got) < 1e-5, mode
            assert float(got_terms.loss) == pytest.approx(float(terms.loss), rel=1e-5)
            x, _ = model.get_summaries(full.w, validate=True)
            x_full, _ = full.get_summaries(full.w, validate=True)
            assert np.asarray(x) == pytest.approx(np.asarray(x_full), abs=1e-5)
        finally:
            if hasattr(model, "release"):
                model.release()


def test_the_example_from_one_command(spark, tmp_path, capsys):
    """gio-spark imnn-example writes the tutorial's simulations and fits them on the
    executors (a few iterations here); a re-run is reused; the fit loads back as an
    estimator. (--local runs end to end in the kill test below.)"""
    out = str(tmp_path / "out")
    sets = [f"imnn.simulations={tmp_path / 'sims'}", f"output.path={out}",
            "imnn.max_iterations=4", "imnn.min_iterations=0", "imnn.hidden=[16, 16]",
            "imnn.learning_rate=0.01"]
    args = ["--config", CONF] + [a for s in sets for a in ("--set", s)]
    assert main(["imnn-example"] + args) == 0
    err = capsys.readouterr().out
    assert "imnn-example: the tutorial's simulations ->" in err
    assert "1000 training simulations (1000 with derivatives, as many for validation)" in err
    fits = tables.read_table(spark, out, "imnn_fits").collect()
    assert len(fits) == 1
    fit = fits[0]
    history = (tables.read_key(spark, out, "imnn_history", fit["imnn_id"])
               .orderBy("iteration").toPandas())
    assert list(history["iteration"]) == [0, 1, 2, 3] and fit["iterations"] == 4
    assert fit["mode"] == "spark" and fit["stopped_by"] == "max_iterations"
    assert np.all(np.isfinite(history[["detF", "val_detF", "loss", "val_loss"]].to_numpy()))
    assert history["val_detF"].iloc[-1] > history["val_detF"].iloc[0]
    assert fit["max_det_F"] == pytest.approx(history["val_detF"].max(), rel=1e-5)
    assert fit["det_F"] == pytest.approx(fit["max_det_F"], rel=1e-3)
    F = np.asarray(fit["F"])
    assert F.shape == (2, 2) and np.linalg.det(F) == pytest.approx(fit["det_F"], rel=1e-4)
    assert json.loads(fit["simulations"])["n_s"] == 1000
    assert os.path.getsize(os.path.join(out, "plots", f"{fit['imnn_id']}_history.png")) > 1000
    last = stagelog.latest(spark, out, "imnn", fit["imnn_id"])
    assert last["status"] == "done" and last["fingerprint"] == fit["imnn_fingerprint"]

    # reused: no new commit to the tables
    before = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(out, 'imnn_fits')}`").count()
    capsys.readouterr()
    assert main(["imnn"] + args) == 0
    assert f"imnn: reusing fit {fit['imnn_id']}" in capsys.readouterr().out
    after = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_path(out, 'imnn_fits')}`").count()
    assert after == before

    est = J.load_estimator(spark, out, fit["imnn_id"])
    keys = jax.random.split(jax.random.PRNGKey(11), 500)
    fresh = jax.vmap(lambda k: I.gaussian_simulator(k, jnp.array([0.0, 1.0])))(keys)
    estimates = np.asarray(est.estimate(fresh))
    assert estimates.shape == (500, 2) and np.all(np.isfinite(estimates))
    sigma = np.sqrt(np.diag(np.asarray(est.invF)))
    assert np.all(np.abs(estimates.mean(axis=0) - [0.0, 1.0]) < 0.5 * sigma)


def test_killed_between_its_tables_resumes_to_the_clean_fit(spark, tmp_path):
    """A real SIGKILL after imnn_history is committed and before imnn_fits: no `done` in the
    stage log, so the re-run (--local, the driver streaming the files) fits and writes again;
    the tables then hold one fit's rows once, with the in-memory GradientIMNN's numbers."""
    import subprocess
    import sys

    from tests.jobs.test_crash_safety import child_env
    path = str(tmp_path / "sims")
    J.write_example(spark, path, n_s=100, n_d=100, seed=2)
    killed = str(tmp_path / "killed")

    def argv(out):
        sets = [f"imnn.simulations={path}", f"output.path={out}", "imnn.max_iterations=3",
                "imnn.min_iterations=0", "imnn.hidden=[8]", "imnn.batch_size=32"]
        return ["imnn", "--config", CONF, "--local"] + [a for s in sets for a in ("--set", s)]
    child = subprocess.run([sys.executable, "-m", "jobs.cli"] + argv(killed), cwd=ROOT,
                           env=child_env("after:imnn_history"), capture_output=True,
                           timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    imnn_id = tables.read_table(spark, killed, "imnn_history").first()["imnn_id"]
    assert stagelog.latest(spark, killed, "imnn", imnn_id) is None
    assert not os.path.exists(os.path.join(killed, "imnn_fits", "_delta_log"))
    assert main(argv(killed)) == 0
    got = tables.read_table(spark, killed, "imnn_history").orderBy("iteration").toPandas()
    assert list(got["iteration"]) == [0, 1, 2]
    sims = I.example_simulations(jax.random.PRNGKey(2), n_s=100, n_d=100)
    want = I.GradientIMNN(n_s=100, n_d=100, n_params=2, n_summaries=2, input_shape=(10,),
                          θ_fid=jnp.array([0.0, 1.0]), model=I.mlp((8,)),
                          optimiser=optax.adam(1e-3), key_or_state=jax.random.PRNGKey(0),
                          **sims)
    want.fit(10.0, 0.1, patience=100, min_iterations=0, max_iterations=3)
    assert got["val_detF"].to_numpy() == pytest.approx(want.history["val_detF"], rel=1e-4)
    assert tables.read_table(spark, killed, "imnn_fits").count() == 1
    assert stagelog.latest(spark, killed, "imnn", imnn_id)["status"] == "done"


def test_numerical_derivatives_on_spark_and_streamed(spark, tmp_path):
    """imnn.derivatives: numerical: the derivative column holds the [2, n_params, 10]
    re-simulations at θ_fid ∓ δθ/2; both table paths give NumericalGradientIMNN's gradient."""
    from jobs.stages.imnn import SIMULATIONS
    n, δθ = 60, np.array([0.1, 0.1], np.float32)
    keys = jax.random.split(jax.random.PRNGKey(8), 2 * n)
    θ = jnp.array([0.0, 1.0])

    def pm(k):
        steps = jnp.diag(jnp.asarray(δθ)) / 2
        return jnp.stack([jnp.stack([I.gaussian_simulator(k, θ + sign * steps[p])
                                     for p in range(2)]) for sign in (-1, 1)])
    fid = np.asarray(jax.vmap(lambda k: I.gaussian_simulator(k, θ))(keys))
    der = np.asarray(jax.vmap(pm)(keys))
    rows = [(split, "fiducial", i, fid[j].tolist(), der[j].reshape(-1).tolist())
            for split, offset in (("train", 0), ("validation", n)) for i in range(n)
            for j in (offset + i,)]
    path = str(tmp_path / "sims")
    spark.createDataFrame(rows, SIMULATIONS).write.format("delta").save(path)
    cfg = load_config(None, [f"imnn.simulations={path}", "imnn.theta_fid=[0.0, 1.0]",
                             "imnn.derivatives=numerical", "imnn.delta_theta=[0.1, 0.1]",
                             "imnn.hidden=[8]", "imnn.batch_size=16",
                             f"output.path={tmp_path / 'out'}"], "imnn")
    frame, layout = J.read_simulations(spark, cfg)
    assert layout.derivative_shape == (2, 2, 10)
    full = I.NumericalGradientIMNN(
        n_s=n, n_d=n, n_params=2, n_summaries=2, input_shape=(10,), θ_fid=θ,
        model=I.mlp((8,)), optimiser=optax.adam(1e-3), key_or_state=jax.random.PRNGKey(0),
        fiducial=fid[:n], derivative=der[:n], δθ=δθ, validation_fiducial=fid[n:],
        validation_derivative=der[n:])
    α = I.coupling_rate(10.0, 0.1)
    expected, _ = full._loss_and_gradient(full.w, 10.0, α, None)
    for mode in ("local", "spark"):
        model = J.build_imnn(spark, cfg, layout, frame, mode)
        try:
            got, _ = model._loss_and_gradient(full.w, 10.0, α, None)
            assert relative(expected, got) < 1e-5, mode
        finally:
            if hasattr(model, "release"):
                model.release()


def test_the_fit_in_one_barrier_job_follows_the_fit_in_two_jobs_an_iteration(spark, tmp_path,
                                                                             capsys):
    """imnn.barrier (the default): the whole fit is one barrier Spark job whose tasks exchange
    their summaries and gradient sums every iteration; it follows the fit that runs two Spark
    jobs an iteration (imnn.barrier false) step for step, and every task held the same weights
    (the tasks check it every iteration)."""
    path = str(tmp_path / "sims")
    assert J.write_example(spark, path, n_s=300, n_d=200, seed=4)
    fits = {}
    for barrier in (True, False):
        cfg = load_config(None, [f"imnn.simulations={path}", "imnn.theta_fid=[0.0, 1.0]",
                                 "imnn.batch_size=64", "imnn.partitions=2", "imnn.hidden=[16]",
                                 "imnn.learning_rate=0.01", f"imnn.barrier={str(barrier).lower()}",
                                 f"output.path={tmp_path / 'out'}"], "imnn")
        frame, layout = J.read_simulations(spark, cfg)
        model = J.build_imnn(spark, cfg, layout, frame)
        try:
            model.fit(10.0, 0.1, patience=100, min_iterations=0, max_iterations=8)
        finally:
            model.release()
        fits[barrier] = model
    one, two = fits[True], fits[False]
    # The barrier job failing (its tasks raise), or more partitions than the 2 slots: the same
    # fit, two jobs an iteration
    from jobs.common import faults
    environment = spark.sparkContext.environment
    for sets, env in ((["imnn.partitions=2"], "raise:imnn:barrier"), (["imnn.partitions=3"], None)):
        cfg = load_config(None, [f"imnn.simulations={path}", "imnn.theta_fid=[0.0, 1.0]",
                                 "imnn.batch_size=64", "imnn.hidden=[16]",
                                 "imnn.learning_rate=0.01", f"output.path={tmp_path / 'out'}",
                                 *sets], "imnn")
        frame, layout = J.read_simulations(spark, cfg)
        model = J.build_imnn(spark, cfg, layout, frame)
        if env:
            environment[faults.ENV] = env
        try:
            model.fit(10.0, 0.1, patience=100, min_iterations=0, max_iterations=8)
        finally:
            environment.pop(faults.ENV, None)
            model.release()
        assert model.barrier_jobs == 0 and len(model.history["detF"]) == 8
        np.testing.assert_allclose(model.history["val_detF"], two.history["val_detF"],
                                   rtol=2e-4)
    said = capsys.readouterr().out
    assert "imnn: the barrier job failed (" in said and "fitting again with two" in said
    assert "imnn: two Spark jobs an iteration (3 partitions (imnn.partitions) but 2 task " \
        "slots" in said
    assert one.barrier_jobs == 1 and two.barrier_jobs == 0
    # the start's check, the fit, F at the chosen weights: the fit one job against two an
    # iteration
    assert (one.jobs, two.jobs) == (3, 3 + 2 * 8)
    for name in ("detF", "val_detF", "loss"):
        assert len(one.history[name]) == 8
        np.testing.assert_allclose(one.history[name], two.history[name], rtol=2e-4)
    assert one.history["val_detF"][-1] > one.history["val_detF"][0]
    assert relative(two.w, one.w) < 1e-4
    np.testing.assert_allclose(np.asarray(one.F), np.asarray(two.F), rtol=1e-3)
