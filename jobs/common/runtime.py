"""The driver's JAX runtime: its settings, applied before JAX starts a backend, and the versions
of the libraries a run records next to its results."""
from __future__ import annotations

import os
import threading
from importlib.metadata import PackageNotFoundError, version

# The packages whose versions every run records (``runs.versions`` and the other stages' tables).
RECORDED = ("gio-spark", "jax", "jaxlib", "numpy", "pyspark", "delta-spark",
            "sentence-transformers", "torch")


def free_memory() -> int | None:
    """MemAvailable of this machine (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def library_versions() -> dict:
    out: dict = {}
    for name in RECORDED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    import jax      # heavy: imported when a stage records its versions
    out["jax_backend"] = jax.default_backend()
    return out


# Whether this process is one gio-spark started (a command, a spark-submit entry: set by
# jobs.cli.main when it reads the process's own arguments), where it may choose JAX's
# settings; in a session of the user's own it leaves them as they are.
OWN_PROCESS = False
JAX_CACHE_BYTES = 512 * 2 ** 20


def jax_cache_dir(setting: str | bool) -> str | None:
    """The folder ``runtime.jax_cache`` names for this process, or None (no persistent cache).
    ``auto`` (or True): ``$GIO_SPARK_JAX_CACHE`` (default ``~/.cache/gio-spark/jax``) in a
    process gio-spark started, None in the user's own; ``off`` (or False): None."""
    if setting is False or setting == "off":
        return None
    if setting is not True and setting != "auto":
        return os.path.abspath(os.path.expanduser(setting))
    if not OWN_PROCESS:
        return None
    return os.environ.get("GIO_SPARK_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gio-spark", "jax")


def jvm_cache_dir(setting: str | bool) -> str | None:
    """The folder ``runtime.jvm_cache`` names for this process, or None (no class archive: see
    :mod:`jobs.io.class_archive`). Only in a process gio-spark started, where its command
    starts the JVM: ``auto`` (or True): ``$GIO_SPARK_JVM_CACHE`` (default
    ``~/.cache/gio-spark/jvm``); a folder: that folder; ``off`` (or False): None. In a process
    of the user's own, None whatever the setting: the JVM there is the user's to start.
    ``$GIO_SPARK_JVM_CACHE=off`` turns ``auto`` off (the test suite's children, benchmarks
    that compare with a tree without the archive)."""
    if setting is False or setting == "off" or not OWN_PROCESS:
        return None
    if setting is not True and setting != "auto":
        return os.path.abspath(os.path.expanduser(setting))
    named = os.environ.get("GIO_SPARK_JVM_CACHE")
    if named == "off":
        return None
    return named or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gio-spark", "jvm")


def _use_jax_cache(jax, folder: str) -> None:
    """JAX's persistent compilation cache in ``folder`` (at most :data:`JAX_CACHE_BYTES`, least
    recently used first out), for every program however quick to compile: a small run's
    selection compiles some 30 programs in 2-5 s, and loads them from the cache in under 1 s.
    A cache the user set up (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return                       # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_BYTES)
    # JAX decides at its first compilation whether a cache is in use: one made before this
    # (another stage's) would otherwise keep it off for the process.
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()


def configure_jax(s) -> None:
    """Driver-side JAX settings from the config, applied before JAX starts its backend.

    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless ``jax_preallocate`` (JAX would otherwise take
    75% of the GPU at start, starving torch on a shared card); ``XLA_PYTHON_CLIENT_MEM_FRACTION``
    from ``jax_memory_fraction``; the platform from ``jax_platform``. Settings the user already
    made in the environment win. ``s``: any object with ``jax_platform``,
    ``jax_memory_fraction`` and ``jax_preallocate`` (the config's runtime section), and
    optionally ``jax_cache`` (see :func:`jax_cache_dir`)."""
    import jax      # heavy: imported when a stage first needs JAX
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "true" if s.jax_preallocate else "false")
    if s.jax_memory_fraction is not None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(s.jax_memory_fraction))
    if s.jax_platform != "auto" and "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu" if s.jax_platform == "cpu" else "cuda")
    folder = jax_cache_dir(getattr(s, "jax_cache", "auto"))
    if folder is not None:
        _use_jax_cache(jax, folder)


def rss_mib() -> float | None:
    """This process's resident memory in MiB (Linux's /proc); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """The largest resident memory of this process while the ``with`` block runs, sampled every
    20 ms: ``peak`` and ``base`` (at the start) in MiB, and ``grown`` (``peak - base``); all
    None where the memory cannot be read."""

    def __init__(self, every: float = 0.02):
        self.every = every
        self.base = self.peak = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def grown(self) -> float | None:
        return None if self.base is None or self.peak is None else self.peak - self.base

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            now = rss_mib()
            if now is not None:
                self.peak = max(self.peak or now, now)

    def __enter__(self) -> "PeakMemory":
        self.base = self.peak = rss_mib()
        if self.base is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="gio-spark-peak-memory")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            now = rss_mib()
            if now is not None:
                self.peak = max(self.peak or now, now)
