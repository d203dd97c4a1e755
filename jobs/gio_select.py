"""The select stage: collect the centroids to the driver and run GIO there (JAX, CPU or GPU).

Reads ``centroids``; refuses, before collecting, more than ``select.max_centroids`` rows; runs
``gio_core.select`` with every option of the config's ``select`` section (cluster sizes as
weights when ``use_weights``); writes the picks to ``selection`` and a record to ``runs`` (each
replacing that run's rows, one transaction each) and the KL curve to
``<output>/plots/<run_id>_kl_curve.png``. Progress is printed every few picks.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time

import numpy as np


def select_fingerprint(spark, cfg) -> str:
    from jobs import runner
    from jobs.quantize import quantize_fingerprint
    params = dataclasses.asdict(cfg.select)
    return runner.fingerprint("select", quantize_fingerprint(spark, cfg), params)


def resolve_run_id(spark, cfg) -> str:
    """The config's ``run_id``, or else one derived from the inputs and parameters."""
    return cfg.run_id or "run-" + select_fingerprint(spark, cfg)[:12]


def collect_centroids(spark, cfg):
    """Both sides' centroids as arrays, after checking that they may be collected."""
    from pyspark.sql import functions as F

    from jobs import tables
    from jobs.config import ConfigError
    df = tables.read_table(spark, cfg.output.path, "centroids")
    counts = {r["side"]: r["n"] for r in df.groupBy("side").agg(F.count("*").alias("n")).collect()}
    limit = cfg.select.max_centroids
    for side in ("pool", "target"):
        if counts.get(side, 0) == 0:
            raise ConfigError(f"the centroids table has no {side} rows; run quantize again.")
        if counts[side] > limit:
            raise ConfigError(f"{counts[side]} {side} centroids are more than "
                              f"select.max_centroids={limit} allows to collect to the driver; "
                              "lower quantize.pool_k/target_k or raise select.max_centroids "
                              "(and the driver's memory).")
    out = {}
    for side in ("pool", "target"):
        rows = (df.where(F.col("side") == side).orderBy("cluster_id")
                .select("cluster_id", "centroid", "size").collect())
        out[side] = (np.array([r["cluster_id"] for r in rows], np.int32),
                     np.array([r["centroid"] for r in rows], np.float32),
                     np.array([r["size"] for r in rows], np.int64))
    return out


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("gio-spark", "jax", "jaxlib", "numpy", "pyspark", "delta-spark",
                 "sentence-transformers", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    import jax
    out["jax_backend"] = jax.default_backend()
    return out


def save_curve(path: str, kl_start: float, kl: np.ndarray, run_id: str, reason: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(0, len(kl) + 1) if np.isfinite(kl_start) else np.arange(1, len(kl) + 1)
    ys = np.concatenate([[kl_start], kl]) if np.isfinite(kl_start) else kl
    ax.plot(xs, ys, marker="." if len(kl) < 60 else None)
    ax.set_xlabel("picks (clusters)")
    ax.set_ylabel("KL(target || selected)")
    ax.set_title(f"{run_id}: stopped by {reason}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def configure_jax(s) -> None:
    """Driver-side JAX settings from the config, applied before JAX starts its backend.

    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless ``jax_preallocate`` (JAX would otherwise take
    75% of the GPU at start, starving torch on a shared card); ``XLA_PYTHON_CLIENT_MEM_FRACTION``
    from ``jax_memory_fraction``; ``JAX_PLATFORMS=cpu`` for ``jax_platform: cpu``. Variables the
    user already set win."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "true" if s.jax_preallocate else "false")
    if s.jax_memory_fraction is not None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(s.jax_memory_fraction))
    if s.jax_platform == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    elif s.jax_platform == "gpu":
        os.environ.setdefault("JAX_PLATFORMS", "cuda")


def run_select(spark, cfg) -> str:
    """Runs GIO on the centroids and writes ``selection`` and ``runs``; returns the run id."""
    configure_jax(cfg.select)
    import gio_core
    from jobs import runner, tables
    from jobs.config import ConfigError

    run_id = resolve_run_id(spark, cfg)
    fp = select_fingerprint(spark, cfg)
    stage = f"select:{run_id}"
    if runner.stage_done(spark, cfg, stage, fp, "selection", "runs"):
        runner.log(f"select: reusing the selection of run {run_id}")
        return run_id
    started = dt.datetime.now()
    t0 = time.perf_counter()
    cents = collect_centroids(spark, cfg)
    pool_ids, pool_c, pool_sizes = cents["pool"]
    _, target_c, target_sizes = cents["target"]
    s = cfg.select
    if target_c.shape[0] <= s.k:
        raise ConfigError(f"select.k={s.k} needs more than {s.k} target clusters, but the target "
                          f"has {target_c.shape[0]}; lower select.k or raise quantize.target_k "
                          "(the target needs more rows than select.k).")
    if pool_c.shape[1] != target_c.shape[1]:
        raise ConfigError(f"pool centroids have {pool_c.shape[1]} dimensions and target "
                          f"centroids {target_c.shape[1]}; embed both sides with the same model.")
    collect_s = time.perf_counter() - t0
    every = max(1, min(50, len(pool_c) // 20))

    def progress(pick, row, kl):
        if pick % every == 0:
            runner.log(f"select: pick {pick}: cluster {int(pool_ids[row])}, KL {kl:.4f}")

    options = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
               if f.name not in ("use_weights", "max_centroids") and not f.name.startswith("jax_")}
    runner.log(f"select: {len(pool_c)} pool and {len(target_c)} target centroids, "
               f"estimator={s.estimator}, method={s.method}, dim={s.dim}")
    t1 = time.perf_counter()
    try:
        result = gio_core.select(
            target_c, pool_c, callback=progress,
            target_weights=target_sizes if s.use_weights else None,
            pool_weights=pool_sizes if s.use_weights else None, **options)
    except ValueError as err:
        raise ConfigError(f"select: {err}") from None
    select_s = time.perf_counter() - t1
    runner.log(f"select: {len(result.indices)} clusters chosen (estimator d={result.dim:.1f}), "
               f"stopped by {result.stop_reason}"
               + (f", KL {result.kl[-1]:.4f}" if len(result.kl) else ""))

    picked = [(run_id, rank + 1, int(pool_ids[row]), int(pool_sizes[row]), float(kl))
              for rank, (row, kl) in enumerate(zip(result.indices, result.kl))]
    selection = spark.createDataFrame(picked, tables.SELECTION)
    kl_start = float(result.kl_start) if np.isfinite(result.kl_start) else None
    record = spark.createDataFrame([(
        run_id, started, dt.datetime.now(), json.dumps(cfg.to_dict(), default=str), kl_start,
        [float(v) for v in result.kl], result.stop_reason, len(result.indices), len(pool_c),
        len(target_c), float(result.dim), json.dumps({"collect_s": round(collect_s, 3), "select_s": round(select_s, 3)}),
        json.dumps(library_versions()))], tables.RUNS)
    tables.replace_where(spark, selection, tables.table_path(cfg.output.path, "selection"),
                         "run_id", run_id, partition_by="run_id")
    tables.replace_where(spark, record, tables.table_path(cfg.output.path, "runs"),
                         "run_id", run_id)
    if "://" not in cfg.output.path:
        plot = os.path.join(cfg.output.path, "plots", f"{run_id}_kl_curve.png")
        save_curve(plot, result.kl_start, result.kl, run_id, result.stop_reason)
        runner.log(f"select: KL curve in {plot}")
    runner.record_stage(spark, cfg, stage, fp)
    return run_id


def main(argv=None) -> int:
    from jobs import runner
    return runner.run_main("gio-spark select: GIO on the centroids",
                           lambda spark, cfg: run_select(spark, cfg), argv)


if __name__ == "__main__":
    if __package__ in (None, ""):       # spark-submit jobs/gio_select.py: import from the checkout
        import sys
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.gio_select import main as _main
    raise SystemExit(_main())
