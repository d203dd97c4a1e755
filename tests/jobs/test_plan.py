"""``gio-spark plan`` and ``jobs.plan``: what a run would do, checked against the run itself.

The plan is made on text files (the demo's docstrings, 1,800 in the pool: two embedding tasks on
this session's two cores), then the run is made and the plan's figures are compared with the
run's own: the stages it said would run ran, the rows it counted are the rows read, the clusters
it gave ``pool_k: auto`` are the clusters made, and the embedding time it measured on a sample
is within 2x of what the embed stages took (their records hold it). After the run every stage
is reused; a changed setting runs the stages after it and is named.
"""
import json
import os

import pandas as pd
import pytest

import jobs
from jobs.cli import main
from jobs.config import auto_pool_k, load_config
from jobs.io import tables
from jobs.io.demo_data import TARGET_PACKAGES, stdlib_docstrings
from jobs.planning import (Forecast, _jax_started, _warnings, driver_memory, jax_runtime,
                           memory_need)
from jobs.state import stagelog

SETTINGS = {"quantize.pool_k": "auto", "quantize.target_k": 10, "select.k": 3,
            "quantize.max_iter": 8}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    rows = stdlib_docstrings()
    target = [r for r in rows if r["package"] in TARGET_PACKAGES][::5][:60]
    pool = [r for r in rows if r["package"] not in TARGET_PACKAGES][::2][:1800]
    pd.DataFrame(pool).to_parquet(folder / "pool.parquet")
    pd.DataFrame(target).to_parquet(folder / "target.parquet")
    return folder, len(pool), len(target)


def _plan(folder, out, spark, **more):
    return jobs.plan(str(folder / "pool.parquet"), str(folder / "target.parquet"), output=out,
                     id_column="doc_id", settings={**SETTINGS, **more.pop("settings", {})},
                     spark=spark, **more)


def _actions(plan) -> dict:
    return {s.stage: s.action for s in plan.stages}


@pytest.mark.slow
def test_the_plan_says_what_the_run_then_does_and_takes(spark, texts, tmp_path):
    folder, pool_rows, target_rows = texts
    out = str(tmp_path / "out")
    plan = _plan(folder, out, spark, sample_rows=128)
    assert not os.path.exists(out)                                   # nothing written
    assert _actions(plan) == {"embed_pool": "run", "embed_target": "run", "quantize": "run",
                              "select": "run", "explode": "run"}
    assert "new or changed" in plan.stages[0].why
    pool = plan.inputs["pool"]
    assert (pool.rows, pool.rows_from, pool.files) == (pool_rows, "Parquet footers", 1)
    assert pool.bytes == os.path.getsize(folder / "pool.parquet")
    assert plan.inputs["target"].rows == target_rows
    cfg = load_config(None, [f"{k}={v}" for k, v in SETTINGS.items()], command="config")
    assert plan.clusters["pool_k"] == auto_pool_k(pool_rows, cfg.select)
    assert plan.clusters["dim"] == 384
    assert plan.embedding["sides"]["pool"]["tasks"] == 2 and plan.embedding["slots"] == 2
    # no row budget: the row step sizes the selection (select.own_size: auto)
    assert list(plan.driver["phases"]) == ["select", "row step"]
    assert "own size" in plan.driver["phases"]["row step"]
    assert plan.driver["need_bytes"] == memory_need(plan.driver["phases"]) >= sum(
        plan.driver["phases"]["select"].values()) > 0
    runtime = plan.driver["runtime"]                                 # JAX's, probed
    assert runtime["phase"] == "select" and runtime["compiled"] > 20 * 2 ** 20
    assert plan.driver["phases"]["select"]["runtime"] == runtime["counted"] == (
        runtime["compiled"] + (0 if runtime["started_here"] else runtime["start"]))
    assert plan.warnings == []
    text = plan.text()
    assert f"{pool_rows:,} rows (Parquet footers)" in text and "about" in text

    chosen = jobs.select_rows(str(folder / "pool.parquet"), str(folder / "target.parquet"),
                              output=out, id_column="doc_id", settings=SETTINGS, spark=spark)
    assert chosen.select("run_id").first()[0] == plan.run_id
    record = tables.read_key(spark, out, "runs", plan.run_id).first()
    assert record["pool_centroids"] == plan.clusters["pool_k"]
    took = {}
    for side in ("pool", "target"):
        key = plan.stages[0 if side == "pool" else 1].key
        took[side] = json.loads(stagelog.latest(spark, out, f"embed_{side}", key)["detail"])
        assert took[side]["rows"] == plan.inputs[side].rows
        planned = plan.embedding["sides"][side]
        assert (planned["texts"], planned["missing"]) == (took[side]["texts"],
                                                          took[side]["embedded"])
    estimate, actual = plan.embedding["seconds"], sum(t["seconds"] for t in took.values())
    assert actual / 2 <= estimate <= 2 * actual, (estimate, took, plan.embedding)

    again = _plan(folder, out, spark)
    assert _actions(again) == {"embed_pool": "skip", "embed_target": "skip", "quantize": "reuse",
                               "select": "reuse", "explode": "reuse"}
    assert again.inputs["pool"].rows_from.startswith("checked on an earlier run")
    assert again.embedding == {"why": "nothing to embed: the embeddings or the clustering are "
                                      "reused"}
    other = _plan(folder, out, spark, settings={"select.k": 4})
    assert _actions(other)["quantize"] == "reuse"
    assert _actions(other)["select"] == _actions(other)["explode"] == "run"
    assert other.changed == ["select.k: 3 -> 4"]


def test_the_command_line_prints_the_plan_and_refuses_a_bad_sample(spark, texts, tmp_path,
                                                                   capsys):
    folder, pool_rows, _ = texts
    sets = [f"pool.path={folder / 'pool.parquet'}", "pool.format=parquet",
            f"target.path={folder / 'target.parquet'}", "target.format=parquet",
            "pool.id_column=doc_id", "target.id_column=doc_id",
            f"output.path={tmp_path / 'out'}"] + [f"{k}={v}" for k, v in SETTINGS.items()]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["plan", "--sample-rows", "0"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gio-spark: error: --sample-rows must be an integer >= 16; got '0'."]
    assert main(["plan", "--no-measure", "--json"] + args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["inputs"]["pool"]["rows"] == pool_rows
    assert {s["stage"]: s["action"] for s in printed["stages"]}["quantize"] == "run"
    assert printed["embedding"] == {"why": "not measured (--no-measure)"}
    assert printed["driver"]["runtime"] == {"why": "not measured (--no-measure)"}
    assert "runtime" not in printed["driver"]["phases"]["select"]
    assert not os.path.exists(tmp_path / "out")


def test_the_warnings_name_the_setting_to_change():
    cfg = load_config(None, ["select.max_rows=5000", "quantize.pool_k=20000"], command="config")
    phases = driver_memory(cfg, 20_000, 5000, 384, 40_000, 300)
    select = phases["select"]
    assert select["distances"] == cfg.select.cache_bytes          # 5000 x 20,480 x 4 > 256 MiB
    assert select["collect"] == 25_000 * 384 * 32
    assert driver_memory(cfg, 20_000, 1500, 384)["select"]["distances"] == 1500 * 20_480 * 4
    # the row step: 3 x the budget of 5,000 candidates, 300 targets, the candidates padded to
    # blocks of 4,096; none where the budget is the whole pool
    assert phases["row step"] == {"collect": 15_300 * 384 * 4 * 3,
                                  "distances": 300 * 16_384 * 4,
                                  "scoring": 2 * 512 * 4096 * (cfg.select.k + 1) * 4}
    assert select["scoring"] == 2 * 512 * 4096 * (cfg.select.k + 1) * 4
    assert "row step" not in driver_memory(cfg, 20_000, 5000, 384, 4000, 300)
    assert memory_need(phases) == sum(select.values())
    # select.own_size: density without a budget: the cap's candidates, and the size's blocks
    own = load_config(None, ["select.own_size=density"], command="config")
    step = driver_memory(own, 20_000, 5000, 384, 400_000, 300)["row step"]
    assert step["own size"] == (300 * 384 + 2 * 4096 * 384 + 2 * 4096 * 300) * 8
    assert step["collect"] == (own.select.max_candidates + 300) * 384 * 4 * 3
    small = driver_memory(own, 20_000, 5000, 384, 40_000, 300)["row step"]   # the pool's rows
    assert small["collect"] == (40_000 + 300) * 384 * 4 * 3
    for setting, sized in (("auto", True), ("clusters", False)):     # auto: the default
        by = load_config(None, [f"select.own_size={setting}"], command="config")
        assert ("row step" in driver_memory(by, 20_000, 5000, 384, 400_000, 300)) is sized
    assert driver_memory(load_config(None, [], command="config"), 20_000, 5000, 384, 400_000,
                         300)["row step"] == step
    f = Forecast("run-x", "out")
    f.driver = {"phases": phases, "need_bytes": memory_need(phases), "free_bytes": 2 ** 28,
                "max_result": "32m", "driver_memory": "64m"}
    found = _warnings(cfg, f, 20_000, 5000, 384, 4000)
    assert any("spark.driver.maxResultSize=32m" in w and "quantize.pool_k" in w for w in found)
    assert any("spark.driver.memory" in w for w in found)
    assert any("this machine has 256.0 MiB free" in w and "quantize.pool_k" in w
               for w in found)
    assert any("row budget (5,000) is the whole pool (4,000 rows)" in w for w in found)
    # where the row step is the larger phase, the warning names its settings
    step_heavy = {"select": {"collect": 2 ** 20, "runtime": 2 ** 27},
                  "row step": {"collect": 2 ** 28}}
    f.driver.update(phases=step_heavy, need_bytes=memory_need(step_heavy))
    found = _warnings(cfg, f, 20_000, 5000, 384, 400_000)
    assert any("this machine has 256.0 MiB free: lower select.max_candidates" in w
               for w in found), found
    f.driver.update(phases=phases, need_bytes=memory_need(phases))
    f.driver.update(free_bytes=2 ** 40, max_result="4g", driver_memory="8g")
    assert _warnings(cfg, f, 20_000, 5000, 384, 400_000) == []


def test_the_runtime_stays_resident_through_the_phases_after_it():
    phases = {"select": {"centroids": 10, "runtime": 100}, "row step": {"collect": 50}}
    assert memory_need(phases) == 150                     # the row step on top of JAX's runtime
    phases["select"]["centroids"] = 80
    assert memory_need(phases) == 180                     # the select stage's own peak
    assert memory_need({"row step": {"collect": 50, "runtime": 100}}) == 150


def test_the_jax_probe_measures_the_start_and_the_compiled_code_in_a_child_process(monkeypatch):
    cfg = load_config(None, ["select.k=3"], command="config")
    before = _jax_started()
    r = jax_runtime(cfg, 16)
    assert _jax_started() == before                       # the probe ran elsewhere
    # a CPU backend's start and a selection's compiled code: tens of MiB each, not gigabytes
    assert 5 * 2 ** 20 < r["start"] < 2 ** 30 and 20 * 2 ** 20 < r["compiled"] < 2 ** 30
    assert r["counted"] == r["compiled"] + (0 if r["started_here"] else r["start"])
    # the child inherits the environment and fails; the cached figure above is not reused,
    # since the environment is part of the probe's key
    monkeypatch.setenv("JAX_PLATFORMS", "no-such-platform")
    failed = jax_runtime(cfg, 16)
    assert set(failed) == {"why"} and failed["why"].startswith("not measured: the probe failed (")
    assert "no-such-platform" in failed["why"]


@pytest.mark.e2e
def test_the_planned_driver_memory_of_a_command_line_run_is_within_2x_of_what_it_used(spark,
                                                                                    tmp_path):
    """As a user runs them: ``gio-spark plan --json``, then ``gio-spark run``, each a process of
    its own, on a small precomputed pool, where JAX's runtime is nearly all the select stage's
    memory; the run's select stage measures its growth (``runs.timings``)."""
    import subprocess
    import sys

    import numpy as np
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 64))
    for side, rows in (("pool", 2000), ("target", 200)):
        x = centres[rng.integers(0, 12, rows)] + 0.5 * rng.normal(size=(rows, 64))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        pd.DataFrame({"id": [f"{side}{i}" for i in range(rows)],
                      "vec": list(x.astype(np.float32))}).to_parquet(tmp_path / f"{side}.parquet")
    sets = [f"output.path={tmp_path / 'out'}", "quantize.pool_k=100", "quantize.target_k=20",
            "spark.master=local[2]"]
    for side in ("pool", "target"):
        sets += [f"{side}.path={tmp_path / side}.parquet", f"{side}.format=parquet",
                 f"{side}.embedding_column=vec", f"{side}.id_column=id"]
    args = [a for item in sets for a in ("--set", item)]

    def gio(*command):
        done = subprocess.run([sys.executable, "-m", "jobs.cli", *command, *args],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    plan = json.loads(gio("plan", "--json"))
    runtime = plan["driver"]["runtime"]
    assert runtime["phase"] == "select" and not runtime["started_here"]
    planned = sum(plan["driver"]["phases"]["select"].values()) / 2 ** 20
    gio("run")
    timings = json.loads(tables.read_key(spark, str(tmp_path / "out"), "runs",
                                         plan["run_id"]).first()["timings"])
    used = timings["driver_peak_mib"]
    assert used / 2 <= planned <= 2 * used, (planned, used, plan["driver"])
