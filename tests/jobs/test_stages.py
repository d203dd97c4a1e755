"""One contract over every registered stage (as scikit-learn's ``check_estimator`` runs one over
every estimator): the registry is consistent; every command refuses bad input with exit 2, one
line and nothing written, before Spark starts; a stage stopped between its begin and its record
resumes to the outputs of a clean run; a re-run of anything done makes no Delta commit at all.

The stop is the ``raise:`` failure point (:mod:`jobs.common.faults`): an exception no handler
catches, right after the stage's last table is committed and before its record, which leaves
the tables as a SIGKILL there would. Real SIGKILLs of child processes are in
``test_crash_safety.py`` (quantize, select, explode, embed on text), ``test_train.py``,
``test_weigh.py`` and ``test_datamodels.py``.
"""
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import types as T

from jobs.cli import main
from jobs.common import faults
from jobs.config import load_config
from jobs.io import tables
from jobs.pipeline import COMMANDS, DATAMODELS_ACTIONS, REGISTRY, STAGES
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
           "null (quiet), got 'LOUD'.")
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


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """A config that runs every stage of `gio-spark run` on small 8-D vectors, and the outputs
    of a clean run of it."""
    root = tmp_path_factory.mktemp("contract")
    _mixture(root / "pool.parquet", 600, [0, 1, 2, 3, 4], 1, "p")
    _mixture(root / "target.parquet", 120, [0, 1, 2], 2, "t")
    _mixture(root / "heldout.parquet", 150, [0, 1, 2], 3, "h")
    vec = {"format": "parquet", "id_column": "id", "embedding_column": "vec"}

    def config(out):
        data = {"spark": {"master": "local[2]"},
                "pool": dict(vec, path=str(root / "pool.parquet")),
                "target": dict(vec, path=str(root / "target.parquet")),
                "quantize": {"pool_k": 40, "target_k": 10}, "select": {"k": 3},
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
    """The statuses of a stage's records, oldest first."""
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


def test_each_stage_stopped_before_its_record_resumes_to_the_clean_outputs(
        spark, contract, tmp_path, monkeypatch):
    config, clean = contract
    out = tmp_path / "out"
    cfg = config(out)
    for name in PIPELINE:
        stage = REGISTRY[name]
        monkeypatch.setenv(faults.ENV, f"raise:after:{stage.outputs[-1]}")
        with pytest.raises(faults.InjectedFailure):
            main([name, "--config", cfg])
        monkeypatch.delenv(faults.ENV)
        assert "done" not in _statuses(spark, out, name), name
        assert main([name, "--config", cfg]) == 0, name
        assert _statuses(spark, out, name)[-1] == "done", name
    for name in PIPELINE:
        for table in REGISTRY[name].outputs:
            assert _canonical(spark, out, table) == _canonical(spark, clean, table), table


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
