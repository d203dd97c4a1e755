import os
import shutil
import tempfile
import uuid

import numpy as np
import pytest

# The tests' JVMs (each pytest worker's, the child runs', a test cluster's daemons and executors)
# run many short jobs on small data: most of their CPU goes to the JIT compiling Spark and Delta.
# With C1 only and the serial collector they take about 30% less CPU (test_reuse, test_quantize
# and test_weigh: 381 -> 263 CPU seconds), and make test is CPU-bound on two cores. Not a product
# default: a long run on real data wants C2's code. A caller's own settings win.
TEST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
for _var in ("SPARK_SUBMIT_OPTS", "SPARK_DAEMON_JAVA_OPTS"):
    os.environ.setdefault(_var, TEST_JVM_OPTS)
# The command-line runs the tests start write no JVM class archive (runtime.jvm_cache): which
# child would write it, and print its lines, would depend on the order the tests run in.
# tests/jobs/test_class_archive.py names its own folders.
os.environ["GIO_SPARK_JVM_CACHE"] = "off"


def _jax_cache(run: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"gio-spark-tests-jax-{run}")


def pytest_configure(config):
    """One JAX compilation cache for this test run's processes (both pytest workers and every
    child run they start): the selection's ~150 small programs compile once per run instead of
    once per process (a child's compiling measured 4.4 s -> 0.3 s). It lives in a folder of its
    own, removed at the end, so every run starts cold, as CI's does."""
    if hasattr(config, "workerinput"):                      # a pytest-xdist worker
        run = config.workerinput["testrunuid"]
    else:
        run = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        if hasattr(config.option, "testrunuid"):
            config.option.testrunuid = run                  # the workers get the same id
        config.gio_jax_cache = _jax_cache(run)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _jax_cache(run))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_unconfigure(config):
    if hasattr(config, "gio_jax_cache"):
        shutil.rmtree(config.gio_jax_cache, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def mixture(rng, components=10, dim=16, pool_rows=3000, target_rows=500,
            target_components=(0, 1, 2), target_weights=(0.5, 0.3, 0.2), spread=5.0):
    """Pool from ``components`` Gaussians; target from a few of them with unequal weights."""
    centres = rng.normal(0, spread, (components, dim))
    comp = rng.integers(0, components, pool_rows)
    pool = centres[comp] + rng.normal(0, 1, (pool_rows, dim))
    tcomp = rng.choice(target_components, p=target_weights, size=target_rows)
    target = centres[tcomp] + rng.normal(0, 1, (target_rows, dim))
    return pool.astype(np.float32), comp, target.astype(np.float32), tcomp, centres


@pytest.fixture
def mix16(rng):
    return mixture(rng)
