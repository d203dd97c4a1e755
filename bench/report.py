"""The docs' benchmark tables, rendered from the JSON lines the benchmarks wrote to bench/results/.

A page holds a generated table between two markers::

    <!-- bench-table: scale -->

    | ... |

    <!-- /bench-table -->

``python -m bench.report`` (``make references``) rewrites every such table from its results file;
``python -m bench.report --check`` exits 1 when a page differs from what the results give (a test
runs it). The prose around a table is written by hand; the figures in the tables are the ones the
runs printed. Where a results file holds several runs, the table says which lines it shows.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
MARKED = re.compile(r"(<!-- bench-table: ([\w-]+) -->\n)(.*?)(<!-- /bench-table -->)", re.S)


def records(name: str) -> list[dict]:
    """The JSON lines of ``bench/results/<name>``."""
    with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def table(header: list[str], align: str, rows: list[list]) -> str:
    """A Markdown table; ``align`` holds one letter a column: ``l`` left, ``r`` right."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *[[str(c) for c in row] for row in rows]]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def thousands(n) -> str:
    return f"{n:,}"


def fixed(x: float | None, places: int) -> str:
    """``x`` to ``places`` decimals; an empty cell where the run has no such figure."""
    if x is None:
        return ""
    return f"{round(x, places) + 0.0:.{places}f}"     # + 0.0: no "-0.00"


def times(x: float) -> str:
    """A speed-up or ratio: two figures below 10, one place below 100, whole above."""
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    text = f"{x:.2g}"
    return (text if "." in text else text + ".0") + "x"


def rate(x: float) -> str:
    """A rate (per second) with one place, two below 1."""
    return f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def ratio(x: float) -> str:
    """A ratio near 1 with three to four places: 1.009, 1.0001, 1.000."""
    text = f"{x:.4f}"
    return text[:-1] if text.endswith("0") else text


def cosine(x: float) -> str:
    """A cosine near 1 with one figure past its run of nines."""
    gap = 1 - x
    nines = min(8, math.floor(-math.log10(gap))) if gap > 0 else 8
    return f"{x:.{max(nines + 1, 5)}f}"


def mib(n_bytes: int) -> str:
    gib = n_bytes / 2**30
    return f"{gib:g} GiB" if gib >= 1 else f"{n_bytes // 2**20} MiB"


# -- one renderer a table ---------------------------------------------------------------------

def compat() -> str:
    label = {"quick_start_2d": "2-D quick-start, 100 start points",
             "pool_2000x64_target_500x64": "2,000 x 64 pool, 500 x 64 target, 20 start points"}
    rows = []
    for r in records("compat_vs_source_cpu_2cores.jsonl"):
        same = "yes" if r["same_picked_set"] else "no"
        if r["same_picked_set"] and r["same_order_prefix"] == r["ours_picks"]:
            same += ", same order"
        rows.append([label.get(r["case"], r["case"]), f"{r['source_seconds']} s",
                     f"{r['ours_seconds_cold']} s", f"{r['ours_seconds_warm']} s",
                     f"{times(r['speedup_vs_source_cold'])} / {times(r['speedup_vs_source_warm'])}",
                     f"{r['source_picks']} / {r['ours_picks']}",
                     f"{r['source_final_kl']:.7g} / {r['ours_final_kl']:.7g}", same])
    return table(["case", "source", "ours, cold", "ours, warm", "speed-up (cold / warm)",
                  "picks (source / ours)", "final KL (source / ours)", "same picked set"],
                 "lrrrrrrl", rows)


def scale() -> str:
    rows = []
    for r in records("scale_cpu_2cores.jsonl"):
        if "pool" not in r:
            continue
        method = r["method"] + (" (baseline: full rescoring)" if r["baseline_full_rescoring"] else "")
        rows.append([thousands(r["pool"]), thousands(r["target"]), thousands(r["picks"]), method,
                     r["seconds"], round(r["peak_rss_mib"]), fixed(r["from_target_components"], 3)])
    return table(["pool M", "target n", "picks", "method", "seconds", "peak RSS (MiB)",
                  "picks from the target's components"], "rrrlrrr", rows)


# Lines 5 and 6 of scale_weighted ran the code before the kept pairs were rescored in slices.
BEFORE_SLICING = {5, 6}


def scale_weighted() -> str:
    rows = []
    for i, r in enumerate(records("scale_weighted_cpu_2cores.jsonl")):
        weights = "unit"
        if r["weighted"]:
            weights = "1 to 200, " + ("insert and rescore (before)"
                                      if r["baseline_general_rescoring"] else "closed form")
        cache = mib(r["cache_bytes"])
        if r["cache_bytes"] < 4 * 2**30:
            cache += ", before the pairs were sliced" if i in BEFORE_SLICING else ", sliced"
        rows.append([f"{thousands(r['pool'])} x {thousands(r['target'])}", weights, cache,
                     f"{r['seconds']:.1f}", thousands(round(r["peak_rss_mib"]))])
    return table(["pool M x target n, 500 picks", "weights", "`cache_bytes`", "seconds",
                  "peak RSS (MiB)"], "llrrr", rows)


KMEANS = {"sklearn-2": "scikit-learn `KMeans` (Lloyd), 2 threads",
          "faiss-2": "faiss `Kmeans`, 2 threads",
          "core": "`gio_core.kmeans.lloyd`, in memory, 2 threads",
          "core@": "`gio_core.kmeans.lloyd` at {base}, in memory, {threads}",
          "stage": "the quantize stage's K-means, its defaults (own start: {start} s)",
          "stage-tasks": "the same, `quantize.driver_rows: 1` (a Spark job per iteration; own "
                         "start: {start} s)",
          "stage@": "the quantize stage at {base}, its defaults (own start: {start} s)",
          "stage-tasks@": "the same at {base}, `quantize.driver_rows: 1` (own start: {start} s)",
          "mllib": "MLlib `KMeans` (`quantize.algorithm: mllib`)"}


def kmeans(name: str = "kmeans_cpu_2cores.jsonl") -> str:
    """The last run of the file: from its last ``start`` line to its last summary."""
    lines = records(name)
    first = max(i for i, r in enumerate(lines) if r.get("variant") == "start")
    last = max(i for i, r in enumerate(lines) if "summary" in r)
    run, summary = lines[first + 1:last], lines[last]
    rows = []
    for r in run:
        name, _, base = r["variant"].partition("@")
        # 1dbfa74 predates the threads of blocks: its products ran on 2 BLAS threads
        label = KMEANS[name + ("@" if base else "")].format(
            base=base, start=r.get("start_seconds"),
            threads="2 BLAS threads" if base == "1dbfa74" else "2 threads")
        s = summary[r["variant"]]
        rows.append([label, f"{r['seconds']:.2f}", r["iterations"], f"{r['objective']:,.1f}",
                     f"{s['time_vs_faiss2']:.2f}", f"{s['time_vs_sklearn2']:.2f}",
                     ratio(s["objective_vs_sklearn2"])])
    return table(["variant", "seconds", "iterations", "objective", "time / faiss",
                  "time / scikit-learn", "objective / scikit-learn"], "lrrrrrr", rows)


def kmeans_64d() -> str:
    """The same at 64 dimensions and 4,000 clusters (``make bench-kmeans``'s second run)."""
    return kmeans("kmeans_64d_cpu_2cores.jsonl")


def embed_backends() -> str:
    lines = records("embed_cpu_2cores.jsonl")
    summary = next(r for r in lines if "summary" in r)
    rows = [[f"`{r['backend']}`" + (" (default)" if r["backend"] == "torch" else ""),
             r["udf_texts_per_s"], f"{summary[r['backend']]:g}",
             f"{r['cosine_to_torch_mean']:.4f}", f"{r['cosine_to_torch_min']:.4g}"]
            for r in lines if "backend" in r]
    return table(["`embed.backend`", "texts/s", "x torch", "cosine mean", "cosine least"],
                 "lrrrr", rows)


STAGES = {"baseline_read_count": "baseline: read + count",
          "validate": "validate (read both sides, scan embeddings for NaN/size, record the checks)",
          "quantize": "quantize (K-means on both sides, write centroids and assignments)",
          "select": "select (collect centroids, GIO, write selection and runs)",
          "explode": "explode (broadcast join, write selected rows)"}


def stages() -> str:
    (now,), (before,) = records("stages_cpu_2cores.jsonl"), records("stages_100k_cpu_2cores.jsonl")
    rows = [[STAGES.get(k, k), s, now["stage_over_baseline"][k], before["seconds"].get(k, "—")]
            for k, s in now["seconds"].items()]
    return table(["stage", "seconds", "x baseline", "earlier run, MLlib K-means"], "lrrr", rows)


ROW_STEP_WAYS = (("clusters", "whole clusters"), ("auto", "row step, driver"),
                 ("tasks_two_rounds", "row step, tasks + driver"),
                 ("tasks_one_round", "row step, tasks alone (rows)"))


def row_step() -> str:
    """The row step against whole clusters, per pool size (the latest run of each size) and
    way."""
    latest = {r["rows"]: r for r in records("row_step_cpu_2cores.jsonl")}
    rows = []
    for n, r in sorted(latest.items()):
        base = r["clusters"]
        for key, way in ROW_STEP_WAYS:
            w = r[key]
            step = w.get("row_step") or {}
            rows.append([thousands(n), thousands(r["budget"]), way,
                         step.get("parts", "—") if step.get("where") == "tasks" else "—",
                         w["stage_s"]["explode"],
                         times(round(w["stage_s"]["explode"] / base["stage_s"]["explode"], 2)),
                         round(w["driver_peak_rss_mib"]), f"{w['mmd_heldout']:.4f}",
                         times(round(w["mmd_heldout"] / base["mmd_heldout"], 2)),
                         f"{w['share_target_components']:.2f}"])
    return table(["pool rows", "budget", "explode", "task parts", "explode s", "x clusters",
                  "driver peak RSS MiB", "held-out MMD²", "x clusters", "target share"],
                 "rrlrrrrrrr", rows)


SMALL_RUNS = (("cli_cold", "`gio-spark run`, new output, empty JAX cache, no class archive"),
              ("cli_warm", "`gio-spark run`, `select.k` changed"),
              ("cli_again", "`gio-spark run`, another new output"),
              ("cli_rerun", "`gio-spark run`, `select.k` changed there"),
              ("api_cold", "`select_rows` in a session that is up, new output"),
              ("api_warm", "`select_rows` in that session, `select.k` changed"),
              ("api_seed", "`select_rows` in that session, then `select.seed` changed"),
              ("api_later", "`select_rows` in that session, later tries: a new seed each "
                            "(median of tries 5-8)"))


def small_runs() -> str:
    """A small run's seconds and Delta commits, this tree against the baseline commit (the
    latest run)."""
    r = records("small_runs_cpu_2cores.jsonl")[-1]
    base, now = r["baseline"], r["now"]
    rows = [[what, fixed(base[k], 1), fixed(now[k], 1), times(r["now_over_baseline"][k]),
             base.get(f"{k}_commits", ""), now.get(f"{k}_commits", "")]
            for k, what in SMALL_RUNS if k in now and k in base]
    return table(["run (1,000 rows)", f"seconds at {r['baseline_commit']}",
                  f"seconds at {r['commit']}", "x baseline",
                  f"Delta commits at {r['baseline_commit']}", f"at {r['commit']}"], "lrrrrr",
                 rows)


def decontaminate_search() -> str:
    """The copy search through the target's clusters against all pairs (one row per probes)."""
    rows = []
    for r in records("decontaminate_cpu_2cores.jsonl"):
        if r["part"] != "search":
            continue
        planted = [v for k, v in r.items() if k.startswith("planted ")]
        rows.append([r["probes"], fixed(r["compared_per_row"], 1),
                     f"{100 * r['share_of_pairs']:.2f}%", fixed(r["seconds"], 2),
                     fixed(r["all_pairs_seconds"], 2),
                     times(r["all_pairs_seconds"] / r["seconds"]),
                     f"{sum(p['found'] for p in planted):,} of {sum(p['rows'] for p in planted):,}",
                     f"{r['found']:,} of {r['all_pairs_found']:,}", r["false_finds"]])
    return table(["probes", "rows compared per pool row", "of all pairs", "seconds",
                  "all pairs, seconds", "faster than all pairs", "planted copies found",
                  "found of all pairs' finds", "found that all pairs did not"],
                 "rrrrrrrrr", rows)


def decontaminate_demo() -> str:
    """The demo selected without the step, with it, and with duplicates removed too (the latest
    run)."""
    r = [r for r in records("decontaminate_cpu_2cores.jsonl") if r["part"] == "pipeline"][-1]
    t = f"{r['threshold']:g}"
    rows = []
    for key, what in (("without", "without"), ("with", f"`threshold: {t}`"),
                      ("with_duplicates", f"`threshold: {t}`, `duplicates: {t}`")):
        got = r[key]
        rows.append([what, f"{got['selected']:,}", got["copies_selected"],
                     got["near_duplicate_pairs"], f"{got.get('set_aside', 0):,}"])
    return table(["decontaminate", "rows selected", "of them copies of target rows",
                  "pairs of selected rows at that cosine", "pool rows set aside"], "lrrrr", rows)


def plan_demo() -> str:
    """``gio-spark plan``'s embedding estimate for the demo against the run that followed (the
    latest record)."""
    r = [r for r in records("plan_cpu_2cores.jsonl") if r["case"] == "demo"][-1]
    rows = [[side, f"{s.get('texts', s['rows']):,}", s["tasks"], f"{s['estimate_s']:.1f}",
             f"{s['took_s']:.1f}", f"{s['ratio']:.2f}"] for side, s in r["sides"].items()]
    rows.append(["both", "", "", f"{r['estimate_s']:.1f}", f"{r['took_s']:.1f}",
                 f"{r['ratio']:.2f}"])
    return table(["side", "texts embedded", "tasks", "planned s", "embed took s",
                  "planned / took"],
                 "lrrrrr", rows)


def plan_memory() -> str:
    """``gio-spark plan``'s driver memory for each phase of the demo's run and of the precomputed
    pool's against what that phase measured (the latest record of each)."""
    rows = []
    for case, name in (("demo", "demo (300 x 40 centroids)"),
                       ("precomputed", "50k precomputed (5,000 x 1,500 centroids)")):
        r = [r for r in records("plan_cpu_2cores.jsonl") if r["case"] == case][-1]
        rows += [[name, phase, f"{p['planned_mib']:.0f}", f"{p['runtime_mib']:.0f}",
                  f"{p['used_mib']:.0f}", f"{p['ratio']:.2f}"]
                 for phase, p in r["phases"].items()]
    return table(["run", "phase", "planned MiB", "of which JAX's runtime", "measured MiB",
                  "planned / measured"], "llrrrr", rows)


def dii() -> str:
    rows = []
    for r in records("dii_vs_dadapy_cpu_2cores.jsonl"):
        case = (f"tutorial (N={r['n']}, D={r['d']})" if r["case"] == "tutorial"
                else f"N={thousands(r['n'])}, D={r['d']}")
        ours, theirs = r["ours"], r["dadapy"]
        rows.append([case, r["epochs"], f"{ours['s_per_epoch']:.4f}", f"{theirs['s_per_epoch']:.4f}",
                     f"{r['speedup_per_epoch']:.2f}x",
                     round(ours["peak_rss_mib"]), round(theirs["peak_rss_mib"]),
                     f"{r['weights_cosine']:.9f}"])
    return table(["case", "epochs timed", "ours s/epoch", "DADApy s/epoch", "speed-up",
                  "ours peak RSS (MiB)", "DADApy peak RSS (MiB)", "cosine of final weights"],
                 "lrrrrrrr", rows)


def gaf() -> str:
    rows = [[thousands(r["params"]), r["microbatches"], f"{r['reference_s_per_step']:.5f}",
             f"{r['gio_core_s_per_step']:.5f}", times(r["speedup"])]
            for r in records("gaf_vs_reference_cpu_2cores.jsonl")]
    return table(["parameters", "micro-batches", "reference s/step", "ours s/step", "speed-up"],
                 "rrrrr", rows)


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {round(seconds % 60)} s"


def imnn() -> str:
    """The last run of the file."""
    r = records("imnn_paths_cpu_2cores.jsonl")[-1]
    label = {"in_memory": "in memory (`GradientIMNN`, one compiled loop)",
             "local": f"streamed from Delta by the driver (`--local`, batches of {r['n_s']})",
             "spark": f"Spark on {r['master']}, the fit one barrier job (`imnn.barrier`, the "
                      "default)",
             "spark_two_jobs": f"Spark on {r['master']}, `imnn.barrier: false` (2 jobs an "
                               "iteration; the baseline)"}
    rows = []
    for path, text in label.items():
        if path not in r:
            continue
        p = r[path]
        measured = path == "in_memory" or p["seconds_to_detF_40_measured"]
        shown = f"{p['max_detF']}" + (" (max)" if path == "in_memory" else "")
        time_to = _minutes(p["seconds_to_detF_40"]) + (
            "" if measured else f" (from {p['iterations']} iterations)")
        rows.append([text, rate(p["iterations_per_s"]), time_to, shown if measured else "—"])
    return table(["path", "iterations/s", "time to det F ≥ 40", "det F there"], "lrrr", rows)


WORKERS = {"loop": "a plain Python loop calling `main` (one process, arrays kept in memory)",
           "pool": "a pool of 2 long-lived processes, one BLAS thread each (no store)",
           "process_per_index": "the source's way: a fresh Python process per index, 2 at a time",
           "spark_ipt1": "`datamodels work`, local[2], 1 index per task",
           "spark_ipt4": "`datamodels work`, local[2], 4 indices per task",
           "spark_ipt16": "`datamodels work`, local[2], 16 indices per task"}


def datamodels_workers() -> str:
    rows = []
    for r in records("datamodels_workers_cpu_2cores.jsonl"):
        label = WORKERS.get(r["path"], r["path"])
        if r["path"] == "process_per_index":
            label += f" ({r['models']} timed)"
        rows.append([label, rate(r["models_per_s"]), f"{r['vs_loop']:.2f}x"])
    return table(["how the models run", "models/s", "vs the loop"], "lrr", rows)


def datamodels_regression() -> str:
    rows = []
    for r in records("datamodels_regression_cpu_2cores.jsonl"):
        targets = thousands(r["targets"])
        if r["gio_core_targets_timed"] < r["targets"]:
            targets += f" ({r['gio_core_targets_timed']} timed)"
        ours, theirs = r["gio_core_s_per_target"], r["sklearn_s_per_target"]
        rows.append([thousands(r["models"]), thousands(r["examples"]), targets,
                     "Gram" if r["mode"] == "gram" else r["mode"], f"{ours:.3g}", f"{theirs:.3g}",
                     times(r["speedup"]), cosine(r["cosine_min"])])
    return table(["models", "examples", "targets", "mode", "gio_core s/target",
                  "scikit-learn s/target", "speed-up", "min cosine"], "rrrlrrrr", rows)


QUALITY_CASES = {"mixture16": "mixture 16-D", "mixture384": "mixture 384-D",
                 "digits": "digits", "docstrings": "docstrings",
                 "text_numpy": "numpy's docstrings", "text_man5": "man pages, section 5",
                 "text_pyspark": "pyspark's docstrings", "text_licences": "licence texts"}
QUALITY_COLUMNS = [("gio_rows", "GIO rows (KL picks)"), ("gio_rows_fill", "GIO rows, filled"),
                   ("gio_clusters", "GIO clusters, filled"),
                   ("gio_pipeline", "pipeline: clusters, then rows"),
                   ("nn_round_robin", "nearest round-robin"), ("random", "random"),
                   ("dsir|datamodels", "DSIR (text) / datamodels (digits)")]
# The mixtures' probe is near 1.0 for every method; the table shows accuracy for these:
PROBE_CASES = {"digits", "docstrings", "text_numpy", "text_man5", "text_pyspark",
               "text_licences"}


def quality() -> str:
    """One row a case and budget (and GIO's own ``mmd`` stop), MMD², share and probe accuracy,
    the best distance and accuracy of each row in bold."""
    runs: dict = {}
    for r in records("quality/quality_cpu_2cores.jsonl"):
        if isinstance(r["budget"], str) and r["budget"] != "gio_rows mmd stop":
            continue                  # the other own sizes: quality_own_size's table
        method = "gio_rows" if r["method"] == "gio_rows_mmd_stop" else r["method"]
        runs.setdefault((r["case"], r["budget"]), {})[method] = r
    rows = []
    for case, name in QUALITY_CASES.items():
        budgets = [(b, got) for (c, b), got in runs.items() if c == case]
        for budget, got in sorted(budgets, key=lambda bg: bg[1]["gio_rows"]["rows"]):
            cells = [next((got[m] for m in key.split("|") if m in got), None)
                     for key, _ in QUALITY_COLUMNS]
            present = [c for c in cells if c]
            best_mmd = min(round(c["mmd"], 4) for c in present)
            best_acc = max(round(c["probe_acc"], 3) for c in present)
            shown = []
            for c in cells:
                if c is None:
                    shown.append("—")
                    continue
                mmd = f"{c['mmd']:.4f}"
                mmd = f"**{mmd}**" if round(c["mmd"], 4) == best_mmd else mmd
                text = f"{mmd}, {c['share']:.2f}"
                if case in PROBE_CASES:
                    acc = f"{c['probe_acc']:.3f}"
                    text += ", acc " + (f"**{acc}**" if round(c["probe_acc"], 3) == best_acc
                                        else acc)
                shown.append(text)
            rows.append([f"{name}, {thousands(got['gio_rows']['rows'])}"
                         + (" (`mmd` stop)" if isinstance(budget, str) else ""), *shown])
    return table(["case, rows", *[title for _, title in QUALITY_COLUMNS]],
                 "l" * (len(QUALITY_COLUMNS) + 1), rows)


def quality_own_size() -> str:
    """Without a budget, each way's own size against the size where GIO on the rows comes
    closest to the held-out rows: rows, held-out MMD² and its ratio to that best."""
    got: dict = {}
    for r in records("quality/quality_cpu_2cores.jsonl"):
        got[(r["case"], r["budget"], r["method"])] = r
    ways = [("gio_clusters mmd stop", "gio_clusters_mmd_stop"),
            ("gio_rows mmd stop", "gio_rows_mmd_stop"),
            ("gio_pipeline_density own size", "gio_pipeline_density"),
            ("gio_pipeline_density own size", "nn_round_robin")]
    rows = []
    for case, name in QUALITY_CASES.items():
        best = got.get((case, "held-out best", "heldout_best"))
        if best is None:
            continue
        cells = [f"{thousands(best['rows'])}, {best['mmd']:.4f}"]
        for budget, method in ways:
            r = got[(case, budget, method)]
            ratio = f"{r['mmd'] / best['mmd']:.2f}x"
            cells.append(f"{thousands(r['rows'])}, {r['mmd']:.4f} ({ratio}), {r['share']:.2f}")
        rows.append([name, *cells])
    return table(["case", "held-out best: rows, MMD²", "cluster path's own stop (`own_size: "
                  "clusters`)", "GIO rows, `mmd` stop", "`own_size: density` (the default's "
                  "`auto`)", "nearest round-robin, as many"],
                 "llllll", rows)


def pipeline_scale() -> str:
    """The whole run at each pool size of the latest bench/pipeline_scale.py run (and at the
    sizes also run with the earlier ``pool_k: auto`` rule), and the fitted exponents."""
    runs = records("pipeline_scale_cpu_2cores.jsonl")
    at = max(i for i, r in enumerate(runs) if "summary" in r)
    summary = runs[at]
    sizes = summary["rows"]
    this = []                           # the run's lines: those before its summary, back to
    for r in reversed(runs[:at]):       # the one before it
        if "summary" in r:
            break
        this.insert(0, r)
    auto = {r["rows"]: r for r in this if r.get("rule", "auto") == "auto"}
    # a run that was stopped part way leaves lines without a summary: the latest line of each
    # size and rule is this run's
    before = list({r["rows"]: r for r in this if r.get("rule") == "before"}.values())
    rows = []
    for label, r in [(f"{n:,}", auto[n]) for n in sizes] + \
            [(f"{r['rows']:,}, earlier rule (4·sqrt(rows))", r) for r in before]:
        rows.append([label, f"{r['pool_k']:,}", fixed(r["checks"], 1),
                     fixed(r.get("quantize_whole"), 1), fixed(r["quantize"], 1),
                     fixed(r.get("select_explode_whole"), 1), fixed(r["select"], 1),
                     fixed(r["explode"], 1), fixed(r["wall"], 1),
                     fixed(r["peak_mib"]["python"], 0), fixed(r["peak_mib"]["jvm"], 0),
                     f"{r['mmd_heldout']:.5f}", f"{r['share_target_components']:.2f}"])
    fits = [("exponent b (s ~ rows^b), every size", summary)]
    large = summary.get("from_a_million")
    if large and len(large["rows"]) >= 2:
        fits.append((f"exponent b, {large['rows'][0]:,} rows and up", large))
    for label, fit in fits:
        rows.append([label, "", fixed(fit["checks"], 2), fixed(fit.get("quantize_whole"), 2),
                     fixed(fit["quantize"], 2), fixed(fit.get("select_explode_whole"), 2),
                     fixed(fit["select"], 2), fixed(fit["explode"], 2), fixed(fit["wall"], 2),
                     fixed(fit["peak_python"], 2), "", "", ""])
    return table(["pool rows", "pool clusters", "start + checks s", "quantize s",
                  "its K-means s", "select + explode s", "its select s", "its explode s",
                  "whole run s", "driver Python peak MiB", "driver JVM peak MiB",
                  "held-out MMD²", "target share"], "lrrrrrrrrrrrr", rows)


TABLES = {f.__name__.replace("_", "-"): f for f in
          (compat, scale, scale_weighted, kmeans, kmeans_64d, embed_backends, stages, row_step, small_runs,
           pipeline_scale,
           decontaminate_search, decontaminate_demo, plan_demo, plan_memory, dii, gaf, imnn,
           datamodels_workers, datamodels_regression, quality, quality_own_size)}


def render_page(text: str) -> str:
    """The page with each marked table rendered afresh; an unknown name raises KeyError."""
    return MARKED.sub(lambda m: m.group(1) + "\n" + TABLES[m.group(2)]() + "\n" + m.group(4), text)


def pages() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only say which pages differ from the results (exit 1 if any)")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        with open(page, encoding="utf-8") as f:
            text = f.read()
        fresh = render_page(text)
        if fresh != text:
            stale.append(os.path.relpath(page, ROOT))
            if not args.check:
                with open(page, "w", encoding="utf-8") as f:
                    f.write(fresh)
    verb = "differ from bench/results (run: make references)" if args.check else "rewritten"
    for page in stale:
        print(f"{page}: {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
