"""The MadryLab datamodels reference's minimal example, against gio-spark: its three commands
(``initialize_store``, ``worker``, the check) with only the import line changed, ``datamodels.``
to ``jobs.tools.datamodels.``.

The reference does not publish its package (``datamodels`` on PyPI is another project), so this
test makes the same calls with files of its own: a training script that declares a required
fastargs setting (``trainer.multiple``) and reads it from the worker's command line, the same
spec (ten models, 256 ``uint8`` values each), and the example's checks on the store's files.
fastargs and terminaltables come with the ``test`` extra. Each command starts Spark, so this
runs in ``make test-references``.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.jobs.test_pipeline import ROOT

pytestmark = pytest.mark.reference

TRAIN = textwrap.dedent('''
    from argparse import ArgumentParser

    import numpy as np
    from fastargs import Param, Section, get_current_config
    from fastargs.decorators import param

    Section("trainer").params(multiple=Param(int, "what every value is", required=True))


    def main(*_, index, logdir):
        config = get_current_config()
        parser = ArgumentParser()
        config.augment_argparse(parser)
        config.collect_argparse_args(parser)
        config.validate(mode="stderr")
        return values(index=index)


    @param("trainer.multiple")
    def values(*_, index, multiple):
        return {"random_numbers": np.ones(256, dtype=np.uint8) * multiple}
''')


def _run(module: str, *words: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd)]))
    return subprocess.run([sys.executable, "-m", module, *words], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_minimal_example_runs_on_gio_spark_with_one_import_line_changed(tmp_path):
    minimal = tmp_path / "examples" / "minimal"            # the reference's layout
    minimal.mkdir(parents=True)
    for folder in (tmp_path / "examples", minimal):
        (folder / "__init__.py").write_text("")
    (minimal / "train_minimal.py").write_text(TRAIN)
    (tmp_path / "spec.json").write_text(json.dumps(
        {"schema": {"random_numbers": {"dtype": "uint8", "shape": [256]}}, "num_models": 10}))
    logdir = tmp_path / "store"
    logdir.mkdir()
    pkg = "jobs.tools.datamodels.training"

    made = _run(f"{pkg}.initialize_store", f"--logging.logdir={logdir}",
                "--logging.spec=spec.json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.strip().endswith("Done!")
    worked = _run(f"{pkg}.worker", "--worker.index=0",
                  "--worker.main_import=examples.minimal.train_minimal",
                  f"--worker.logdir={logdir}", "--trainer.multiple=2", cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr[-2000:]

    # the example's checks, through the compatibility modules' own helpers
    sys.path.insert(0, str(ROOT))
    from jobs.tools.datamodels.training.spec import COMPLETED
    from jobs.tools.datamodels.training.utils import load_memmap
    x = load_memmap(logdir, "random_numbers", "r")
    assert x.shape == (10, 256) and x.dtype == np.uint8
    assert (x[0] == np.ones(256, dtype=np.uint8) * 2).all()
    assert x[1:].sum() == 0
    assert load_memmap(logdir, COMPLETED, "r").sum() == 1
    assert (logdir / "workers" / "0").is_dir()                 # main's own logdir

    # the reference's worker skips a completed index; so does this one (the store unchanged)
    again = _run(f"{pkg}.worker", "--worker.index=0",
                 "--worker.main_import=examples.minimal.train_minimal",
                 f"--worker.logdir={logdir}", "--trainer.multiple=5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (load_memmap(logdir, "random_numbers", "r")[0] == 2).all()
    # without the script's setting, its parser exits: the index fails (exit 1) and says why
    failed = _run(f"{pkg}.worker", "--worker.index=3",
                  "--worker.main_import=examples.minimal.train_minimal",
                  f"--worker.logdir={logdir}", cwd=tmp_path)
    assert failed.returncode == 1
    assert "SystemExit" in failed.stderr and "datamodels.argv" in failed.stderr
    assert load_memmap(logdir, COMPLETED, "r").sum() == 1


def test_a_spec_that_is_not_json_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "spec.json").write_text("{not json")
    done = _run("jobs.tools.datamodels.training.initialize_store",
                f"--logging.logdir={tmp_path / 'store'}", "--logging.spec=spec.json",
                cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("initialize_store: error: the spec 'spec.json' cannot be "
                                  "read as JSON")
    assert not (tmp_path / "store").exists()
