"""The datamodels commands on real Spark and Delta: workers commit each index once, failures are
reported by index while the rest commits, a killed worker job resumes, Spark retries a failed
task, the digits example predicts held-out margins, regress on executors equals the driver's,
the export is the source's layout, and the selection trains a probe like a GIO selection."""
import glob
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.datamodels import actions as D
from jobs.common import faults
from jobs.state import stagelog
from jobs.io import tables
from jobs.cli import main
from jobs.config import load_config
from tests.jobs.test_crash_safety import child_env
from tests.jobs.test_pipeline import ROOT

CONF = os.path.join(ROOT, "conf", "datamodels.yaml")

# A worker module of the tests: deterministic outputs per index, a record of every call
# (calls_dir), indices that always fail (fail) and ones that fail on their first attempt only
# (flaky: a marker file in the index's logdir says it was tried).
MAIN = textwrap.dedent('''
    import os
    import time

    import numpy as np


    def expected(index, size=6):
        rng = np.random.default_rng(index)
        masks = rng.random(size) < 0.5
        return masks, (2 * masks[:3] + 0.01 * index + 0.1 * rng.random(3)).astype(np.float32)


    def main(*, index, logdir, calls_dir=None, fail=(), flaky=(), size=6, sleep=0.0, exits=()):
        if calls_dir:
            open(os.path.join(calls_dir, f"{index}-{os.getpid()}-{time.time_ns()}"), "w").close()
        time.sleep(sleep)
        if index in exits:                   # as a command-line parser missing its arguments
            raise SystemExit(2)
        if index in fail:
            raise ValueError(f"index {index} is broken")
        if index in flaky and not os.path.exists(os.path.join(logdir, "tried")):
            open(os.path.join(logdir, "tried"), "w").close()
            raise RuntimeError(f"index {index}: first attempt fails")
        masks, margins = expected(index, size)
        return {"masks": masks, "margins": margins}
''')
SPEC = ["datamodels.schema={masks: {shape: [6], dtype: bool_}, margins: {shape: [3], "
        "dtype: float32}}"]


@pytest.fixture
def worker_module(tmp_path, monkeypatch):
    """The module above under a unique name in a folder of its own, on the driver's path only:
    the executors get it from the work command (addPyFile)."""
    name = f"dm_test_main_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / f"{name}.py").write_text(MAIN)
    monkeypatch.syspath_prepend(str(folder))
    calls = tmp_path / "calls"
    calls.mkdir()
    return name, folder, calls


def argv(action, sets):
    out = ["datamodels", action, "--config", CONF]
    for item in sets:
        out += ["--set", item]
    return out


def work_sets(tmp_path, module, calls, *extra, models=24):
    return [f"output.path={tmp_path / 'out'}", "spark.master=local[2]",
            f"datamodels.num_models={models}", *SPEC, f"datamodels.main_import={module}",
            f"datamodels.args={{calls_dir: {calls}}}", "datamodels.commit_every=8",
            "datamodels.indices_per_task=1", *extra]


def store_rows(spark, path):
    return {r["index"]: r for r in spark.read.format("delta").load(path).collect()}


def calls_per_index(calls):
    out: dict = {}
    for name in os.listdir(calls):
        index = int(name.split("-")[0])
        out[index] = out.get(index, 0) + 1
    return out


def expected(index, size=6):
    rng = np.random.default_rng(index)
    masks = rng.random(size) < 0.5
    return masks, (2 * masks[:3] + 0.01 * index + 0.1 * rng.random(3)).astype(np.float32)


def assert_values(row):
    masks, margins = expected(row["index"])
    assert row["masks"] == masks.tolist()
    assert row["margins"] == pytest.approx(margins.tolist())


def test_work_commits_each_index_once_and_reports_failures_by_index(spark, tmp_path, capsys,
                                                                     worker_module, monkeypatch):
    module, _, calls = worker_module
    store = str(tmp_path / "out" / "datamodels_store")
    sets = work_sets(tmp_path, module, calls, "datamodels.args.fail=[5, 17]")
    capsys.readouterr()
    assert main(argv("work", sets)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gio-spark: failed: datamodels work: 2 of 24 indices failed after "
                              "their last attempt (first: index 5: ValueError: index 5 is "
                              "broken)"), err[-1]
    rows = store_rows(spark, store)
    assert sorted(rows) == list(range(24))
    for i, row in rows.items():
        if i in (5, 17):
            assert not row["completed"] and row["masks"] is None
            assert row["error"] == f"ValueError: index {i} is broken"
        else:
            assert row["completed"] and row["error"] is None and row["attempt"] == 0
            assert_values(row)
            assert row["seconds"] >= 0 and row["finished_at"] >= row["started_at"]
    # fixed: only the two failed indices run again, and they are updated in place
    assert main(argv("work", work_sets(tmp_path, module, calls))) == 0
    rows = store_rows(spark, store)
    assert len(rows) == 24 and all(r["completed"] for r in rows.values())
    assert_values(rows[5])
    assert_values(rows[17])
    assert calls_per_index(calls) == {i: (2 if i in (5, 17) else 1) for i in range(24)}
    versions = len(spark.sql(f"DESCRIBE HISTORY delta.`{store}`").collect())
    assert main(argv("work", work_sets(tmp_path, module, calls))) == 0        # nothing to run
    assert len(spark.sql(f"DESCRIBE HISTORY delta.`{store}`").collect()) == versions
    # do_if_complete (the source's flag): completed indices run again; one that fails now
    # keeps its completed row, and the run says it failed
    before = store_rows(spark, store)
    assert main(argv("work", work_sets(tmp_path, module, calls, "datamodels.indices=[0, 4]",
                                       "datamodels.do_if_complete=true",
                                       "datamodels.args.fail=[3]"))) == 1
    assert calls_per_index(calls) == {i: (2 if i in (0, 1, 2, 3, 5, 17) else 1)
                                      for i in range(24)}
    rows = store_rows(spark, store)
    assert rows[3] == before[3] and all(r["completed"] for r in rows.values())
    assert [rows[i]["finished_at"] > before[i]["finished_at"] for i in range(5)] == \
        [True, True, True, False, False]
    for i in range(3):
        assert_values(rows[i])
    # regress dies between its tables (as a kill there leaves them); the re-run fits again and
    # leaves one fit, equal to a clean one under another id
    fit_sets = work_sets(tmp_path, module, calls, "datamodels.num_val=4", "datamodels.num_test=0",
                         "datamodels.k=10")
    monkeypatch.setenv(faults.ENV, "raise:after:datamodels_fits")
    with pytest.raises(faults.InjectedFailure):
        D.run_regress(spark, load_config(CONF, fit_sets, "datamodels-regress"))
    monkeypatch.delenv(faults.ENV)
    assert main(argv("regress", fit_sets)) == 0
    assert main(argv("regress", fit_sets + ["datamodels.regress_id=clean"])) == 0
    plan = D.make_regress_plan(spark, load_config(CONF, fit_sets, "datamodels-regress"))
    for name in ("datamodels_weights", "datamodels_fits", "datamodels_regressions"):
        got = tables.read_key(spark, str(tmp_path / "out"), name, plan.regress_id)
        want = tables.read_key(spark, str(tmp_path / "out"), name, "clean")
        assert got.count() == want.count() > 0, name
    w1, b1, _ = D.load_datamodels(spark, str(tmp_path / "out"), plan.regress_id)
    w2, b2, _ = D.load_datamodels(spark, str(tmp_path / "out"), "clean")
    assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    # export: the source's .npy layout
    export = tmp_path / "npy"
    assert main(argv("export", work_sets(tmp_path, module, calls,
                                         f"datamodels.export_path={export}"))) == 0
    completed = np.load(export / "_completed.npy")
    masks, margins = np.load(export / "masks.npy"), np.load(export / "margins.npy")
    assert completed.tolist() == [True] * 24
    assert masks.dtype == np.bool_ and masks.shape == (24, 6)
    assert margins.dtype == np.float32 and margins.shape == (24, 3)
    for i in range(24):
        assert masks[i].tolist() == expected(i)[0].tolist()
        assert margins[i].tolist() == expected(i)[1].tolist()


def test_a_main_that_fails_everywhere_stops_after_the_first_job(spark, tmp_path, capsys,
                                                               worker_module):
    """main returns the wrong shape: every index of the first job fails its check, so the
    remaining jobs are not started (with 2 jobs in flight, at most 2 x 8 of 40 indices ran)."""
    module, _, calls = worker_module
    sets = work_sets(tmp_path, module, calls, "datamodels.args.size=7", models=40)
    capsys.readouterr()
    assert main(argv("work", sets)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "every index of the first job failed (index 0: ValueError: main's 'masks' for index 0 " \
           "has shape [7]; the spec says [6].)" in last, last
    assert "the remaining indices were not started" in last
    assert 8 <= sum(calls_per_index(calls).values()) <= 16


@pytest.mark.slow
def test_killed_worker_job_resumes_and_spark_retries_a_failed_task(spark, tmp_path,
                                                                   worker_module):
    """A worker job on local[2,2] (two attempts per task), where indices 3 and 11 fail on their
    first attempt, SIGKILLed right after its first commit while the other job's tasks run: the
    committed job holds its flaky index, retried by Spark (attempt 1). The re-run finishes the
    rest: every index is completed exactly once, and none committed before the kill is trained
    again."""
    module, folder, calls = worker_module
    sets = work_sets(tmp_path, module, calls, "spark.master=local[2,2]",
                     "datamodels.args.flaky=[3, 11]")
    env = dict(child_env(f"after:{D.STORE}"), PYTHONPATH=str(folder))
    cmd = [sys.executable, "-m", "jobs.cli"] + argv("work", sets)
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    store = str(tmp_path / "out" / "datamodels_store")
    before = store_rows(spark, store)
    assert len(before) == 8 and all(r["completed"] for r in before.values())
    (flaky,) = {3, 11} & set(before)
    assert {i: r["attempt"] for i, r in before.items()} == {i: int(i == flaky) for i in before}
    assert main(argv("work", work_sets(tmp_path, module, calls))) == 0
    frame = spark.read.format("delta").load(store)
    assert frame.count() == 24 == frame.select("index").distinct().count()
    rows = store_rows(spark, store)
    assert all(r["completed"] for r in rows.values())
    for row in rows.values():
        assert_values(row)
    calls_seen = calls_per_index(calls)
    assert {i: calls_seen[i] for i in before} == {i: 1 + (i == flaky) for i in before}


def test_digits_example_end_to_end(spark, tmp_path, capsys):
    """The README's example at a test's size: 300 models on random halves of 200 training
    digits, margins on 50 target digits. Datamodels fitted on 210 models predict the 60
    held-out models' margins at Pearson r >= 0.85 on average over targets; regress on the
    executors equals regress on the driver; the selection is written like a GIO selection and
    trains a probe (with a random-rows baseline)."""
    out = tmp_path / "out"
    sets = [f"output.path={out}", "spark.master=local[2]",
            f"pool.path={tmp_path / 'digits' / 'train'}",
            f"target.path={tmp_path / 'digits' / 'target'}",
            "datamodels.num_models=300", "datamodels.args.targets=50",
            "datamodels.schema.margins.shape=[50]", "datamodels.num_val=30",
            "datamodels.num_test=60", "datamodels.budget=60"]
    capsys.readouterr()
    assert main(argv("example", sets)) == 0
    printed = capsys.readouterr().out
    cfg = load_config(CONF, sets, "datamodels-regress")
    plan = D.make_regress_plan(spark, cfg)
    fit = tables.read_key(spark, str(out), "datamodels_regressions", plan.regress_id).first()
    summary = __import__("json").loads(fit["summary"])
    assert summary["test_r_mean"] >= 0.85, summary
    assert f"r = {summary['test_r_mean']:.3f}" in printed
    assert (len(fit["train_models"]), len(fit["val_models"]), len(fit["test_models"])) == (
        210, 30, 60)
    assert not set(fit["test_models"]) & set(fit["train_models"] + fit["val_models"])
    fits = tables.read_key(spark, str(out), "datamodels_fits", plan.regress_id)
    assert fits.count() == 50 and fits.where(~F.col("converged")).count() == 0
    weight, bias, targets = D.load_datamodels(spark, str(out), plan.regress_id)
    assert weight.shape == (50, 200) and targets.tolist() == list(range(50))
    assert (weight != 0).sum() == tables.read_key(spark, str(out), "datamodels_weights",
                                                  plan.regress_id).count()
    # the fit predicts the test models as recorded
    from gio_core.datamodels import evaluate
    data = D.read_regression_data(spark, cfg, plan.store)
    test = np.searchsorted(data.indices, fit["test_models"])
    _, r = evaluate(data.masks[test], data.outputs[test], weight, bias)
    stored_r = [row["test_r"] for row in fits.orderBy("target").collect()]
    np.testing.assert_allclose(r, stored_r, rtol=1e-9)
    # exported in fast_l1's layout: standardised masks, the same predictions and lambdas
    export = tmp_path / "export"
    assert main(argv("export", sets + [f"datamodels.export_path={export}",
                                       "datamodels.export_fast_l1=true"])) == 0
    import torch
    saved = torch.load(export / "datamodels.pt")
    assert sorted(saved) == ["bias", "lam", "weight"]
    assert tuple(saved["weight"].shape) == (200, 50) and tuple(saved["bias"].shape) == (50,)
    final = data.masks[np.searchsorted(data.indices, fit["train_models"] + fit["val_models"])]
    z = (data.masks[test] - final.mean(axis=0)) / (final.std(axis=0) + 1e-32)
    from gio_core.datamodels import predict
    np.testing.assert_allclose(z @ saved["weight"].double().numpy() + saved["bias"].double().numpy(),
                               predict(data.masks[test], weight, bias), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saved["lam"].numpy(), [row["lam"] for row in
                                                      fits.orderBy("target").collect()], rtol=1e-6)
    assert (export / "_completed.npy").exists()
    # fast_l1's own fit: no intercept, the grid from the raw masks, eps 1e-5: another fit id,
    # and its bias in fast_l1's layout is 0, as fast_l1 keeps it without use_bias
    fast = sets + ["datamodels.use_bias=false", "datamodels.lam_max_from=raw",
                   "datamodels.eps=1e-5", "datamodels.k=30", f"datamodels.export_path={export}",
                   "datamodels.export_fast_l1=true"]
    assert main(argv("regress", fast)) == 0 and main(argv("export", fast)) == 0
    fast_plan = D.make_regress_plan(spark, load_config(CONF, fast, "datamodels-regress"))
    assert fast_plan.regress_id != plan.regress_id
    saved = torch.load(export / "datamodels.pt")
    assert float(saved["bias"].abs().max()) < 1e-4 * float(saved["weight"].abs().max())
    assert not {"use_bias", "lam_max_from"} & D.regress_params(cfg).keys()  # older ids kept
    assert D.regress_params(load_config(CONF, fast, "datamodels-regress"))["use_bias"] is False
    # reuse: nothing new is written
    history = len(spark.sql(f"DESCRIBE HISTORY delta.`{out / 'datamodels_weights'}`").collect())
    assert main(argv("regress", sets)) == 0
    assert len(spark.sql(f"DESCRIBE HISTORY delta.`{out / 'datamodels_weights'}`")
               .collect()) == history
    # the same fit as Spark tasks (3 chunks of targets)
    on_spark = sets + ["datamodels.mode=spark", "datamodels.target_chunk=17",
                       "datamodels.regress_id=on-spark"]
    assert main(argv("regress", on_spark)) == 0
    w2, b2, _ = D.load_datamodels(spark, str(out), "on-spark")
    np.testing.assert_allclose(w2, weight, atol=1e-5)
    np.testing.assert_allclose(b2, bias, atol=1e-5)
    # the selection: the 60 training digits with the most positive weight, ranked
    run = stagelog.latest(spark, str(out), "datamodels_select",
                       [k for k in tables.stored_keys(spark, str(out), "selected_rows")][0])
    assert run is not None and run["status"] == "done"
    selected = tables.read_key(spark, str(out), "selected_rows", run["key"]).collect()
    from gio_core.datamodels import positive_influence
    order = np.argsort(-positive_influence(weight), kind="stable")[:60]
    assert sorted((r["rank"], r["index"]) for r in selected) == [
        (rank + 1, int(i)) for rank, i in enumerate(order)]
    # train on it as on a GIO selection, against as many random training digits
    train_sets = sets + [f"train.selection={run['key']}", "train.label_column=label",
                         "train.validation.format=delta", "train.validation.id_column=index",
                         f"train.validation.path={tmp_path / 'digits' / 'target'}",
                         "train.validation.embedding_column=pixels", "train.baseline=random",
                         "train.epochs=10", "train.batch_size=8"]
    assert main(["train", "--config", CONF] + [a for s in train_sets for a in ("--set", s)]) == 0
    arms = {r["arm"]: r for r in tables.read_table(spark, str(out), "train_runs").collect()}
    assert arms["selection"]["train_rows"] == arms["random"]["train_rows"] == 60
    assert 0 < arms["selection"]["val_accuracy"] <= 1


def test_work_runs_where_main_lives_in_a_package_and_refuses_another_spec(spark, tmp_path,
                                                                         monkeypatch):
    """A main inside a package is zipped for the executors; a store of another spec is
    refused before anything runs."""
    pkg = tmp_path / "pkgs" / f"dmpkg_{uuid.uuid4().hex[:8]}"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "train.py").write_text(MAIN)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    module = f"{pkg.name}.sub.train"
    cfg = load_config(CONF, [f"output.path={tmp_path / 'out'}", "datamodels.num_models=6",
                             *SPEC, f"datamodels.main_import={module}", "datamodels.args={}"],
                      "datamodels-work")
    report = D.run_work(spark, cfg)
    assert report.completed == 6 and not report.failed
    shipped = glob.glob(os.path.join(tempfile_root(), "gio-spark-main-*", f"{pkg.name}.zip"))
    assert shipped
    other = load_config(CONF, [f"output.path={tmp_path / 'out'}", "datamodels.num_models=7",
                               *SPEC, f"datamodels.main_import={module}", "datamodels.args={}"],
                        "datamodels-work")
    with pytest.raises(Exception, match="was created for another spec"):
        D.run_work(spark, other)


def tempfile_root():
    import tempfile
    return tempfile.gettempdir()


def test_worker_task_records_a_timeout_and_a_result_off_the_spec(tmp_path, worker_module):
    """The executor side alone (on its last attempt, so errors are recorded, not raised): an
    index that outlives timeout_s fails with that reason, one whose result has another shape
    fails naming the key; the others return main's values, cast and flattened."""
    from jobs.config.store_spec import parse_spec
    from jobs.datamodels.worker import work_task
    module, _, _ = worker_module
    spec = parse_spec({"num_models": 4, "schema": {"masks": {"shape": [6], "dtype": "bool_"},
                                                   "margins": {"shape": [3],
                                                               "dtype": "float32"}}}, "spec")
    slow = list(work_task(spec.to_json(), module, str(tmp_path), {"sleep": 1.0}, 1, 0.2, [0]))
    assert slow[0][:3] == (0, False, 0) and "datamodels.timeout_s = 0.2 s" in slow[0][7]
    rows = list(work_task(spec.to_json(), module, str(tmp_path), {}, 1, 5.0, [1, 2]))
    assert [r[1] for r in rows] == [True, True] and rows[0][7] is None
    masks, margins = expected(1)
    assert rows[0][8]["masks"].tolist() == masks.tolist()
    np.testing.assert_allclose(rows[0][8]["margins"], margins)
    wrong = list(work_task(spec.to_json(), module, str(tmp_path), {"size": 4}, 1, None, [3]))
    assert wrong[0][1] is False and "'masks' for index 3 has shape [4]" in wrong[0][7]
    with pytest.raises(ValueError, match="index 3 is broken"):      # not the last attempt
        list(work_task(spec.to_json(), module, str(tmp_path), {"fail": [3]}, 2, None, [3]))
    # A main that exits (SystemExit gets past `except Exception`): recorded for its index and
    # the next one still runs; before the last attempt, a task error for Spark to retry.
    exited = list(work_task(spec.to_json(), module, str(tmp_path), {"exits": [2]}, 1, None,
                            [2, 1]))
    assert [r[:2] for r in exited] == [(2, False), (1, True)]
    assert exited[0][7].startswith("SystemExit(2): main exited instead of returning its values.")
    with pytest.raises(RuntimeError, match=r"^SystemExit\(2\): main exited"):
        list(work_task(spec.to_json(), module, str(tmp_path), {"exits": [2]}, 2, None, [2]))


def test_a_main_that_parses_its_command_line_reads_datamodels_argv(tmp_path, monkeypatch):
    """A script that reads its settings with argparse (as the reference's fastargs scripts do
    from the worker's command line) gets ``datamodels.argv`` as ``sys.argv[1:]`` while main
    runs, and the task's own ``sys.argv`` is given back after; without it, main exits and the
    index records why, naming the option."""
    from jobs.config.store_spec import parse_spec
    from jobs.datamodels.worker import work_task
    name = f"dm_argv_main_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        import argparse
        import sys

        import numpy as np


        def main(*, index, logdir):
            p = argparse.ArgumentParser(prog=sys.argv[0])
            p.add_argument("--trainer.multiple", dest="multiple", type=int, required=True)
            multiple = p.parse_args().multiple
            return {"numbers": np.full(4, multiple * (index + 1), dtype=np.uint8)}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_spec({"num_models": 3, "schema": {"numbers": {"shape": [4],
                                                               "dtype": "uint8"}}}, "spec")
    before = list(sys.argv)
    rows = list(work_task(spec.to_json(), name, str(tmp_path), {}, 1, None, [0, 2],
                          argv=["--trainer.multiple=3"]))
    assert [(r[0], r[1], r[8]["numbers"].tolist()) for r in rows] == [
        (0, True, [3, 3, 3, 3]), (2, True, [9, 9, 9, 9])]
    assert sys.argv == before
    missing = list(work_task(spec.to_json(), name, str(tmp_path), {}, 1, None, [1], argv=[]))
    assert missing[0][1] is False and "datamodels.argv" in missing[0][7]
    assert sys.argv == before


def test_the_fast_l1_layout_predicts_what_the_fit_predicts():
    """Weights for standardised masks ([p, T]) and a bias that takes in the means: the same
    predictions; a column that never changes gets weight 0, its part moved into the bias."""
    rng = np.random.default_rng(2)
    masks = rng.random((40, 6)) < 0.5
    masks[:, 0] = True
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    layout = D.fast_l1_layout(weight, bias, masks)
    assert layout["weight"].shape == (6, 3) and layout["bias"].shape == (3,)
    z = (masks - layout["mean"]) / (layout["std"] + 1e-32)
    np.testing.assert_allclose(z @ layout["weight"] + layout["bias"], bias + masks @ weight.T,
                               atol=1e-12)
    assert np.all(layout["weight"][0] == 0)


def test_the_reference_shaped_spec_and_config_helpers(monkeypatch, capsys):
    """jobs.tools.datamodels.training.spec and utils: the spec's checks (AssertionError, as
    the reference's asserts), the completed flags' entry, and make_config, which reads a
    script's fastargs section from a command line that carries other words too."""
    from fastargs import Param, Section, get_current_config

    from jobs.tools.datamodels.training import spec as S
    from jobs.tools.datamodels.training.utils import make_config
    good = {"num_models": 3, "schema": {"m": {"dtype": "float32", "shape": [2]}}}
    out = S.preprocess_spec(good)
    assert out["schema"][S.COMPLETED] == {"dtype": "bool_", "shape": []}
    assert S.COMPLETED not in good["schema"]                       # the caller's copy kept
    for bad, says in (({"schema": {}}, "num_models"),
                      ({"num_models": 1, "schema": {"_completed": {}}}, "_completed"),
                      ({"num_models": 1, "schema": {"m": {"dtype": "float32"}}}, "shape"),
                      ({"num_models": 1, "schema": {"m": {"dtype": "float32", "shape": 2}}},
                       "must be a list"),
                      ({"num_models": 1, "schema": {"m": {"dtype": "quaternion",
                                                          "shape": [1]}}}, "not a numpy")):
        with pytest.raises(AssertionError, match=says):
            S.verify_spec(bad)
    name = f"helpers{uuid.uuid4().hex[:6]}"
    Section(name).params(multiple=Param(int, "a value", required=True))
    monkeypatch.setattr(sys, "argv", ["worker", "--worker.index=0", f"--{name}.multiple=4"])
    config = make_config(quiet=True)
    assert config[(name, "multiple")] == 4 and get_current_config() is config
