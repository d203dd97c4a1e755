"""The select stage: collect the centroids to the driver and run GIO there (JAX, CPU or GPU).

Reads the run's clustering from ``centroids``; refuses, before collecting, more than
``select.max_centroids`` rows; runs ``gio_core.select`` with every option of the config's
``select`` section (cluster sizes as weights when ``use_weights``; the ``mmd`` rule's kernel
width from the target rows, recorded by quantize); writes the picks to ``selection`` and a record
to ``runs`` (KL and MMD curves, diagnostics: the KL noise floor, the warm-up picks, the rows
chosen; each table replacing that run's rows in one transaction) and the curves to
``<output>/plots/<run_id>_kl_curve.png``.

A ``ValueError`` from the engine here is a bug, not bad input: every option was checked with
the engine's own validator before Spark started, and the data-dependent limits (the number of
target clusters) are checked here first.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time

import numpy as np

import gio_core
from jobs.common.errors import InputError
from jobs.common.extras import plotting
from jobs.common.log import bar, detail, log, took
from jobs.common.runtime import PeakMemory, configure_jax, library_versions
from jobs.config import JobConfig, engine_options, row_budget
from jobs.io import tables
from jobs.io.sources import check_outputs
from jobs.stages.base import Stage, both_sides, run_stage
from jobs.state import reuse, stagelog
from jobs.state.stored import collect_centroids, target_bandwidth_of, target_domains_of


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _figure(path: str):
    """A 6x4 figure and its axes (the object API, not pyplot: no global figure state, so
    concurrent runs in one driver are safe); ``path``'s folder made."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _saved(fig, path: str) -> bool:
    """Writes ``fig`` as a PNG to a temporary name first, then renames it into place."""
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.part.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    return True


def save_curve(path: str, kl_start: float, kl: np.ndarray, run_id: str, reason: str,
               warm_up: int = 0, floor: float | None = None,
               mmd: np.ndarray | None = None, lookahead: int = 0, filled: int = 0) -> bool:
    """Writes the KL curve as a PNG (to a temporary name first, then renamed into place);
    False, with a warning, where matplotlib is not installed.

    The first ``warm_up`` picks (before the estimator averages all k ranks; their values are
    not comparable with the later ones) are drawn apart, grey; ``floor`` (the estimate between
    two halves of the target) as a dashed line; the MMD along the picks, when the ``mmd`` rule
    ran, on a second axis, with the last ``filled`` picks (a budget filled past the least MMD)
    marked."""
    if plotting("select: the KL curve", log) is None:
        return False
    fig, ax = _figure(path)
    xs = np.arange(0, len(kl) + 1) if np.isfinite(kl_start) else np.arange(1, len(kl) + 1)
    ys = np.concatenate([[kl_start], kl]) if np.isfinite(kl_start) else kl
    marker = "." if len(kl) < 60 else None
    warm = xs <= warm_up
    if warm.any():
        ax.plot(xs[warm], ys[warm], color="0.6", marker=marker, linestyle=":",
                label=f"first {warm_up} picks (warm-up)")
    edge = max(0, int(warm.sum()) - 1)
    ax.plot(xs[edge:], ys[edge:], color="C0", marker=marker, label="KL estimate")
    if floor is not None and np.isfinite(floor):
        ax.axhline(floor, color="C0", linestyle="--", linewidth=1,
                   label=f"noise floor (target half vs half) {floor:.2f}")
    ax.set_xlabel("picks (clusters)")
    ax.set_ylabel("KL(target || selected)")
    ax.set_title(f"{run_id}: stopped by {reason}")
    handles, labels = ax.get_legend_handles_labels()
    if mmd is not None and len(mmd):
        ax2 = ax.twinx()
        best = len(mmd) - filled
        line, = ax2.plot(np.arange(1, len(mmd) + 1), mmd, color="C1",
                         label=f"MMD² to the target (least at pick {best}"
                               + (f", {lookahead} picks past it looked at)" if lookahead else ")"))
        if filled:
            ax2.axvline(best + 0.5, color="C1", linestyle=":", linewidth=1)
            ax2.annotate(f"{filled} picks fill the budget", (best + 0.5, float(np.max(mmd))),
                         fontsize=7, color="C1")
        ax2.set_ylabel("MMD² (RBF)")
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, fontsize=7, loc="best")
    return _saved(fig, path)


def _by_shares(s, target_c, target_doms, pool_c, pool_sizes, weights: dict, options: dict,
               progress):
    """GIO for each target domain on its share of the row budget
    (:func:`gio_core.select_shares`): ``(result, the domain of each pick, per-domain summary)``.
    ``result`` is a :class:`gio_core.SelectionResult` of all the picks, domain after domain,
    each pick's KL against its own domain's target (``stop_reason`` ``shares``)."""
    held = {str(d): int(np.sum(target_doms == d)) for d in dict.fromkeys(target_doms)}
    shares = {str(d): float(v) for d, v in s.shares.items()}
    if set(shares) != set(held):
        raise InputError(f"select.shares names the domains {', '.join(map(repr, shares))}, but "
                         f"the clustering's target holds {', '.join(map(repr, held))}; give each "
                         "of the target's domains a share (and no other).")
    for name, clusters in held.items():
        if clusters <= s.k:
            raise InputError(f"select.k={s.k} needs more than {s.k} target clusters in each "
                             f"domain, but domain {name!r} has {clusters}; lower select.k or "
                             "raise quantize.target_k (the domain needs more rows than select.k).")
    options = dict(options)
    budget = options.pop("max_rows")
    chosen = gio_core.select_shares(target_c, target_doms, pool_c, shares=shares,
                                    max_rows=budget, row_counts=pool_sizes, callback=progress,
                                    **weights, **options)
    parts = [chosen.results[d] for d in chosen.order]
    result = gio_core.SelectionResult(
        chosen.indices, chosen.kl, float("inf"), "shares", np.zeros(0, np.int64),
        np.zeros((0, pool_c.shape[1])), sum(p.resets for p in parts),
        float(parts[0].dim) if parts else float("nan"),
        np.concatenate([p.mmd for p in parts]) if parts else np.zeros(0),
        sum(p.lookahead for p in parts), sum(p.filled for p in parts))
    summary, before = {}, 0
    for name in chosen.order:
        part = chosen.results[name]
        rows = int(pool_sizes[part.indices].sum())
        summary[name] = {"share": shares[name], "budget": int(chosen.budgets[name]),
                         "picks": int(len(part.indices)), "rows": rows,
                         # what explode keeps: the budget ends inside the last pick
                         "kept": max(0, min(rows, budget - before)),
                         "target_clusters": held[name], "stop_reason": part.stop_reason,
                         "kl": [float(v) for v in part.kl]}
        before += rows
    return result, chosen.domains, summary


def _credited(served, target_doms, sizes) -> dict:
    """Per domain, the picks credited to it (GIO's own choice: the nearest target centroid's
    domain) and the rows they hold."""
    out = {}
    for name in dict.fromkeys(target_doms):
        mine = served == name
        out[str(name)] = {"picks": int(mine.sum()), "rows": int(sizes[mine].sum()),
                          "target_clusters": int(np.sum(target_doms == name))}
    return out


def save_domain_curves(path: str, run_id: str, by_domain: dict) -> bool:
    """Each domain's KL curve (``select.shares``), against its own picks, as a PNG; False, with
    a warning, where matplotlib is not installed."""
    if plotting("select: the KL curves", log) is None:
        return False
    fig, ax = _figure(path)
    for i, (name, d) in enumerate(by_domain.items()):
        kl = np.asarray(d["kl"])
        ax.plot(np.arange(1, len(kl) + 1), kl, color=f"C{i % 10}",
                label=f"{name}: share {d['share']:g}, {d['rows']} rows")
    ax.set_xlabel("picks for the domain (clusters)")
    ax.set_ylabel("KL(domain's target || its picks)")
    ax.set_title(f"{run_id}: one GIO run per domain")
    ax.legend(fontsize=7, loc="best")
    return _saved(fig, path)


def _input_reports(spark, cfg: JobConfig, plan: reuse.Plan) -> dict:
    """What the input checks found, from the stage log (when select runs alone)."""
    out = {}
    for side in ("pool", "target"):
        last = stagelog.latest(spark, cfg.output.path, f"validate_{side}",
                            plan.validate[side][:reuse.ID_CHARS])
        out[side] = json.loads(last["detail"]) if last is not None and last["detail"] else None
    return out


def noise_floor(target_c, target_w, s, dim: float) -> float | None:
    """The knn estimate between two halves of the target centroids (None when there are too
    few, or for the averaged estimator, whose values are on another scale)."""
    if s.estimator != "knn" or target_c.shape[0] // 2 <= s.k:
        return None
    return gio_core.kl_noise_floor(target_c, k=s.k, target_weights=target_w, dim=dim,
                                   seed=s.seed)


def run_select(spark, cfg: JobConfig, plan: reuse.Plan, reports: dict | None = None) -> str:
    """Runs GIO on the run's centroids and commits ``selection`` and ``runs``; returns the run
    id. Reused when the run's latest record is done with the same fingerprint."""
    run_id, fp = plan.run_id, plan.select
    s = cfg.select

    def compute():
        if not stagelog.is_done(spark, cfg.output.path, "quantize", plan.clustering_id, plan.quantize):
            raise InputError(f"there is no clustering {plan.clustering_id} for these inputs and "
                             f"quantize settings under {cfg.output.path!r}; run quantize (or the "
                             "whole pipeline) first.")
        configure_jax(cfg.runtime)
        started = dt.datetime.now()
        with PeakMemory() as memory:      # the driver's memory for collect and select
            t0 = time.perf_counter()
            cents = collect_centroids(spark, cfg, plan.clustering_id)
            pool_ids, pool_c, pool_sizes = cents["pool"]
            target_ids, target_c, target_sizes = cents["target"]
            if target_c.shape[0] <= s.k:
                raise InputError(f"select.k={s.k} needs more than {s.k} target clusters, but the target "
                                 f"has {target_c.shape[0]}; lower select.k or raise quantize.target_k "
                                 "(the target needs more rows than select.k).")
            if pool_c.shape[1] != target_c.shape[1]:
                raise InputError(f"pool centroids have {pool_c.shape[1]} dimensions and target "
                                 f"centroids {target_c.shape[1]}; embed both sides with the same model.")
            collect_s = time.perf_counter() - t0
            every = max(1, min(50, len(pool_c) // 20))

            def progress(pick, row, kl):
                picks_bar.update(pick - picks_bar.n)
                if pick % every == 0:
                    picks_bar.set_postfix_str(f"KL {kl:.4f}", refresh=False)
                    detail(f"select: pick {pick}: cluster {int(pool_ids[row])}, KL {kl:.4f}")

            log(f"select: {len(pool_c)} pool and {len(target_c)} target centroids, "
                f"estimator={s.estimator}, method={s.method}, dim={s.dim}")
            t1 = time.perf_counter()
            options = engine_options(s)
            if s.stop_criterion == "mmd":
                options["mmd_bandwidth"] = target_bandwidth_of(spark, cfg, plan)
            options["max_rows"] = row_budget(s, int(pool_sizes.sum()))
            if options["max_rows"] is not None:
                log(f"select: a budget of {options['max_rows']} of the pool's {int(pool_sizes.sum())} "
                    "rows")
                if options.get("fill") == "mmd" and options["max_rows"] >= int(pool_sizes.sum()):
                    log(f"select: warning: the budget ({options['max_rows']} rows) is the whole pool "
                        f"or more, so filling it takes every row; lower select.max_rows (or "
                        "select.max_fraction), or set select.fill: null to stop where the MMD to the "
                        "target is least")
            target_doms = (target_domains_of(spark, cfg, plan, target_ids)
                           if cfg.target.domain_column else None)
            weights = {"target_weights": target_sizes if s.use_weights else None,
                       "pool_weights": pool_sizes if s.use_weights else None}
            picks_bar = bar("select", total=min(s.max_iter or len(pool_c), len(pool_c)), unit="pick")
            try:
                if s.shares is not None:
                    result, served, by_domain = _by_shares(
                        s, target_c, target_doms, pool_c, pool_sizes, weights, options, progress)
                else:
                    result = gio_core.select(target_c, pool_c, callback=progress,
                                             row_counts=pool_sizes, **weights, **options)
                    served = by_domain = None
                    if target_doms is not None:
                        served = gio_core.nearest_domain(pool_c[result.indices], target_c,
                                                         target_doms)
                        by_domain = _credited(served, target_doms, pool_sizes[result.indices])
            finally:
                picks_bar.close()
            select_s = time.perf_counter() - t1
        log(f"select: {len(result.indices)} clusters chosen (estimator d={result.dim:.1f}), "
            f"stopped by {result.stop_reason}"
            + (f", KL {result.kl[-1]:.4f}" if len(result.kl) else "") + f" in {took(select_s)}")

        diagnostics = {
            "warm_up_picks": min(s.k, len(result.indices)) if s.estimator == "knn" else 0,
            "kl_noise_floor": noise_floor(target_c, target_sizes if s.use_weights else None, s,
                                          result.dim),
            "mmd_bandwidth": options.get("mmd_bandwidth"),
            "mmd_lookahead_picks": int(result.lookahead),
            "fill_picks": int(result.filled),
            "rows_selected": int(pool_sizes[result.indices].sum()),
            "pool_rows": int(pool_sizes.sum()),
        }
        if by_domain is not None:
            diagnostics["domains"] = by_domain
            for name, d in by_domain.items():
                log(f"select: domain {name!r}: {d['picks']} clusters, {d['rows']} rows"
                    + (f" for a budget of {d['budget']} (share {d['share']:g})"
                       + (f"; the row budget keeps {d['kept']}" if d["kept"] != d["rows"] else "")
                       if d.get("budget") is not None else " (credited by nearest target centroid)")
                    + (f", stopped by {d['stop_reason']}" if d.get("stop_reason") else ""))
        if s.stop_criterion == "mmd" and len(result.mmd) and s.shares is None:
            best = len(result.indices) - result.filled
            log(f"select: least MMD² to the target {result.mmd[best - 1]:.5f} at pick "
                f"{best} ({result.lookahead} picks past it looked at and dropped)"
                + (f"; {result.filled} more fill the budget, each the cluster that keeps the MMD "
                   f"lowest (MMD² {result.mmd[-1]:.5f})" if result.filled else ""))
        picked = [(run_id, fp, rank + 1, int(pool_ids[row]), int(pool_sizes[row]), float(kl))
                  for rank, (row, kl) in enumerate(zip(result.indices, result.kl, strict=True))]
        domains = None
        if served is not None:
            how = "share" if s.shares is not None else "nearest"
            domains = spark.createDataFrame(
                [(run_id, rank + 1, int(pool_ids[row]), str(name), how)
                 for rank, (row, name) in enumerate(zip(result.indices, served, strict=True))],
                tables.SELECTION_DOMAINS)
        kl_start = float(result.kl_start) if np.isfinite(result.kl_start) else None
        recorded = reports if reports is not None else _input_reports(spark, cfg, plan)
        record = (
            run_id, fp, plan.clustering_id, started, dt.datetime.now(),
            json.dumps(cfg.recorded(), default=str), kl_start, [float(v) for v in result.kl],
            result.stop_reason, len(result.indices), len(pool_c), len(target_c), float(result.dim),
            [float(v) for v in result.mmd] if s.stop_criterion == "mmd" else None,
            json.dumps(diagnostics, sort_keys=True), json.dumps(recorded, sort_keys=True),
            json.dumps({"collect_s": round(collect_s, 3), "select_s": round(select_s, 3),
                        "driver_peak_mib": _mib(memory.grown)}),
            json.dumps(library_versions()))
        return picked, record, result, diagnostics, domains, by_domain

    def commit(computed):
        picked, record, result, diagnostics, domains, by_domain = computed
        plot = os.path.join(cfg.output.path, "plots", f"{run_id}_kl_curve.png")
        if s.shares is not None:
            def draw(path):
                return save_domain_curves(path, run_id, by_domain)
        else:
            def draw(path):
                return save_curve(path, result.kl_start, result.kl, run_id, result.stop_reason,
                                  warm_up=diagnostics["warm_up_picks"],
                                  floor=diagnostics["kl_noise_floor"], mmd=result.mmd,
                                  lookahead=result.lookahead, filled=result.filled)

        def domains_rows():
            if domains is not None:
                tables.replace_key(spark, domains, cfg.output.path, "selection_domains", run_id,
                                   local=True)
            elif tables.exists(spark, tables.table_path(cfg.output.path, "selection_domains")):
                # a run id set by hand, used before by a run with domains: its rows go
                tables.replace_key(spark, spark.createDataFrame([], tables.SELECTION_DOMAINS),
                                   cfg.output.path, "selection_domains", run_id)

        # Three tables and a plot, none depending on another: at once. The stage is done only
        # once all are (its record follows), so a crash between them leaves it to be redone.
        drawn = tables.at_once(
            spark,
            lambda: tables.replace_key(spark, spark.createDataFrame(picked, tables.SELECTION),
                                       cfg.output.path, "selection", run_id, local=True,
                                       remember=picked),
            domains_rows,
            lambda: tables.replace_key(spark, spark.createDataFrame([record], tables.RUNS),
                                       cfg.output.path, "runs", run_id, local=True,
                                       remember=[record]),
            lambda: tables.put_file(spark, plot, draw))[-1]
        if drawn:
            log(f"select: KL curve in {plot}")
        return run_id, {"picks": len(result.indices), "stop_reason": result.stop_reason}

    def reused():
        log(f"select: reusing the selection of run {run_id}")
        return run_id

    return run_stage(spark, cfg.output.path, "select", run_id, fp, compute, commit, reused)


def select_command(spark, cfg: JobConfig, registry) -> None:
    plan = reuse.make_plan(spark, cfg)
    check_outputs(spark, cfg, None)
    run_select(spark, cfg, plan)


STAGE = Stage(
    "select", "the select stage alone: GIO on the centroids", "select", both_sides,
    needs=("quantize",), outputs=("selection", "selection_domains", "runs"), command=select_command,
    in_run=lambda cfg: True,
    step=lambda run: run_select(run.spark, run.cfg, run.plan, run.inputs.reports()),
    connect=True)
