"""The exit-code contract of every command: what each kind of failure prints and returns."""
import os

import pytest

from jobs.common.errors import ConcurrentRunError, InputError
from jobs.runner import run_main
from tests.jobs.test_pipeline import ROOT

DEMO = os.path.join(ROOT, "conf", "demo.yaml")


def body_raising(err):
    def body(spark, cfg):
        assert spark.version and cfg.pool.format == "demo"      # a real session and config
        raise err
    return body


@pytest.mark.parametrize("err,code,first,last", [
    (InputError("pool.path 'x' does not exist."), 2, "gio-spark: error: pool.path 'x' does not "
     "exist.", "gio-spark: error: pool.path 'x' does not exist."),
    (ConcurrentRunError("another run replaced it"), 75, "gio-spark: retry: another run replaced it",
     "gio-spark: retry: another run replaced it"),
    # An engine's ValueError is a bug, not bad input: exit 1 with its traceback.
    (ValueError("k must be at most n - 1"), 1, "Traceback (most recent call last):",
     "please report this with the traceback above."),
    (MemoryError(), 1, "Traceback (most recent call last):", "please report this with the "
     "traceback above."),
])
def test_each_kind_of_failure_has_its_exit_code_and_last_line(spark, tmp_path, capsys, err, code,
                                                               first, last):
    capsys.readouterr()
    got = run_main("gio-spark test", "test", body_raising(err),
                   ["--config", DEMO, "--set", f"output.path={tmp_path / 'out'}",
                    "--set", "spark.master=local[2]",
                    "--set", "spark.conf.spark.sql.shuffle.partitions=2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code
    assert lines[0] == first and lines[-1].endswith(last)
    if code == 1:
        assert f"gio-spark: failed: {type(err).__name__}" in "\n".join(lines)
        assert any(type(err).__name__ in line for line in lines[1:-2])
    else:
        assert len(lines) == 1
    assert not os.path.exists(tmp_path / "out")


def test_a_bad_config_fails_before_the_jvm_starts(tmp_path, capsys, monkeypatch):
    """Config problems are reported without building a Spark session at all."""
    import jobs.runner

    def no_session(*args, **kwargs):
        raise AssertionError("a Spark session was started for a config error")
    monkeypatch.setattr(jobs.runner, "build_session", no_session)
    got = run_main("gio-spark run", "test", body_raising(AssertionError()),
                   ["--config", DEMO, "--set", "select.k=0"])
    assert got == 2
    assert capsys.readouterr().err.strip() == (
        "gio-spark: error: select.k must be a positive integer; got 0.")


def test_mllib_uses_the_native_blas_where_one_is_installed(spark):
    """netlib (Spark's BLAS) loads libblas.so.3 where it is installed (make setup installs
    OpenBLAS where apt-get may): its native instance then loads, otherwise it must not claim
    to. The Java side is the vectorised one either way (Spark 4 adds the JDK's vector API)."""
    from jobs.io.session import native_blas
    netlib = spark._jvm.dev.ludovic.netlib.blas
    assert netlib.JavaBLAS.getInstance().getClass().getSimpleName() == "VectorBLAS"
    try:
        native = netlib.NativeBLAS.getInstance().getClass().getSimpleName()
    except Exception:                         # noqa: BLE001 - py4j's error for a missing library
        native = None
    assert native == ("JNIBLAS" if native_blas() else None)
