"""``gio_core.dii.DiffImbalance`` against DADApy 0.3.4's own class, the same calls in both.

DADApy's published package holds no tests (its sdist has the library alone), so these are the
calls its DII tests make, written here: training with mini-batches and with sampled rows, each
optimizer and decay, the final DII with its error split, and the greedy searches. DADApy pins
JAX 0.4.30, so it runs in its own environment, ``.venv-dadapy`` (``make test-references``
builds it; ``DADAPY_PYTHON`` names another): each side runs in a child process and prints its
results as JSON.

With ``random_draws="dadapy"``, and inside ``with dadapy_random():`` (both are run), ours draws
DADApy's random numbers and gives its results to float rounding; with the default generator the seeded cases
differ, which is why the option exists.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.reference

ROOT = pathlib.Path(__file__).resolve().parents[2]
DADAPY = os.environ.get("DADAPY_PYTHON", str(ROOT / ".venv-dadapy" / "bin" / "python"))

CHILD = r"""
import contextlib, json, sys
import numpy as np
impl = sys.argv[1]
if impl == "dadapy":
    from dadapy import DiffImbalance
    draws = contextlib.nullcontext
    extra = {}
else:
    from gio_core.dii import DiffImbalance, dadapy_random
    # ours-dadapy: the constructor's option; ours-context: the context; ours: neither
    draws = dadapy_random if impl == "ours-context" else contextlib.nullcontext
    extra = {"random_draws": "dadapy"} if impl == "ours-dadapy" else {}
np.random.seed(0)
a = np.random.normal(size=(240, 6))
b = a[:, :4] * np.array([10.0, 3.0, 1.0, 30.0])
cases = {
    "batches_sgd": dict(num_epochs=40, batches_per_epoch=4, seed=1),
    "rows_adam_cos": dict(num_epochs=30, num_points_rows=120, seed=2, optimizer_name="adam",
                          learning_rate_decay="cos", learning_rate=0.05),
    "batches_adamw_exp": dict(num_epochs=25, batches_per_epoch=3, seed=3,
                              optimizer_name="adamw", learning_rate_decay="exp", k_init=5,
                              k_final=1, point_adapt_lambda=False),
    "full_l1": dict(num_epochs=30, l1_strength=1e-3),
}
out = {}
with draws():
    for name, kw in cases.items():
        dii = DiffImbalance(a, b, **kw, **extra)
        weights, imbs = dii.train(**({} if impl == "dadapy" else {"progress": False}))
        imb, err = dii.return_final_dii(compute_error=True, ratio_rows_columns=2, seed=4)
        out[name] = {"weights": np.asarray(weights).tolist(), "imbs": np.asarray(imbs).tolist(),
                     "final": [float(imb), float(err)]}
    quiet = {} if impl == "dadapy" else {"progress": False}
    dii = DiffImbalance(a, b, num_epochs=15, batches_per_epoch=2, seed=5, **extra)
    dii.train(**quiet)                   # DADApy's greedy searches start from a trained one
    sets, diis, errors, ws = dii.forward_greedy_feature_selection(n_features_max=3, n_best=3)
    out["forward"] = {"sets": [list(map(int, s)) for s in sets],
                      "diis": np.asarray(diis, dtype=float).tolist()}
    dii = DiffImbalance(a, b, num_epochs=15, batches_per_epoch=2, seed=6, **extra)
    dii.train(**quiet)
    sets, diis, errors, ws = dii.backward_greedy_feature_selection(n_features_min=2, n_best=3)
    out["backward"] = {"sets": [list(map(int, s)) for s in sets],
                       "diis": np.asarray(diis, dtype=float).tolist()}
print(json.dumps(out))
"""


def run(python: str, impl: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    proc = subprocess.run([python, "-c", CHILD, impl], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, (impl, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results():
    if not os.path.exists(DADAPY):
        pytest.fail(f"{DADAPY} is missing: make test-references builds DADApy's environment")
    return {impl: run(DADAPY if impl == "dadapy" else sys.executable, impl)
            for impl in ("dadapy", "ours-dadapy", "ours-context", "ours")}


CASES = ["batches_sgd", "rows_adam_cos", "batches_adamw_exp", "full_l1"]


@pytest.mark.parametrize("how", ["ours-dadapy", "ours-context"])
@pytest.mark.parametrize("case", CASES)
def test_training_and_final_dii_are_dadapys_with_its_random_draws(results, case, how):
    theirs, ours = results["dadapy"][case], results[how][case]
    np.testing.assert_allclose(ours["weights"], theirs["weights"], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(ours["imbs"], theirs["imbs"], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(ours["final"], theirs["final"], rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("how", ["ours-dadapy", "ours-context"])
@pytest.mark.parametrize("search", ["forward", "backward"])
def test_greedy_searches_pick_dadapys_sets(results, search, how):
    theirs, ours = results["dadapy"][search], results[how][search]
    assert ours["sets"] == theirs["sets"]
    np.testing.assert_allclose(ours["diis"], theirs["diis"], rtol=2e-3, atol=1e-5)


def test_the_default_generator_draws_other_numbers_than_dadapy(results):
    """Without the option, the seeded cases (mini-batches, sampled rows, the error split) differ
    from DADApy's; the unseeded full-batch training does not."""
    theirs, ours = results["dadapy"], results["ours"]
    assert not np.allclose(ours["batches_sgd"]["weights"], theirs["batches_sgd"]["weights"],
                           rtol=2e-3, atol=1e-5)
    assert not np.allclose(ours["rows_adam_cos"]["weights"], theirs["rows_adam_cos"]["weights"],
                           rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(ours["full_l1"]["weights"], theirs["full_l1"]["weights"],
                               rtol=2e-3, atol=1e-5)
