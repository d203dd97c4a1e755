"""``runtime.jax_cache``: JAX's persistent compilation cache, on by default only in the
processes gio-spark starts itself. Child processes, each with its own JAX."""
import json
import os
import subprocess
import sys

import pytest

from jobs.common import runtime
from jobs.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import json, sys
from types import SimpleNamespace
import jax, jax.numpy as jnp
from jobs.common import runtime
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
own, setting, early = sys.argv[1] == "own", sys.argv[2], sys.argv[3] == "early"
if early:                      # a program compiled before the stage sets JAX up
    jax.jit(lambda x: x - 1)(jnp.ones(3)).block_until_ready()
runtime.OWN_PROCESS = own
runtime.configure_jax(SimpleNamespace(jax_platform="cpu", jax_memory_fraction=None,
                                      jax_preallocate=False, jax_cache=setting))
out = jax.jit(lambda x: jnp.sin(x) * 2 + x.sum())(jnp.arange(5.0)).block_until_ready()
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits),
                  "sum": float(out.sum())}))
"""


def child(own: bool, setting: str, early: bool = False, **env) -> dict:
    # Without the test run's own cache (tests/conftest.py sets one up through the environment).
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    proc = subprocess.run([sys.executable, "-c", CHILD, "own" if own else "user", setting,
                           "early" if early else "late"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**base, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cache_folder_follows_the_setting_and_whose_process_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("GIO_SPARK_JAX_CACHE", str(tmp_path / "cache" / "jax"))
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jax_cache_dir("auto") == str(tmp_path / "cache" / "jax")
    assert runtime.jax_cache_dir(True) == str(tmp_path / "cache" / "jax")
    assert runtime.jax_cache_dir(False) is None
    assert runtime.jax_cache_dir("off") is None
    assert runtime.jax_cache_dir("rel/dir") == os.path.abspath("rel/dir")
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    assert runtime.jax_cache_dir("auto") is None                  # a session of the user's own
    assert runtime.jax_cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")
    monkeypatch.delenv("GIO_SPARK_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    assert runtime.jax_cache_dir("auto") == str(tmp_path / "xdg" / "gio-spark" / "jax")


def test_the_config_takes_auto_off_or_a_folder_and_refuses_an_empty_one():
    assert load_config(None, [], "select").runtime.jax_cache == "auto"
    assert load_config(None, ["runtime.jax_cache=/tmp/c"], "select").runtime.jax_cache == "/tmp/c"
    off = load_config(None, ["runtime.jax_cache=off"], "select").runtime.jax_cache  # YAML: False
    assert runtime.jax_cache_dir(off) is None
    with pytest.raises(Exception, match="runtime.jax_cache"):
        load_config(None, ["runtime.jax_cache="], "select")


def test_a_second_process_loads_the_programs_the_first_compiled(tmp_path):
    folder = str(tmp_path / "jax")
    first = child(True, "auto", GIO_SPARK_JAX_CACHE=folder)
    assert first["dir"] == folder and first["hits"] == 0 and os.listdir(folder)
    second = child(True, "auto", early=True, GIO_SPARK_JAX_CACHE=folder)
    assert second["hits"] >= 1 and second["sum"] == first["sum"]
    # In a process of the user's own, auto leaves JAX as it is; a folder they name is used.
    assert child(False, "auto", GIO_SPARK_JAX_CACHE=folder)["dir"] is None
    assert child(False, "off", GIO_SPARK_JAX_CACHE=folder)["dir"] is None
    theirs = child(False, folder)
    assert theirs["dir"] == folder and theirs["hits"] >= 1
    # A cache the user set up themselves is left as it is.
    kept = child(True, "auto", GIO_SPARK_JAX_CACHE=folder,
                 JAX_COMPILATION_CACHE_DIR=str(tmp_path / "theirs"))
    assert kept["dir"] == str(tmp_path / "theirs")


def test_only_the_command_started_as_a_program_counts_as_gio_sparks_own_process(monkeypatch):
    from jobs import cli
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    assert cli.main(["config"]) == 0            # called with arguments: a caller's process
    assert runtime.OWN_PROCESS is False
    monkeypatch.setattr(sys, "argv", ["gio-spark", "config"])
    assert cli.main() == 0
    assert runtime.OWN_PROCESS is True
