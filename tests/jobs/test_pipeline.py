"""End to end with the real model, real Spark and real Delta tables."""
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from jobs.config import load_config
from jobs.common.errors import InputError
from jobs.pipeline import run_pipeline
from jobs.state import reuse, stagelog
from jobs.io import tables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_config(tmp_path, docstrings, **sets):
    pool, target = docstrings
    pool_path, target_path = str(tmp_path / "pool.parquet"), str(tmp_path / "target.parquet")
    pd.DataFrame(pool).to_parquet(pool_path)
    pd.DataFrame(target).to_parquet(target_path)
    overrides = [f"pool.path={pool_path}", f"target.path={target_path}", "pool.format=parquet",
                 "target.format=parquet", "quantize.pool_k=40", "quantize.target_k=8",
                 "select.k=3", f"output.path={tmp_path / 'out'}", "spark.master=local[2]"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return load_config(os.path.join(ROOT, "conf", "demo.yaml"), overrides)


def versions(spark, cfg, name):
    from delta.tables import DeltaTable
    return DeltaTable.forPath(spark, tables.table_path(cfg.output.path, name)).history().count()


@pytest.fixture(scope="module")
def text_run(spark, tmp_path_factory, docstrings):
    tmp = tmp_path_factory.mktemp("text_run")
    cfg = text_config(tmp, docstrings)
    summary = run_pipeline(spark, cfg)
    return cfg, summary


def test_end_to_end_tables(spark, text_run, docstrings):
    """Without a row budget, by default (select.own_size: auto) the row step picks rows among
    the chosen clusters and their neighbours, as many as it sizes by density; with
    select.own_size: clusters every row of every chosen cluster, as many as select's picks
    hold, which the row step records as what whole clusters would have given."""
    cfg, summary = text_run
    out = cfg.output.path
    assignments = tables.read_table(spark, out, "pool_assignments")
    base = np.mean([r["package"] in ("email", "http", "urllib") for r in docstrings[0]])

    def selected_rows(run_id):
        selected = spark.read.format("delta").load(os.path.join(out, "selected_rows"))
        # The pool's own columns plus the three added ones.
        assert selected.columns == ["doc_id", "module", "package", "text", "cluster_id", "rank",
                                    "run_id"]
        rows = selected.where(F.col("run_id") == run_id).collect()
        # The target is email/http/urllib: selected rows come from those packages far more
        # often than the pool's base rate.
        assert np.mean([r["package"] in ("email", "http", "urllib") for r in rows]) > 2 * base
        return rows

    rows = selected_rows(summary["run_id"])
    step = json.loads(stagelog.latest(spark, out, "explode", summary["run_id"])["detail"])
    figures = step["row_step"]
    assert figures["own_size"] == figures["rows"] == len(rows) == summary["selected_rows"]
    assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert len({r["doc_id"] for r in rows}) == len(rows)

    whole = run_pipeline(spark, dataclasses.replace(
        cfg, select=dataclasses.replace(cfg.select, own_size="clusters")))
    assert whole["run_id"] != summary["run_id"]
    selection = tables.read_table(spark, out, "selection").where(
        F.col("run_id") == whole["run_id"])
    chosen = {r["cluster_id"]: r["rank"] for r in selection.collect()}
    rows = selected_rows(whole["run_id"])
    assert rows and all(chosen[r["cluster_id"]] == r["rank"] for r in rows)
    # Every row of every chosen cluster, and nothing else.
    want = assignments.where(F.col("cluster_id").isin(list(chosen))).count()
    assert len(rows) == want == whole["selected_rows"] == figures["clusters_size"]
    sizes = {r["cluster_id"]: r["cluster_size"] for r in selection.collect()}
    assert sum(sizes.values()) == want
    run = tables.read_table(spark, out, "runs").where(F.col("run_id") == whole["run_id"]).first()
    assert run["picks"] == len(chosen) and len(run["kl_curve"]) == run["picks"]
    # The default rule: the picks end where the MMD to the target was least; the diagnostics
    # hold the KL noise floor drawn with the curve and the rows chosen.
    assert run["stop_reason"] in ("mmd", "pool_exhausted")
    assert len(run["mmd_curve"]) == run["picks"] and run["mmd_curve"][-1] == min(run["mmd_curve"])
    diag = json.loads(run["diagnostics"])
    assert diag["rows_selected"] == want and diag["warm_up_picks"] == min(cfg.select.k, len(chosen))
    assert diag["mmd_bandwidth"] > 0 and np.isfinite(diag["kl_noise_floor"])
    assert os.path.exists(os.path.join(out, "plots", f"{whole['run_id']}_kl_curve.png"))
    assert os.path.exists(os.path.join(out, "plots", f"{summary['run_id']}_kl_curve.png"))


def test_rerun_reuses_and_never_duplicates(spark, text_run):
    cfg, summary = text_run
    before = {n: versions(spark, cfg, n) for n in ("pool_embeddings", "centroids", "selection",
                                                    "selected_rows")}
    runs = spark.read.format("delta").load(os.path.join(cfg.output.path, "selected_rows")) \
        .select("run_id").distinct().count()           # the tests above may have added some
    again = run_pipeline(spark, cfg)
    assert again["selected_rows"] == summary["selected_rows"]
    assert {n: versions(spark, cfg, n) for n in before} == before      # nothing rewritten
    # A new select parameter: only select and explode run again, replacing nothing of the first run.
    cfg2 = dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, k=4))
    third = run_pipeline(spark, cfg2)
    assert third["run_id"] != summary["run_id"]
    assert versions(spark, cfg, "pool_embeddings") == before["pool_embeddings"]
    assert versions(spark, cfg, "centroids") == before["centroids"]
    selected = spark.read.format("delta").load(os.path.join(cfg.output.path, "selected_rows"))
    assert selected.where(F.col("run_id") == summary["run_id"]).count() == summary["selected_rows"]
    assert selected.select("run_id").distinct().count() == runs + 1


def test_same_inputs_and_seed_same_selection(spark, text_run, tmp_path, docstrings):
    cfg, summary = text_run
    fresh = text_config(tmp_path, docstrings)
    other = run_pipeline(spark, fresh)
    a = tables.read_table(spark, cfg.output.path, "selection").where(
        F.col("run_id") == summary["run_id"]).orderBy("rank").collect()
    b = tables.read_table(spark, fresh.output.path, "selection").where(
        F.col("run_id") == other["run_id"]).orderBy("rank").collect()
    assert [r["cluster_id"] for r in a] == [r["cluster_id"] for r in b]
    assert [r["kl_after"] for r in a] == pytest.approx([r["kl_after"] for r in b], abs=1e-5)


def vectors_config(tmp_path, pool_vecs, target_vecs, **sets):
    pool_path, target_path = str(tmp_path / "pv.parquet"), str(tmp_path / "tv.parquet")
    pd.DataFrame({"id": range(len(pool_vecs)), "vec": list(pool_vecs)}).to_parquet(pool_path)
    pd.DataFrame({"id": range(len(target_vecs)), "vec": list(target_vecs)}).to_parquet(target_path)
    overrides = [f"pool.path={pool_path}", f"target.path={target_path}"]
    for side in ("pool", "target"):
        overrides += [f"{side}.format=parquet", f"{side}.id_column=id",
                      f"{side}.embedding_column=vec"]
    overrides += ["quantize.pool_k=30", "quantize.target_k=10", "select.k=3",
                  f"output.path={tmp_path / 'out'}"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return load_config(os.path.join(ROOT, "conf", "demo.yaml"), overrides)


def clustered_vectors(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (6, 8))
    comp = rng.integers(0, 6, 600)
    pool = (centres[comp] + rng.normal(0, 1, (600, 8))).astype(np.float32)
    target = (centres[rng.integers(0, 2, 80)] + rng.normal(0, 1, (80, 8))).astype(np.float32)
    return pool, comp, target


def test_precomputed_embeddings_skip_the_model(spark, tmp_path):
    pool, comp, target = clustered_vectors()
    cfg = vectors_config(tmp_path, pool, target, embed__model="/no/such/model")
    summary = run_pipeline(spark, cfg)
    rows = spark.read.format("delta").load(summary["table"]).select("id").collect()
    picked = comp[[r["id"] for r in rows]]
    assert len(rows) > 0 and np.isin(picked, [0, 1]).mean() > 0.9
    assert not os.path.exists(os.path.join(cfg.output.path, "pool_embeddings"))


def test_a_row_budget_gives_that_many_rows(spark, tmp_path):
    """select.max_rows with whole clusters (select.refine: clusters): the selection stops at
    the pick that reaches the budget and explode samples that last cluster down, so exactly the
    budget comes out, every other chosen cluster whole; select.max_fraction is a share of the
    pool's rows. A re-run reuses both."""
    pool, comp, target = clustered_vectors()
    runs = {}
    for name, sets in (("rows", {"select__max_rows": 150}),
                       ("fraction", {"select__max_fraction": 0.1})):
        (tmp_path / name).mkdir()
        cfg = vectors_config(tmp_path / name, pool, target, select__stop_criterion="none",
                             select__refine="clusters", **sets)
        summary = run_pipeline(spark, cfg)
        rows = (spark.read.format("delta").load(summary["table"])
                .where(F.col("run_id") == summary["run_id"]).collect())
        runs[name] = (cfg, summary, rows)
        selection = (tables.read_key(spark, cfg.output.path, "selection", summary["run_id"])
                     .orderBy("rank").collect())
        per_cluster = Counter(r["cluster_id"] for r in rows)
        assert [r["rank"] for r in selection] == list(range(1, len(selection) + 1))
        assert per_cluster[selection[-1]["cluster_id"]] <= selection[-1]["cluster_size"]
        for picked in selection[:-1]:
            assert per_cluster[picked["cluster_id"]] == picked["cluster_size"]
        record = tables.read_key(spark, cfg.output.path, "runs", summary["run_id"]).first()
        assert record["stop_reason"] == "max_rows"
    assert len(runs["rows"][2]) == runs["rows"][1]["selected_rows"] == 150
    assert len(runs["fraction"][2]) == 60                       # 10% of 600
    ids = [r["id"] for r in runs["rows"][2]]
    # Most rows from the target's two components (0.81 with the lloyd engine's clusters, which
    # are pure: two of the ten clusters picked before the budget lie elsewhere; stop_criterion
    # none here, so nothing stops the picks at the best match).
    assert len(set(ids)) == 150 and np.isin(comp[ids], [0, 1]).mean() > 0.75
    cfg, summary, rows = runs["rows"]
    again = run_pipeline(spark, cfg)
    assert again["selected_rows"] == 150 and sorted(r["id"] for r in rows) == sorted(
        r["id"] for r in spark.read.format("delta").load(summary["table"])
        .where(F.col("run_id") == summary["run_id"]).collect())


def test_the_row_step_picks_the_budget_among_candidate_rows(spark, tmp_path, capsys):
    """With a row budget (select.refine: auto), explode runs GIO again on the rows of the
    chosen clusters and of their neighbours: exactly the budget, ranked 1..budget, each row
    with its own cluster, candidates (select.candidates x the budget) and figures in the stage
    log; closer to the target than whole clusters. Candidates over select.max_candidates go
    to Spark tasks and a second round on the driver where twice the budget fits the cap (as
    close as the driver alone); where it does not, auto takes whole clusters and says why,
    and refine: rows has the tasks pick the budget (the same budget and ranks, in parts of
    about the cap, closer to the target than whole clusters)."""
    from gio_core import mmd_rbf
    pool, comp, target = clustered_vectors(4)
    cfg = vectors_config(tmp_path, pool, target, select__max_rows=100)
    summary = run_pipeline(spark, cfg)
    rows = (spark.read.format("delta").load(summary["table"])
            .where(F.col("run_id") == summary["run_id"]).orderBy("rank").collect())
    assert len(rows) == summary["selected_rows"] == 100
    assert [r["rank"] for r in rows] == list(range(1, 101))       # one rank per row
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 100
    plan = reuse.make_plan(spark, cfg)
    assignments = {r["row_id"]: r["cluster_id"] for r in tables.read_key(
        spark, cfg.output.path, "pool_assignments", plan.clustering_id).collect()}
    assert all(assignments[str(r["id"])] == r["cluster_id"] for r in rows)
    figures = json.loads(stagelog.latest(spark, cfg.output.path, "explode",
                                         summary["run_id"])["detail"])["row_step"]
    assert figures["rows"] == 100 and 300 <= figures["candidate_rows"] < 600
    assert figures["where"] == "driver", figures
    assert figures["target_rows"] == 80
    assert "explode: the row step: 100 of" in capsys.readouterr().out
    # A cap below what the candidate clusters hold (322 rows for the 300 wanted) and below
    # the 200 rows Spark tasks would pick for a second round on the driver: auto takes whole
    # clusters, and says why (on the same output: the clustering is reused)...
    capped = vectors_config(tmp_path, pool, target, select__max_rows=100,
                            select__max_candidates=150)
    whole_run = run_pipeline(spark, capped)
    assert ("whole clusters, not the row step: its candidate clusters hold 322 rows, more than "
            "select.max_candidates=150, and the 200 rows Spark tasks would pick for the "
            "driver's second round do not fit it either") in capsys.readouterr().out
    whole = [r["id"] for r in spark.read.format("delta").load(whole_run["table"])
             .where(F.col("run_id") == whole_run["run_id"]).collect()]
    assert len(whole) == 100 and set(whole) != set(ids)
    assert mmd_rbf(target, pool[ids]) < mmd_rbf(target, pool[whole])
    # ... and refine: rows runs it in Spark tasks alone, in parts of at most about 150 rows:
    # the same budget and ranks, closer to the target than whole clusters.
    capped.select.refine = "rows"
    parted = run_pipeline(spark, capped)
    in_tasks = spark.read.format("delta").load(parted["table"]).where(
        F.col("run_id") == parted["run_id"]).orderBy("rank").collect()
    assert [r["rank"] for r in in_tasks] == list(range(1, 101))
    assert all(assignments[str(r["id"])] == r["cluster_id"] for r in in_tasks)
    task_ids = [r["id"] for r in in_tasks]
    figures = json.loads(stagelog.latest(spark, capped.output.path, "explode",
                                         parted["run_id"])["detail"])["row_step"]
    assert figures["where"] == "tasks" and figures["rows"] == 100, figures
    assert not figures["second_round"] and figures["mmd"] is None, figures
    assert figures["parts"] >= 3 and figures["largest_part"] <= 200, figures
    assert ("explode: the row step in Spark tasks: 100 of 322 candidate rows from 17 clusters "
            "(8 chosen, the rest nearest the target), against 80 target rows, in "
            f"{figures['parts']} parts of 150 rows or about that") in capsys.readouterr().out
    assert mmd_rbf(target, pool[task_ids]) < mmd_rbf(target, pool[whole])
    assert mmd_rbf(target, pool[task_ids]) < 1.5 * mmd_rbf(target, pool[ids])
    # A cap below the 322 rows of the candidate clusters but above twice the budget (halfway
    # to select.candidates' 3x): the parts pick 200 rows in tasks, the driver 100 among them.
    two = vectors_config(tmp_path, pool, target, select__max_rows=100,
                         select__max_candidates=310)
    two_run = run_pipeline(spark, two)
    figures = json.loads(stagelog.latest(spark, two.output.path, "explode",
                                         two_run["run_id"])["detail"])["row_step"]
    assert figures["where"] == "tasks+driver" and figures["second_round"], figures
    assert figures["part_picks"] == 200 and figures["rows"] == 100, figures
    assert "explode: the row step on the driver: 100 of the parts' 200 picks" in \
        capsys.readouterr().out
    two_ids = [r["id"] for r in spark.read.format("delta").load(two_run["table"])
               .where(F.col("run_id") == two_run["run_id"]).collect()]
    assert mmd_rbf(target, pool[two_ids]) < 1.1 * mmd_rbf(target, pool[ids])


def test_own_size_density_sizes_a_selection_without_a_budget(spark, tmp_path, capsys):
    """select.own_size: density, no row budget: the row step picks as many rows as the
    candidates hold in the target's proportions. The target is two of six components, about
    100 pool rows each, so fewer than 200 rows, nearly all from those two; ranked
    1..n, the size and the clusters' size in the stage log (where the candidates do not fit
    select.max_candidates: test_where_the_row_step_runs_follows_the_cap)."""
    pool, comp, target = clustered_vectors()
    cfg = vectors_config(tmp_path, pool, target, select__own_size="density")
    summary = run_pipeline(spark, cfg)
    rows = (spark.read.format("delta").load(summary["table"])
            .where(F.col("run_id") == summary["run_id"]).orderBy("rank").collect())
    figures = json.loads(stagelog.latest(spark, cfg.output.path, "explode",
                                         summary["run_id"])["detail"])["row_step"]
    n = len(rows)
    assert n == summary["selected_rows"] == figures["own_size"] == figures["rows"], figures
    assert [r["rank"] for r in rows] == list(range(1, n + 1))
    # The largest pool subset in the target's proportions: 96 pool rows of the component
    # that holds 55% of the 80 target rows, so 174; the estimate runs low with 36 and 44 target
    # rows per component (its per-row estimates are noisy, and a lower quantile is taken).
    assert (comp == 1).sum() == 96 and 0.6 * 174 <= n <= 1.2 * 174, n
    assert n == 128 and figures["candidate_rows"] == 368, figures     # the pipeline page's log
    assert np.isin(comp[[r["id"] for r in rows]], [0, 1]).mean() > 0.95
    assert f"explode: the selection's own size: {n} rows" in capsys.readouterr().out


def test_own_size_auto_takes_whole_clusters_where_the_candidates_do_not_fit(spark, tmp_path,
                                                                          capsys):
    """The default (select.own_size: auto) on the same rows with select.max_candidates below
    the candidates' 368 rows: the log says the clusters size the selection, and the rows are
    those select.own_size: clusters selects, under a run id of their own."""
    pool, comp, target = clustered_vectors()
    cfg = vectors_config(tmp_path, pool, target, select__max_candidates=100)
    auto = run_pipeline(spark, cfg)
    assert "select's chosen clusters decide it instead" in capsys.readouterr().out
    whole = run_pipeline(spark, vectors_config(tmp_path, pool, target,
                                               select__own_size="clusters"))

    def ids(summary):
        return sorted(r["id"] for r in spark.read.format("delta").load(summary["table"])
                      .where(F.col("run_id") == summary["run_id"]).collect())
    assert auto["run_id"] != whole["run_id"]
    assert ids(auto) == ids(whole) and auto["selected_rows"] == whole["selected_rows"] > 0
    detail = stagelog.latest(spark, cfg.output.path, "explode", auto["run_id"])["detail"]
    assert json.loads(detail)["row_step"] is None


def test_where_the_row_step_runs_follows_the_cap():
    """The driver where the candidate clusters fit select.max_candidates; Spark tasks and the
    driver where twice the selection does; else the tasks alone under refine: rows, and
    whole clusters under auto, with the reason (also for select.candidates 1, which leaves
    the tasks nothing to narrow, and for select.own_size: density, which sizes on the
    driver)."""
    from types import SimpleNamespace as Ns

    from jobs.stages.explode import rounds
    auto = Ns(max_candidates=1000, candidates=3.0, refine="auto")
    assert rounds(auto, 1000, 300) == ("driver", "")
    assert rounds(auto, 1500, 500) == ("tasks+driver", "")
    where, why = rounds(auto, 1500, 501)
    assert where is None and why.startswith("its candidate clusters hold 1500 rows, more than "
                                            "select.max_candidates=1000, and the 1002 rows")
    assert rounds(Ns(max_candidates=1000, candidates=3.0, refine="rows"), 1500, 501) == \
        ("tasks", "")
    where, why = rounds(Ns(max_candidates=1000, candidates=1.0, refine="auto"), 1500, 400)
    assert where is None and "select.candidates=1 leaves Spark tasks nothing to narrow" in why
    # select.own_size: density without a budget: the row step runs and sizes the selection
    # (on the driver only); with a budget the budget is the size
    from jobs.stages.explode import RowStep, row_step_plan
    unset = dict(refine="auto", candidates=3.0, shares=None, max_rows=None, max_fraction=None)
    density = Ns(**unset, own_size="density")
    assert row_step_plan(density, None, 100, 600) == RowStep(True, 100, 300, sized=True)
    budget = Ns(**dict(unset, max_rows=100), own_size="density")
    assert row_step_plan(budget, 100, 100, 600) == RowStep(True, 100, 300)
    assert not row_step_plan(Ns(**unset, own_size="clusters"), None, 100, 600).run
    assert rounds(auto, 1000, 300, sized=True) == ("driver", "")
    for refine in ("auto", "rows"):
        where, why = rounds(Ns(max_candidates=1000, candidates=3.0, refine=refine), 1500, 300,
                            sized=True)
        assert where is None and why.startswith(
            "select.own_size: density sizes the selection on the driver, and its candidate "
            "clusters hold 1500 rows, more than select.max_candidates=1000"), why


def test_own_size_auto_lets_the_clusters_size_what_the_driver_cannot_hold(capsys):
    """select.own_size: auto (the default) sizes a selection without a budget by density on
    the driver; where the candidates do not fit select.max_candidates, select's chosen
    clusters size it instead, and the log says so: whole clusters under select.refine: auto,
    the row step (in Spark tasks, then the driver) under rows. density takes whole clusters,
    with its reason."""
    from types import SimpleNamespace as Ns

    from jobs.stages.explode import RowStep, placed, row_step_plan
    unset = dict(candidates=3.0, shares=None, max_rows=None, max_fraction=None,
                 max_candidates=1000)
    auto = Ns(**unset, refine="auto", own_size="auto")
    step = row_step_plan(auto, None, 300, 6000)
    assert step == RowStep(True, 300, 900, sized=True)
    assert placed(auto, step, 1000) == (step, "driver")
    assert capsys.readouterr().out == ""
    said = "the selection's own size by density needs its 1500 candidate rows on the driver"
    assert placed(auto, step, 1500) == (RowStep(False, 300, 900), None)
    out = capsys.readouterr().out
    assert said in out and "select.max_candidates=1000" in out and "(300 rows" in out
    rows = Ns(**unset, refine="rows", own_size="auto")
    assert placed(rows, row_step_plan(rows, None, 300, 6000), 1500) == (
        RowStep(True, 300, 900), "tasks+driver")
    assert said in capsys.readouterr().out
    density = Ns(**unset, refine="auto", own_size="density")
    step, where = placed(density, row_step_plan(density, None, 300, 6000), 1500)
    assert where is None and not step.run and step.why.startswith("select.own_size: density")
    assert said not in capsys.readouterr().out
    # select.refine: clusters: the row step does not run, so clusters size it
    assert not row_step_plan(Ns(**unset, refine="clusters", own_size="auto"), None, 300,
                             6000).run


@pytest.mark.e2e
def test_the_pool_in_another_order_and_other_files_selects_the_same_rows(spark, tmp_path):
    """The determinism the docs promise, end to end: the same pool rows reversed and split
    over three files give the same clusters, the same picks in the same order and, with a
    row budget, the same rows in the same rank order, by the row step on the driver and in
    Spark tasks."""
    pool, comp, target = clustered_vectors(5)
    got = {}
    for name in ("as_is", "reversed"):
        (tmp_path / name).mkdir()
        cfg = vectors_config(tmp_path / name, pool, target, select__max_rows=120,
                             select__stop_criterion="none")
        if name == "reversed":
            folder = tmp_path / name / "pool_files"
            folder.mkdir()
            order = np.arange(len(pool))[::-1]
            for part, rows in enumerate(np.array_split(order, 3)):
                pd.DataFrame({"id": rows, "vec": list(pool[rows])}).to_parquet(
                    folder / f"part-{part}.parquet")
            cfg.pool.path = str(folder)
        summary = run_pipeline(spark, cfg)
        selection = (tables.read_key(spark, cfg.output.path, "selection", summary["run_id"])
                     .orderBy("rank").collect())
        centroids = (tables.read_table(spark, cfg.output.path, "centroids")
                     .where(F.col("side") == "pool").orderBy("cluster_id").collect())
        cfg.select.max_candidates, cfg.select.refine = 150, "rows"    # in Spark tasks
        in_tasks = run_pipeline(spark, cfg)
        assert json.loads(stagelog.latest(spark, cfg.output.path, "explode", in_tasks["run_id"])
                          ["detail"])["row_step"]["where"] == "tasks"
        got[name] = ([(r["rank"], r["cluster_id"], r["kl_after"]) for r in selection],
                     [list(r["centroid"]) for r in centroids],
                     *([(r["rank"], r["id"]) for r in spark.read.format("delta")
                       .load(run["table"]).where(F.col("run_id") == run["run_id"])
                       .orderBy("rank").collect()] for run in (summary, in_tasks)))
    assert got["as_is"][0] == got["reversed"][0]          # picks, order and KL, to the bit
    assert got["as_is"][1] == got["reversed"][1]          # the pool's centroids, to the bit
    assert got["as_is"][2] == got["reversed"][2] and len(got["as_is"][2]) == 120
    assert got["as_is"][3] == got["reversed"][3] and len(got["as_is"][3]) == 120


def test_a_budget_of_the_whole_pool_is_named_when_filling_it_takes_every_row(spark, tmp_path,
                                                                               capsys):
    """A row budget at or above the pool's size with the default fill (mmd) takes every row:
    the run says so in one line, with what to change."""
    pool, _, target = clustered_vectors()
    cfg = vectors_config(tmp_path, pool, target, select__max_rows=1000)
    summary = run_pipeline(spark, cfg)
    said = capsys.readouterr().out
    assert summary["selected_rows"] == len(pool) == 600
    assert "select: warning: the budget (1000 rows) is the whole pool or more, so filling it " \
        "takes every row; lower select.max_rows" in said, said[-2000:]


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("column", "pool.embedding_column 'nope' is not a column"),
    ("empty", "has no rows"),
    ("dims", "embedding dimension mismatch: pool 8, target 5"),
    ("nan", "1 with NaN, inf or null vector values (rows '3')"),
    ("small_target", "needs at least 4"),
])
def test_bad_inputs_fail_before_writing(spark, tmp_path, case, message):
    pool, _, target = clustered_vectors()
    if case == "dims":
        target = target[:, :5]
    if case == "nan":
        pool[3, 1] = np.nan
    if case == "small_target":
        target = target[:3]
    cfg = vectors_config(tmp_path, pool, target)
    if case == "missing":
        cfg.pool.path = str(tmp_path / "nowhere.parquet")
    if case == "column":
        cfg.pool.embedding_column = "nope"
    if case == "empty":
        spark.createDataFrame([], "id long, vec array<float>").write.parquet(
            str(tmp_path / "empty.parquet"))
        cfg.target.path = str(tmp_path / "empty.parquet")
    with pytest.raises(InputError) as err:
        run_pipeline(spark, cfg)
    assert message in str(err.value)
    assert not os.path.exists(cfg.output.path)


@pytest.mark.e2e
def test_spark_submit_runs_the_pipeline_and_bad_config_exits_2(tmp_path):
    pool, _, target = clustered_vectors(1)
    cfg_args = []
    cfg = vectors_config(tmp_path, pool, target)
    for side in ("pool", "target"):
        src = getattr(cfg, side)
        cfg_args += ["--set", f"{side}.path={src.path}", "--set", f"{side}.format=parquet",
                     "--set", f"{side}.id_column=id", "--set", f"{side}.embedding_column=vec"]
    cfg_args += ["--set", "quantize.pool_k=20", "--set", "quantize.target_k=8",
                 "--set", f"output.path={tmp_path / 'sub'}", "--set", "spark.master=local[1]"]
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    ok = subprocess.run([os.path.join(bin_dir, "spark-submit"), "--master", "local[1]",
                         "--properties-file", os.path.join(ROOT, "conf", "spark-defaults.conf"),
                         os.path.join(ROOT, "jobs", "submit.py"), "run", "--config",
                         os.path.join(ROOT, "conf", "demo.yaml"), *cfg_args],
                        capture_output=True, text=True, env=env, cwd=str(tmp_path))
    errors = [line for line in ok.stderr.splitlines() if "gio-spark: error" in line
              or "Error" in line]
    assert ok.returncode == 0, (ok.returncode, errors[-10:], ok.stdout[-2000:])
    assert "explode: run" in ok.stdout
    assert os.path.exists(tmp_path / "sub" / "selected_rows" / "_delta_log")
    bad = subprocess.run([os.path.join(bin_dir, "gio-spark"), "run", "--config",
                          os.path.join(ROOT, "conf", "demo.yaml"), "--set", "select.k=-1"],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.strip() == "gio-spark: error: select.k must be a positive integer; got -1."


def masked(text: str, out: str) -> list[str]:
    """Printed lines with what changes from run to run (times, rates, the output folder)
    replaced by placeholders."""
    import re
    text = text.replace(out, "<out>").replace("out/demo-pipeline", "<out>")
    text = re.sub(r"\d+ h \d+ min|\d+ min \d+ s|\d+\.\d s", "<time>", text)
    text = re.sub(r"\(\d+ texts/s\)", "(<rate> texts/s)", text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def readme_block(title: str) -> str:
    """The fenced block that follows the README line containing ``title``."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert text.count(title) == 1, f"README: {title!r} should name one block"
    after = text[text.index(title):]
    start = after.index("```\n") + 4
    return after[start:after.index("```", start)]


@pytest.mark.slow
@pytest.mark.demo
def test_readme_main_command_on_the_demo_data(tmp_path):
    """What `make demo` runs: the whole pipeline on the standard library's docstrings. What it
    prints is what the README shows, line for line, times and the output folder aside."""
    exe = os.path.join(os.path.dirname(sys.executable), "gio-spark")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    out = str(tmp_path / "demo")
    run = subprocess.run([exe, "run", "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                          "--set", f"output.path={out}"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    line = next(s for s in run.stdout.splitlines() if s.startswith("demo: "))
    share = float(line.split("; ")[1].split("%")[0])
    base = float(line.split("against ")[1].split("%")[0])
    assert share > 3 * base, line
    assert "examples (first picks first):" in run.stdout
    assert masked(run.stdout, out) == masked(readme_block("What a cold run"), out)
    assert run.stderr == ""                       # no bars off a terminal, nothing of Spark's


def test_a_row_budget_past_the_mmd_stop_is_filled(spark, tmp_path):
    """The default rule (mmd, fill auto) with a budget beyond its own stop: the rule's clusters
    first, in the same order, then clusters chosen by MMD gain until the budget; exactly the
    budget comes out."""
    pool, comp, target = clustered_vectors()
    free = run_pipeline(spark, vectors_config(tmp_path, pool, target))
    cfg = vectors_config(tmp_path, pool, target, select__max_rows=300)
    budget = run_pipeline(spark, cfg)
    assert budget["selected_rows"] == 300 and free["selected_rows"] < 300
    rank = {}
    for name, summary in (("free", free), ("budget", budget)):
        rank[name] = [r["cluster_id"] for r in tables.read_key(
            spark, cfg.output.path, "selection", summary["run_id"]).orderBy("rank").collect()]
    record = tables.read_key(spark, cfg.output.path, "runs", budget["run_id"]).first()
    diagnostics = json.loads(record["diagnostics"])
    assert record["stop_reason"] == "max_rows"
    assert diagnostics["fill_picks"] == len(rank["budget"]) - len(rank["free"]) > 0
    assert rank["budget"][:len(rank["free"])] == rank["free"]
    assert len(record["mmd_curve"]) == len(rank["budget"])


def test_pool_k_auto_clusters_the_pool_by_its_size(spark, tmp_path):
    pool, comp, target = clustered_vectors(1)
    cfg = vectors_config(tmp_path, pool, target, quantize__pool_k="auto")
    summary = run_pipeline(spark, cfg)
    plan = reuse.make_plan(spark, cfg)
    detail = json.loads(stagelog.latest(spark, cfg.output.path, "quantize",
                                     plan.clustering_id)["detail"])
    assert detail["pool_k"] == 98                                 # 4 sqrt(600)
    centroids = tables.read_key(spark, cfg.output.path, "centroids", plan.clustering_id)
    assert 90 <= centroids.where(F.col("side") == "pool").count() <= 98
    assert summary["selected_rows"] > 0


def test_each_stage_runs_alone_through_its_entry_point(spark, tmp_path):
    from jobs.cli import main
    pool, comp, target = clustered_vectors(3)
    cfg = vectors_config(tmp_path, pool, target)
    argv = ["--config", os.path.join(ROOT, "conf", "demo.yaml"), "--set", "spark.master=local[2]"]
    for side in ("pool", "target"):
        src = getattr(cfg, side)
        argv += ["--set", f"{side}.path={src.path}", "--set", f"{side}.format=parquet",
                 "--set", f"{side}.id_column=id", "--set", f"{side}.embedding_column=vec"]
    argv += ["--set", "quantize.pool_k=30", "--set", "quantize.target_k=10", "--set", "select.k=3",
             "--set", f"output.path={cfg.output.path}", "--set", "run_id=alone"]
    assert main(["select"] + argv) == 2                     # nothing to select from yet
    assert not os.path.exists(cfg.output.path)
    for stage in ("embed", "quantize", "select", "explode"):
        assert main([stage] + argv) == 0, stage
    rows = spark.read.format("delta").load(os.path.join(cfg.output.path, "selected_rows"))
    assert rows.where(F.col("run_id") == "alone").count() > 0
    assert set(rows.select("run_id").distinct().toPandas()["run_id"]) == {"alone"}
    # The stages alone and the whole run compute the same run id and reuse each other's work.
    again = run_pipeline(spark, load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                                            [a for a in argv[3:] if a != "--set"]))
    assert again["run_id"] == "alone" and again["selected_rows"] == rows.count()


def test_a_pool_with_its_own_rank_and_run_id_columns_keeps_them_as_source_columns(spark,
                                                                                 tmp_path):
    """End to end: a pool holding columns named rank and run_id (common in exported data)
    selects as the same pool without them, its values kept as source_rank and source_run_id."""
    pool, comp, target = clustered_vectors(2)
    cfg = vectors_config(tmp_path, pool, target, select__max_rows=100,
                         select__stop_criterion="none")
    plain = run_pipeline(spark, cfg)
    ranked = str(tmp_path / "ranked.parquet")
    pd.DataFrame({"id": range(len(pool)), "vec": list(pool), "rank": np.arange(len(pool)) * 10,
                  "run_id": [f"export-{i}" for i in range(len(pool))]}).to_parquet(ranked)
    cfg.pool.path = ranked
    cfg.output.path = str(tmp_path / "ranked_out")
    summary = run_pipeline(spark, cfg)
    rows = (spark.read.format("delta").load(summary["table"])
            .where(F.col("run_id") == summary["run_id"]).collect())
    want = (spark.read.format("delta").load(plain["table"])
            .where(F.col("run_id") == plain["run_id"]).collect())
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in want) and len(rows) == 100
    for r in rows:
        assert r["source_rank"] == r["id"] * 10 and r["source_run_id"] == f"export-{r['id']}"
        assert r["run_id"] == summary["run_id"] and r["rank"] >= 1
