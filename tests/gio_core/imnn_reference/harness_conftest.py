"""conftest.py of the folder where imnn 0.3.2's test files run against gio_core.imnn.

It does three things and nothing else:
- gives back, under their old names, the JAX APIs that JAX itself has removed since the
  reference was written (``jaxlib.xla_extension.Device``, ``jax.experimental.stax`` and
  ``optimizers``), so the reference's files import unchanged;
- reports a test whose only difference is a message's wording (``test.defaults.WORDING``) as
  an expected failure that names both messages;
- marks the tests of the behaviours gio-spark keeps on purpose (``DELIBERATE``) as strict
  expected failures: they must fail, so the list cannot go stale.
"""
from __future__ import annotations

import re
import sys
import types

import jax
import jax.example_libraries.optimizers
import jax.example_libraries.stax
import jaxlib
import matplotlib
import pytest

matplotlib.use("Agg")

if not hasattr(jaxlib, "xla_extension"):
    jaxlib.xla_extension = types.SimpleNamespace(Device=jax.Device)
for _old, _new in (("jax.experimental.stax", jax.example_libraries.stax),
                   ("jax.experimental.optimizers", jax.example_libraries.optimizers)):
    sys.modules.setdefault(_old, _new)
    setattr(jax.experimental, _old.rsplit(".", 1)[1], _new)

import test  # noqa: E402
import test.defaults as defaults  # noqa: E402

assert test.__file__.startswith(__file__.rsplit("/", 1)[0]), \
    f"`test` is {test.__file__}, not the helpers beside this conftest"

# (test id pattern, why gio-spark differs on purpose)
DELIBERATE: list[tuple[str, str]] = [
    (r"(gradient|numerical_gradient|simulator)_imnn_test\.py::test_combined_running_test_"
     r"\[kwargs\d-(True|False)-True-",
     "a second fit may turn the progress bar on or off (the reference's fit was compiled "
     "with or without its bar and refused the other)"),
    (r"aggregated_(simulator|gradient|numerical_gradient)_imnn_test\.py::test_splitting_"
     r"\[(n_s|same)-",
     "the aggregated classes take a last, smaller batch: n_s and n_d need not be multiples "
     "of n_devices x n_per_device"),
]
MISMATCH = "Regex pattern did not match"


def pytest_collection_modifyitems(config, items):
    import os
    import zlib
    # GIO_SPARK_IMNN_SAMPLE=N keeps one in N of imnn_test.py's 262,144 selector cases, the
    # same ones every time (for a quick look; the reference run takes them all).
    every = int(os.environ.get("GIO_SPARK_IMNN_SAMPLE", "1"))
    if every > 1:
        keep = [not i.nodeid.startswith("imnn_test.py")
                or zlib.crc32(i.nodeid.encode()) % every == 0 for i in items]
        config.hook.pytest_deselected(items=[i for i, k in zip(items, keep, strict=True)
                                             if not k])
        items[:] = [i for i, k in zip(items, keep, strict=True) if k]
    for item in items:
        for pattern, why in DELIBERATE:
            if re.match(pattern, item.nodeid):
                # Only the reference's missing refusal ("DID NOT RAISE") is expected: any
                # other failure in these tests still fails.
                item.add_marker(pytest.mark.xfail(reason=f"deliberate: {why}", strict=True,
                                                  raises=pytest.fail.Exception))
                break


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        defaults.WORDING.clear()
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or hasattr(report, "wasxfail"):
        return
    if report.passed and defaults.WORDING:
        pattern, ours = defaults.WORDING[0]
        report.outcome = "skipped"
        report.wasxfail = f"wording: reference /{pattern}/ ; ours: {ours}"
    elif report.failed and call.excinfo is not None \
            and call.excinfo.errisinstance(AssertionError) \
            and MISMATCH in str(call.excinfo.value):
        # A check in the reference's own test file: pytest.raises took the exception type,
        # then its message did not match the reference's. Wording only if ours names the
        # same argument.
        text = str(call.excinfo.value)
        expected = re.search(r"Expected regex: (['\"])(.*)\1", text)
        actual = re.search(r"Actual message: (['\"])(.*)\1", text)
        if expected and actual and defaults.names_agree(expected.group(2), actual.group(2)):
            report.outcome = "skipped"
            report.wasxfail = f"wording: Expected regex: {expected.group(2)!r} ; " \
                f"Actual message: {actual.group(2)!r}"
