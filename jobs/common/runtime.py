"""The driver's JAX runtime: its settings, applied before JAX starts a backend, and the versions
of the libraries a run records next to its results."""
from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# The packages whose versions every run records (``runs.versions`` and the other stages' tables).
RECORDED = ("gio-spark", "jax", "jaxlib", "numpy", "pyspark", "delta-spark",
            "sentence-transformers", "torch")


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


def configure_jax(s) -> None:
    """Driver-side JAX settings from the config, applied before JAX starts its backend.

    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless ``jax_preallocate`` (JAX would otherwise take
    75% of the GPU at start, starving torch on a shared card); ``XLA_PYTHON_CLIENT_MEM_FRACTION``
    from ``jax_memory_fraction``; the platform from ``jax_platform``. Settings the user already
    made in the environment win. ``s``: any object with ``jax_platform``,
    ``jax_memory_fraction`` and ``jax_preallocate`` (the config's select section)."""
    import jax      # heavy: imported when a stage first needs JAX
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "true" if s.jax_preallocate else "false")
    if s.jax_memory_fraction is not None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(s.jax_memory_fraction))
    if s.jax_platform != "auto" and "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu" if s.jax_platform == "cpu" else "cuda")
