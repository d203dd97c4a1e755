"""The benchmarks that drive the stages' own functions still run: small sizes, real Spark.

bench/stages.py went stale once (the stages' signatures changed under it and nothing ran it);
these run it and bench/kmeans.py as their make targets do, at a few thousand rows, and check
what they report.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script, *args, tmp_path):
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_stages_bench_times_every_stage_and_selects_the_targets_rows(tmp_path):
    [row] = run_bench("stages.py", "--rows", "3000", "--target-rows", "300", "--pool-k", "30",
                      "--target-k", "10", "--cores", "2", tmp_path=tmp_path)
    assert list(row["seconds"]) == ["baseline_read_count", "validate", "quantize", "select",
                                    "explode"]
    assert all(v > 0 for v in row["seconds"].values())
    assert row["algorithm"] == "lloyd"
    assert 0 < row["selected_rows"] < 3000
    # The target draws from 5 of the pool's 50 components (10% of its rows); the selection
    # takes mostly theirs (0.64 at this size: 30 clusters mix components).
    assert row["selected_from_target_components"] > 0.4, row


def test_kmeans_bench_reaches_scikit_learns_objective(tmp_path):
    rows = run_bench("kmeans.py", "--rows", "3000", "--k", "20", "--max-iter", "3",
                     "--variants", "stage,core,sklearn-2", tmp_path=tmp_path)
    by = {r["variant"]: r for r in rows if "variant" in r}
    assert set(by) == {"start", "stage", "core", "sklearn-2"}
    assert by["stage"]["iterations"] == by["core"]["iterations"] == 3
    assert by["stage"]["fitted_rows"] == 3000 and by["stage"]["start_seconds"] > 0
    # the same start and steps as scikit-learn's Lloyd: the same objective but for rounding
    assert abs(by["core"]["objective"] / by["sklearn-2"]["objective"] - 1) < 1e-5
    ratio = by["stage"]["objective"] / by["sklearn-2"]["objective"]       # its own start
    assert 0.97 < ratio < 1.03, ratio
    summary = rows[-1]
    assert summary["stage"]["time_vs_faiss2"] is None
    assert summary["core"]["time_vs_sklearn2"] == round(
        by["core"]["seconds"] / max(by["sklearn-2"]["seconds"], 1e-3), 2)


def test_the_docs_benchmark_tables_are_those_the_results_give():
    from bench import report
    marked = {}
    for page in report.pages():
        with open(page, encoding="utf-8") as f:
            text = f.read()
        for match in report.MARKED.finditer(text):
            marked[match.group(2)] = page
        assert report.render_page(text) == text, f"{page} is stale: run make references"
    # every renderer has its table on a page, and the quality table shows the results' figures
    assert set(marked) == set(report.TABLES), set(report.TABLES) ^ set(marked)
    quality = report.quality()
    assert ("| docstrings, 692 | 0.0061, 0.34, acc 0.740 | **0.0033**, 0.36, acc **0.750** | "
            "0.0056, 0.30, acc **0.750** | 0.0035, 0.35, acc 0.727 |") in quality
    assert ("| man pages, section 5 | 436, 0.0054 | 941, 0.0122 (2.25x), 0.14 | 316, 0.0071 "
            "(1.32x), 0.30 | 330, 0.0064 (1.19x), 0.30 |") in report.quality_own_size()


def test_a_changed_result_changes_its_table(tmp_path, monkeypatch):
    from bench import report
    (tmp_path / "gaf_vs_reference_cpu_2cores.jsonl").write_text(json.dumps(
        {"params": 1234, "microbatches": 3, "reference_s_per_step": 0.5,
         "gio_core_s_per_step": 0.25, "speedup": 2.0}) + "\n")
    monkeypatch.setattr(report, "RESULTS", str(tmp_path))
    page = "a\n<!-- bench-table: gaf -->\n| old |\n<!-- /bench-table -->\nb\n"
    assert report.render_page(page) == (
        "a\n<!-- bench-table: gaf -->\n\n| parameters | micro-batches | reference s/step | ours s/step"
        " | speed-up |\n| ---: | ---: | ---: | ---: | ---: |\n| 1,234 | 3 | 0.50000 | 0.25000 | 2.0x |"
        "\n\n<!-- /bench-table -->\nb\n")


@pytest.mark.e2e           # three whole runs in their own processes: over two minutes
def test_pipeline_scale_bench_times_each_stage_and_fits_the_exponents(tmp_path):
    rows = run_bench("pipeline_scale.py", "--rows", "3000", "9000", "--before-rows", "3000",
                     "--share", "0.02", "--work", str(tmp_path / "work"), tmp_path=tmp_path)
    runs, summary = rows[:-1], rows[-1]
    assert [(r["rows"], r["rule"]) for r in runs] == [(3000, "auto"), (9000, "auto"),
                                                      (3000, "before")]
    # the earlier rule's count, set as a number: at 3,000 rows and 2% both rules give the rows
    assert runs[2]["pool_k"] == runs[0]["pool_k"] == 3000
    for r in runs:
        stages = [r[k] for k in ("checks", "quantize", "select", "explode")]
        assert all(v is not None and v > 0 for v in stages), r
        assert r["wall"] > r["explode_at"] > r["select_at"] > r["select_start_at"] \
            > r["quantize_at"] > r["checks"]
        # whole stages from line to line hold their own figures (rounded to 0.1 s)
        assert r["quantize_whole"] + 0.1 >= r["quantize"]
        assert r["select_explode_whole"] + 0.1 >= r["select"] + r["explode"]
        assert r["peak_mib"]["python"] > 100 and r["peak_mib"]["jvm"] > 100
        # each figure rounded to 0.1 MiB on its own
        assert r["peak_mib"]["both"] <= r["peak_mib"]["python"] + r["peak_mib"]["jvm"] + 0.15
        # the row budget (2% of the pool) is what the run selects, mostly the target's rows
        assert 0 < r["selected_rows"] <= 0.02 * r["rows"]
        assert r["share_target_components"] > 0.5 and r["mmd_heldout"] > 0
        assert r["pool_k"] >= 50
    assert summary["rows"] == [3000, 9000]           # the earlier rule's run is not fitted
    for key in ("wall", "quantize", "quantize_whole", "select_explode_whole", "select",
                "explode", "peak_both"):
        assert isinstance(summary[key], float), summary
    assert summary["from_a_million"]["rows"] == [] and summary["from_a_million"]["wall"] is None
    # The pool's input is written once: a second run finds it.
    assert os.path.exists(tmp_path / "work" / "pool-3000" / "done")
