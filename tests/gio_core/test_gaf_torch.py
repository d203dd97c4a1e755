"""``gio_core.gaf_torch`` against the GAF reference package itself (gradient-agreement-filtering
0.1.3, installed by ``make setup``): the same PyTorch model, optimizer and micro-batches through
both, step for step, and the reference's own test file run against ours with its import line
changed (downloaded from PyPI, in ``make test-references``)."""
import contextlib
import copy
import io
import os
import random
import subprocess
import sys
import tarfile
import types

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

import gradient_agreement_filtering as reference
from gio_core import gaf_torch


def data(rows=96, features=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return TensorDataset(x, y.clamp(max=classes - 1))


def twins(seed=1, lr=0.1, momentum=0.9):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    other = copy.deepcopy(model)
    return [(m, torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum))
            for m in (model, other)]


@pytest.mark.parametrize("tau", [0.0, 0.5, 0.97, 1.0, 1.3, 2.0])
def test_step_gaf_is_the_references_step_for_step(tau):
    dataset = data()
    (ours, ours_opt), (theirs, theirs_opt) = twins()
    criterion = nn.CrossEntropyLoss()
    rng = random.Random(7)
    agreed_any = False
    for step in range(6):
        order = rng.sample(range(len(dataset)), 32)
        mbs = [Subset(dataset, order[i * 8:(i + 1) * 8]) for i in range(4)]
        got = gaf_torch.step_GAF(ours, ours_opt, criterion, mbs, wandb=False, verbose=False,
                                 cos_distance_thresh=tau)
        want = reference.step_GAF(theirs, theirs_opt, criterion, mbs, wandb=False,
                                  verbose=False, cos_distance_thresh=tau)
        assert set(got) == set(want) == {"train_loss", "cosine_distance", "agreed_count",
                                         "train_accuracy"}
        assert got["agreed_count"] == want["agreed_count"], (step, got, want)
        assert got["train_accuracy"] == want["train_accuracy"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["cosine_distance"] == pytest.approx(want["cosine_distance"], abs=1e-6)
        agreed_any |= got["agreed_count"] > 0
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # tau 0 never agrees (no step: the parameters stay where they started); the others do
    assert agreed_any == (tau > 0)


def test_with_dropout_the_same_seed_gives_the_same_steps():
    """A model with dropout draws from torch's global generator after each micro-batch is read:
    the reference's reading draws too (its DataLoader iterator), and ours the same, so the same
    seed gives the same steps."""
    dataset = data(seed=5)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    pairs = [(m, torch.optim.SGD(m.parameters(), lr=0.1)) for m in (model, copy.deepcopy(model))]
    mbs = [Subset(dataset, range(i * 8, (i + 1) * 8)) for i in range(4)]
    results = []
    for module, (m, opt) in zip((gaf_torch, reference), pairs, strict=True):
        torch.manual_seed(42)
        results.append([module.step_GAF(m, opt, nn.CrossEntropyLoss(), mbs, wandb=False,
                                        verbose=False, cos_distance_thresh=1.5)
                        for _ in range(3)])
    assert results[0] == results[1] and results[0][0]["agreed_count"] > 0
    for a, b in zip(pairs[0][0].parameters(), pairs[1][0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_gaf_trains_and_prints_as_the_reference_does():
    train, val = data(rows=120, seed=2), data(rows=40, seed=3)
    args = types.SimpleNamespace(epochs=3, batch_size=8, num_batches_to_force_agreement=3)
    printed = {}
    for name, module, (model, opt) in zip(("ours", "reference"), (gaf_torch, reference),
                                          twins(seed=4, momentum=0.0), strict=True):
        random.seed(11)                               # both draw micro-batches from `random`
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert module.train_GAF(model, args, train, val, opt, nn.CrossEntropyLoss(),
                                    wandb=False, verbose=True, cos_distance_thresh=0.98) is None
        printed[name] = (out.getvalue(), [p.detach().clone() for p in model.parameters()])
    (ours_text, ours_params), (ref_text, ref_params) = printed["ours"], printed["reference"]
    assert ours_text.count("{'epoch': ") == 3 and "GAF fuse iter 1, Cosine Distance: " in ours_text
    assert ours_text.splitlines() == ref_text.splitlines()
    for a, b in zip(ours_params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_wandb_needs_its_key_and_bad_arguments_are_named(monkeypatch):
    (model, opt), _ = twins()
    mbs = [Subset(data(), range(8)), Subset(data(), range(8, 16))]
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # (the reference imports wandb first: without it installed, as here, it fails on that)
    with pytest.raises(RuntimeError, match="set WANDB_API_KEY"):
        gaf_torch.step_GAF(model, opt, nn.CrossEntropyLoss(), mbs, wandb=True, verbose=False)
    with pytest.raises(ValueError, match="cos_distance_thresh must be in"):
        gaf_torch.step_GAF(model, opt, nn.CrossEntropyLoss(), mbs, wandb=False,
                           cos_distance_thresh=3)
    with pytest.raises(ValueError, match="args needs batch_size"):
        gaf_torch.train_GAF(model, {"epochs": 1}, data(), data(), opt, nn.CrossEntropyLoss(),
                            wandb=False)


@pytest.mark.reference
def test_the_references_own_tests_pass_with_the_import_line_changed(tmp_path):
    """The reference's published source package holds ``test/test_gaf.py``; it imports the
    helpers from ``src.gaf``. Downloaded from PyPI (as make setup installs the package), that
    line alone changed to ``gio_core.gaf_torch``, run with pytest."""
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                          ":all:", "gradient-agreement-filtering==0.1.3", "-d", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    with tarfile.open(tmp_path / "gradient_agreement_filtering-0.1.3.tar.gz") as tar:
        member = tar.getmember("gradient_agreement_filtering-0.1.3/test/test_gaf.py")
        text = tar.extractfile(member).read().decode()
    line = "from src.gaf import _filter_gradients_cosine_sim, _compute_gradients"
    assert text.count(line) == 1
    (tmp_path / "test_gaf_reference.py").write_text(
        text.replace(line, line.replace("src.gaf", "gio_core.gaf_torch")))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "test_gaf_reference.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=root))
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:]
