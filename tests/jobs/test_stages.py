"""One contract over every registered stage (as scikit-learn's ``check_estimator`` runs one over
every estimator): the registry is consistent; every command refuses bad input with exit 2, one
line and nothing written, before Spark starts; a stage stopped between its begin and its record
resumes to the outputs of a clean run; a re-run of anything done makes no Delta commit at all.
The run's six stages are checked on one config, the stages outside it (imnn, the datamodels
fits) on their own; a last test says that every registered stage with tables is checked.

The stop is the ``raise:`` failure point (:mod:`jobs.common.faults`): an exception no handler
catches, right after the stage's last table is committed and before its record, which leaves
the tables as a SIGKILL there would. Real SIGKILLs of child processes are in
``test_crash_safety.py`` (quantize, select, explode, embed on text), ``test_train.py``,
``test_weigh.py`` and ``test_datamodels.py``.
"""
import glob
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gio_core.copies import all_pairs_copies
from jobs.cli import main
from jobs.common import faults
from jobs.config import load_config
from jobs.io import tables
from jobs.pipeline import COMMANDS, DATAMODELS_ACTIONS, REGISTRY, STAGES
from tests.gio_core.test_copies import _greedy
from tests.jobs.test_pipeline import ROOT

DEMO = os.path.join(ROOT, "conf", "demo.yaml")
DATAMODELS = os.path.join(ROOT, "conf", "datamodels.yaml")
# The stages `gio-spark run` runs on the contract's config, in order.
PIPELINE = ("weigh", "quantize", "select", "explode", "train", "evaluate")


def test_the_registry_is_consistent():
    every = list(STAGES) + list(DATAMODELS_ACTIONS.values())
    assert len({s.name for s in STAGES}) == len(STAGES)
    for stage in every:
        assert set(stage.outputs) <= set(tables.KEYS) - {"stages"}, stage.name
        known = REGISTRY if stage in STAGES else DATAMODELS_ACTIONS
        assert set(stage.needs) <= set(known), (stage.name, stage.needs)
        assert stage.requires is None or stage.section is not None, stage.name
    # Every table but the stage log is some stage's output.
    written = {t for s in every for t in s.outputs}
    assert written == set(tables.KEYS) - {"stages"}
    # The run's order: a stage comes after every stage it needs.
    position = {s.name: i for i, s in enumerate(STAGES)}
    for stage in STAGES:
        assert all(position[n] < position[stage.name] for n in stage.needs), stage.name
    # The command line offers exactly the registry's commands.
    assert list(COMMANDS) == ["run"] + [s.name for s in STAGES]
    assert [s.name for s in STAGES if s.in_run is not None] == ["weigh", "quantize", "select",
                                                                  "explode", "train",
                                                                  "evaluate"]


def _commands():
    for name in COMMANDS:
        yield name, [name], DEMO
    for name in DATAMODELS_ACTIONS:
        yield f"datamodels {name}", ["datamodels", name], DATAMODELS


@pytest.mark.parametrize("label,argv,config", list(_commands()), ids=lambda v: str(v))
def test_every_command_refuses_bad_input_before_spark(label, argv, config, tmp_path, capsys,
                                                       monkeypatch):
    """A bad value, the command's own section missing, a side it reads missing: exit 2, one
    line naming the problem, no output folder, no Spark session."""
    import jobs.runner

    def no_session(*args, **kwargs):
        raise AssertionError(f"{label} started Spark for a config error")
    monkeypatch.setattr(jobs.runner, "build_session", no_session)
    out = tmp_path / "out"
    base = [*argv, "--config", config, "--set", f"output.path={out}"]
    stage = COMMANDS.get(argv[0]) if argv[0] != "datamodels" else DATAMODELS_ACTIONS[argv[1]]
    assert main(base + ["--set", "spark.log_level=LOUD"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    bad = ("spark.log_level must be one of OFF, FATAL, ERROR, WARN, INFO, DEBUG, TRACE, ALL or "
           "null (quiet); got 'LOUD'.")
    assert err[0].startswith("gio-spark: error: "), err
    if len(err) == 1:
        problems = [err[0].removeprefix("gio-spark: error: ")]
    else:                       # several problems (the command's section off...): one a line
        assert err[0] == f"gio-spark: error: {len(err) - 1} problems in the config:", err
        problems = [line.removeprefix("  - ") for line in err[1:]]
    assert bad in problems
    assert stage.requires is None or stage.requires in problems
    if stage.requires is not None:
        assert main(base) == 2                 # the demo config has no such section
        assert capsys.readouterr().err.strip() == f"gio-spark: error: {stage.requires}"
    cfg_sides = stage.reads(load_config(config, command="config"))
    if cfg_sides and stage.requires is None:
        assert main(base + ["--set", f"{cfg_sides[0]}.path=null"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"gio-spark: error: {cfg_sides[0]}.path is missing: name the {cfg_sides[0]} table "
            "or file.")
    assert not out.exists()


# ---------------------------------------------------------------------------
# The lifecycle of every stage of the run
# ---------------------------------------------------------------------------

def _mixture(path, n, components, seed, prefix):
    centres = np.random.default_rng(0).normal(size=(5, 8)) * 3
    rng = np.random.default_rng(seed)
    comp = rng.choice(components, size=n)
    x = (centres[comp] + rng.normal(size=(n, 8))).astype(np.float32)
    pd.DataFrame({"id": [f"{prefix}{i:05d}" for i in range(n)], "vec": list(x),
                  "comp": comp.astype(np.int64), "domain": [f"c{c}" for c in comp]}).to_parquet(path)


# Copies planted in the contract's pool, for quantize's decontamination: (source, how many,
# how many of them exact; the rest moved by noise of 1% of their length).
PLANTED = (("target", 10, 6), ("heldout", 6, 4), ("pool", 8, 5))


def _plant_copies(root) -> None:
    """Overwrites rows of the contract's pool (at random places, each used once) with copies of
    target, held-out and other pool rows, as :data:`PLANTED` says; ``(side, pool row, row
    copied, exact)`` of each goes to ``planted.json``."""
    rng = np.random.default_rng(21)
    frames = {side: pd.read_parquet(root / f"{side}.parquet")
              for side in ("pool", "target", "heldout")}
    pool = frames["pool"]
    places = iter(rng.permutation(len(pool)).tolist())
    planted = []
    for side, count, exact in PLANTED:
        for n in range(count):
            at = next(places)
            of = next(places) if side == "pool" else int(rng.integers(len(frames[side])))
            row = np.asarray(frames[side]["vec"].iloc[of], np.float32).copy()
            if n >= exact:
                noise = rng.normal(size=row.shape).astype(np.float32)
                row += 0.01 * np.linalg.norm(row) * noise / np.linalg.norm(noise)
            pool.at[at, "vec"] = row
            planted.append((side, str(pool["id"].iloc[at]), str(frames[side]["id"].iloc[of]),
                            n < exact))
    pool.to_parquet(root / "pool.parquet")
    (root / "planted.json").write_text(json.dumps(planted))


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """A config that runs every stage of `gio-spark run` on small 8-D vectors (quantize's
    decontamination included, on a pool with copies planted; a target of three domains), and the
    outputs of a clean run of it."""
    root = tmp_path_factory.mktemp("contract")
    _mixture(root / "pool.parquet", 600, [0, 1, 2, 3, 4], 1, "p")
    _mixture(root / "target.parquet", 120, [0, 1, 2], 2, "t")
    _mixture(root / "heldout.parquet", 150, [0, 1, 2], 3, "h")
    _plant_copies(root)
    vec = {"format": "parquet", "id_column": "id", "embedding_column": "vec"}

    def config(out):
        data = {"spark": {"master": "local[2]"},
                "pool": dict(vec, path=str(root / "pool.parquet")),
                "target": dict(vec, path=str(root / "target.parquet"), domain_column="domain"),
                "quantize": {"pool_k": 40, "target_k": 10}, "select": {"k": 3},
                "decontaminate": {"threshold": 0.99, "duplicates": 0.99},
                "weigh": {"source": dict(vec, path=str(root / "pool.parquet")),
                          "b_columns": ["comp"], "num_points": 300, "num_epochs": 20},
                "train": {"validation": dict(vec, path=str(root / "heldout.parquet")),
                          "label_column": "domain", "epochs": 3, "batch_size": 16},
                "evaluate": {"heldout": dict(vec, path=str(root / "heldout.parquet")),
                             "sample_rows": 600, "methods": ["random", "k_center"],
                             "domain_column": "domain"},
                "output": {"path": str(out)}}
        path = out.parent / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    clean = root / "clean"
    assert main(["run", "--config", config(clean)]) == 0
    return config, clean


def _statuses(spark, out, name) -> list:
    """The statuses of a stage's records, oldest first (none before the log's first record)."""
    if not os.path.exists(os.path.join(tables.table_path(str(out), "stages"), "_delta_log")):
        return []
    rows = tables.read_table(spark, str(out), "stages").where(f"stage = '{name}'")
    return [r["status"] for r in rows.orderBy("at_ns").collect()]


def _commits(out) -> int:
    return len(glob.glob(os.path.join(str(out), "*", "_delta_log", "*.json")))


def _canonical(spark, out, name):
    """A table's rows without what differs between two runs of the same work: times (also an
    epoch's seconds, a method's wall time, the timings inside JSON records), the config as given (its output
    path), library versions and input reports."""
    skip = {"params", "timings", "versions", "reports", "at_ns", "seconds", "wall_s"}

    def clean(value):
        if isinstance(value, str) and value.startswith("{"):      # a JSON record
            value = json.loads(value)
        if isinstance(value, dict):
            return tuple(sorted((k, clean(v)) for k, v in value.items() if k not in skip))
        if isinstance(value, list):
            return tuple(clean(v) for v in value)
        return value

    df = spark.read.format("delta").load(tables.table_path(str(out), name))
    keep = [f.name for f in df.schema.fields if not isinstance(f.dataType, T.TimestampType)]
    return sorted((clean(r.asDict(recursive=True)) for r in df.select(*keep).collect()), key=repr)


def _stop_before_record_and_resume(spark, monkeypatch, out, stage, argv, logged) -> None:
    """Stops ``argv`` after its stage's last table (before its record), then runs it again: no
    ``done`` after the stop, ``done`` after the re-run."""
    monkeypatch.setenv(faults.ENV, f"raise:after:{stage.outputs[-1]}")
    with pytest.raises(faults.InjectedFailure):
        main(argv)
    monkeypatch.delenv(faults.ENV)
    assert "done" not in _statuses(spark, out, logged), logged
    assert main(argv) == 0, logged
    assert _statuses(spark, out, logged)[-1] == "done", logged


def test_each_stage_stopped_before_its_record_resumes_to_the_clean_outputs(
        spark, contract, tmp_path, monkeypatch):
    config, clean = contract
    out = tmp_path / "out"
    cfg = config(out)
    for name in PIPELINE:
        _stop_before_record_and_resume(spark, monkeypatch, out, REGISTRY[name],
                                       [name, "--config", cfg], name)
    for name in PIPELINE:
        for table in REGISTRY[name].outputs:
            assert _canonical(spark, out, table) == _canonical(spark, clean, table), table


# ---------------------------------------------------------------------------
# The same lifecycle for the stages outside the run: imnn and the datamodels fits
# ---------------------------------------------------------------------------

IMNN_CONF = os.path.join(ROOT, "conf", "imnn.yaml")
# The registered stages with tables of their own that `gio-spark run` does not run: checked
# below on their own configs. (embed runs inside every run above; imnn-example writes the
# simulations, then is imnn; datamodels init and work write no table of their own but the store,
# which work MERGEs index by index: its kill test is tests/jobs/test_datamodels.py's.)
TOOLS = ("imnn", "datamodels regress", "datamodels select")


@pytest.fixture(scope="module")
def tools_contract(tmp_path_factory, spark):
    """``config(out) -> {name: argv}`` for the stages outside the run, on small inputs: the IMNN
    tutorial's simulations (100 + 100, local mode), and a datamodels store of 24 tiny models
    (the test worker of test_datamodels.py) with a pool of its 6 training examples; the outputs
    of a clean run of each."""
    from jobs.stages import imnn as J
    from tests.jobs.test_datamodels import MAIN, SPEC
    root = tmp_path_factory.mktemp("tools_contract")
    sims = str(root / "sims")
    J.write_example(spark, sims, n_s=100, n_d=100, seed=2)
    module = "dm_contract_main"
    (root / f"{module}.py").write_text(MAIN)
    import sys
    sys.path.insert(0, str(root))
    pd.DataFrame({"position": range(6), "text": [f"example {i}" for i in range(6)]}).to_parquet(
        root / "examples.parquet")
    store = str(root / "store")

    def config(out) -> dict:
        imnn = [f"imnn.simulations={sims}", f"output.path={out}", "imnn.max_iterations=3",
                "imnn.min_iterations=0", "imnn.hidden=[8]", "imnn.batch_size=32",
                "imnn.mode=local"]
        dm = [f"output.path={out}", f"datamodels.store={store}", "spark.master=local[2]",
              "datamodels.num_models=24", *SPEC, f"datamodels.main_import={module}",
              "datamodels.args={}", "datamodels.num_test=0",
              "datamodels.num_val=4", "datamodels.k=10", "datamodels.budget=3",
              f"pool.path={root / 'examples.parquet'}", "pool.format=parquet",
              "pool.id_column=position", "pool.embedding_column=null",
              "datamodels.index_column=position"]

        def argv(command, config_file, sets):
            return command + ["--config", config_file] + [a for s in sets for a in ("--set", s)]
        return {"imnn": argv(["imnn"], IMNN_CONF, imnn),
                "datamodels work": argv(["datamodels", "work"], DATAMODELS, dm),
                "datamodels regress": argv(["datamodels", "regress"], DATAMODELS, dm),
                "datamodels select": argv(["datamodels", "select"], DATAMODELS, dm)}

    clean = root / "clean"
    argvs = config(clean)
    assert main(argvs["datamodels work"]) == 0           # the store both outputs' fits read
    for name in TOOLS:
        assert main(argvs[name]) == 0, name
    yield config, clean
    sys.path.remove(str(root))


def _tool_stage(name: str):
    return DATAMODELS_ACTIONS[name.split()[1]] if name.startswith("datamodels") else REGISTRY[name]


def test_the_stages_outside_the_run_stopped_before_their_record_resume_to_the_clean_outputs(
        spark, tools_contract, tmp_path, monkeypatch):
    config, clean = tools_contract
    out = tmp_path / "out"
    argvs = config(out)
    for name in TOOLS:
        stage = _tool_stage(name)
        logged = "datamodels_" + name.split()[1] if name.startswith("datamodels") else name
        _stop_before_record_and_resume(spark, monkeypatch, out, stage, argvs[name], logged)
        for table in stage.outputs:
            assert _canonical(spark, out, table) == _canonical(spark, clean, table), table
    # and a re-run of each makes no Delta commit
    before = _commits(out)
    for name in TOOLS:
        assert main(argvs[name]) == 0, name
    assert _commits(out) == before


def test_every_stage_with_tables_is_in_a_lifecycle_check():
    """The two lifecycle checks above cover every registered stage that writes tables."""
    checked = set(PIPELINE) | {_tool_stage(n).name for n in TOOLS}
    exempt = {"embed": "the contract's sides are vectors; embedding text is killed for real in "
                       "test_crash_safety.py",
              "imnn-example": "writes the simulations, then runs imnn (checked above)",
              "example": "runs init, work, regress and select (regress and select checked above)"}
    every = list(STAGES) + list(DATAMODELS_ACTIONS.values())
    for stage in every:
        if stage.outputs:
            assert stage.name in checked or stage.name in exempt, stage.name


def test_a_rerun_of_anything_done_makes_no_delta_commit(spark, contract, capsys):
    config, clean = contract
    cfg = config(clean)
    before = _commits(clean)
    assert main(["run", "--config", cfg]) == 0
    for name in ("embed",) + PIPELINE:
        assert main([name, "--config", cfg]) == 0, name
    assert _commits(clean) == before
    printed = capsys.readouterr().out
    for line in ("quantize: reusing clustering", "select: reusing the selection",
                 "explode: reusing the selected rows", "train: reusing the probes",
                 "evaluate: reusing", "weigh: reusing weights"):
        assert line in printed, line


# ---------------------------------------------------------------------------
# What the contract's run set aside (quantize's decontamination)
# ---------------------------------------------------------------------------

def _greedy_duplicates(unit: dict, clusters: dict, threshold: float) -> dict:
    """The duplicates rule written out (:func:`tests.gio_core.test_copies._greedy`), cluster by
    cluster, on each cluster's rows in row id order."""
    out = {}
    for members in clusters.values():
        ids = sorted(members)
        found = _greedy(np.stack([unit[rid] for rid in ids]), threshold)
        out.update({ids[i]: ids[k] for i, k in found.items()})
    return out


def test_the_contract_run_set_aside_every_copy_and_duplicate_and_selected_none(spark, contract,
                                                                                tmp_path, capsys):
    """The clean run's ``set_aside`` against all pairs (copies of target and held-out rows, in
    the weighted space quantize works in) and against the duplicates rule written out; none of
    those rows is assigned, selected or in evaluate's sample."""
    config, clean = contract
    out, root = str(clean), clean.parent
    d = load_config(config(clean)).decontaminate
    scale = np.array([r["scaled"] for r in tables.read_table(spark, out, "feature_weights")
                      .orderBy("feature").collect()], np.float32)
    sides = {side: pd.read_parquet(root / f"{side}.parquet")
             for side in ("pool", "target", "heldout")}
    x = {side: np.stack(f["vec"].to_numpy()).astype(np.float32) * scale
         for side, f in sides.items()}
    want: dict = {}
    for side in ("target", "heldout"):
        oracle = all_pairs_copies(x[side], x["pool"], d.threshold)
        for i, j, c in zip(oracle.rows.tolist(), oracle.refs.tolist(), oracle.cosine.tolist(),
                           strict=True):
            rid = sides["pool"]["id"].iloc[i]
            if c > want.get(rid, (None, None, -1.0))[2]:
                want[rid] = (sides[side]["id"].iloc[j], side, c)
    aside = {r["row_id"]: r for r in tables.read_table(spark, out, "set_aside").collect()}
    copies = {k: (r["copy_of"], r["side"]) for k, r in aside.items() if r["side"] != "pool"}
    assert copies == {k: (ref, side) for k, (ref, side, _) in want.items()}
    planted = json.loads((root / "planted.json").read_text())
    for side, at, of, _ in planted:
        if side != "pool":                           # every planted copy, with its row
            assert copies[at] == (of, side), (side, at, of)

    # duplicates inside the pool: the rule, cluster by cluster, on the rows the copies left
    assignments = {r["row_id"]: r["cluster_id"] for r in
                   tables.read_table(spark, out, "pool_assignments").collect()}
    dups = {k: r["copy_of"] for k, r in aside.items() if r["side"] == "pool"}
    clusters: dict = {}
    for rid, cluster in assignments.items():
        clusters.setdefault(cluster, []).append(rid)
    for rid, kept in dups.items():
        clusters[assignments[kept]].append(rid)      # a duplicate is in its row's cluster
    unit = {rid: v / np.linalg.norm(v) for rid, v in zip(sides["pool"]["id"], x["pool"],
                                                         strict=True)}
    assert dups == _greedy_duplicates(unit, clusters, d.duplicates)
    found = {frozenset(p) for p in dups.items()}
    for side, at, of, exact in planted:              # exact duplicates share their cluster
        assert side != "pool" or not exact or frozenset((at, of)) in found, (at, of)

    # set-aside rows deleted by hand: the clustering is not reused without them
    tampered = tmp_path / "tampered"
    shutil.copytree(clean, tampered)
    DeltaTable.forPath(spark, tables.table_path(str(tampered), "set_aside")).delete(
        F.col("side") == "target")
    capsys.readouterr()
    assert main(["quantize", "--config", config(tampered)]) == 0
    printed = "".join(capsys.readouterr())
    kept = len(aside) - sum(side == "target" for _, side in copies.values())
    assert f"set-aside rows are not those it committed ({kept} rows, {len(aside)} recorded); " \
        "computing it again" in printed, printed[-3000:]
    again = {r["row_id"]: (r["copy_of"], r["side"])
             for r in tables.read_table(spark, str(tampered), "set_aside").collect()}
    assert again == {k: (r["copy_of"], r["side"]) for k, r in aside.items()}

    gone = set(aside)
    assert len(gone) >= sum(count for _, count, _ in PLANTED) - 3
    assert all(r["cosine"] >= min(d.threshold, d.duplicates) - 1e-5 for r in aside.values())
    assert len(assignments) == 600 - len(gone) and not set(assignments) & gone
    centroids = tables.read_table(spark, out, "centroids")
    assert centroids.where("side = 'pool'").groupBy().sum("size").first()[0] == 600 - len(gone)
    selected = {r["id"] for r in tables.read_table(spark, out, "selected_rows").collect()}
    assert selected and not selected & gone
    detail = json.loads(tables.read_table(spark, out, "evaluations").first()["detail"])
    assert detail["sample_rows"] == 600 - len(gone)
