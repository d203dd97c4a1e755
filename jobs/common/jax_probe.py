"""What JAX itself costs the driver: a small selection in a fresh process, measured.

The driver's memory for a selection is more than its arrays: JAX's runtime (the XLA client and
its threads, started on first use) and the code it compiles for the selection's functions stay
resident in the process. Neither depends much on the data's size, and neither can be read off a
formula: it depends on the JAX version, the platform (a GPU's driver maps far more than a CPU's
client) and the options that decide which functions compile. ``gio-spark plan`` therefore
measures them, without starting JAX in its own process: it runs this module in a child process
with the config's selection options, on random arrays of the run's dimension and a few rows.

    python -m jobs.common.jax_probe '{"dim": 384, "options": {...}, "jax": {...}}'

prints one JSON line: ``start_mib`` (the resident memory the backend's start added, measured
around a first tiny computation) and ``select_mib`` (the further growth while the selection
compiled and ran, its peak sampled every 20 ms), both in MiB; ``seconds`` it took.
"""
from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

from jobs.common.runtime import PeakMemory, configure_jax, rss_mib

# the rows of the probe's arrays: enough for every estimator's neighbours, few enough to be quick
POOL_ROWS = 96
TARGET_ROWS = 48


def probe(dim: int, options: dict, jax_settings: dict) -> dict:
    """Runs the probe in this process (which must not have started JAX's backend yet) and
    returns its figures (see the module's doc)."""
    t0 = time.perf_counter()
    configure_jax(SimpleNamespace(jax_platform=jax_settings.get("platform", "auto"),
                                  jax_memory_fraction=jax_settings.get("memory_fraction"),
                                  jax_preallocate=bool(jax_settings.get("preallocate"))))
    import jax.numpy as jnp
    import numpy as np

    import gio_core
    before = rss_mib()
    jnp.zeros(8).block_until_ready()                          # the backend starts here
    started = rss_mib()
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(POOL_ROWS, dim)).astype(np.float32)
    target = rng.normal(size=(TARGET_ROWS, dim)).astype(np.float32)
    k = int(options.get("k", 5))
    options = {**options, "k": min(k, TARGET_ROWS // 4),
               "max_iter": min(int(options.get("max_iter") or 12), 12)}
    if options.get("max_rows") is not None:
        options["max_rows"] = min(int(options["max_rows"]), POOL_ROWS // 2)
    if options.get("stop_criterion") == "mmd":
        options.setdefault("mmd_bandwidth", 1.0)
    with PeakMemory() as grew:
        gio_core.select(target, pool, row_counts=np.ones(POOL_ROWS, np.int64), **options)
    if before is None or started is None or grew.grown is None:
        raise OSError("this system does not show a process's resident memory (/proc)")
    return {"start_mib": round(started - before, 1), "select_mib": round(grew.grown, 1),
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    print(json.dumps(probe(int(spec["dim"]), spec["options"], spec.get("jax", {}))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
