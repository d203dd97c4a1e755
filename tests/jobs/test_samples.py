"""The code samples of the README and of docs/, checked against the code they show.

Every sample is checked statically here: a YAML sample is a config the loader accepts; a Python
sample's imports exist and each call of the project's functions and classes (and of the
libraries it imports) binds to the callee's signature; a shell sample names commands, make
targets and ``--set`` keys that exist. The README's two "own data" samples are also run as they
are written, on small files and tables standing in for the user's data: the command-line one in
a child process from the README's own YAML, the notebook one on this session (its ``s3a://``
URLs pointed at a ``file:///`` URL of a local folder; ``tests/jobs/test_s3.py`` runs the
pipeline on a real S3 API). Both with the row budget scaled down to the test's pool.
The samples that need a cluster (spark-submit lines) are checked statically only; the
spark-submit entry itself runs in ``tests/jobs/test_pipeline.py``.
"""
import ast
import glob
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from jobs.common.errors import InputError
from jobs.config import load_config
from jobs.io.demo_data import TARGET_PACKAGES
from jobs.pipeline import COMMANDS, DATAMODELS_ACTIONS
from tests.jobs.test_crash_safety import ROOT, child_env

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND_NAMES = {"demo", "package", "config", "datamodels", *COMMANDS}


def blocks(lang: str, pages=PAGES) -> list:
    """``[(page, text)]`` of the fenced blocks of one language."""
    found = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            found += [(page, m.group(2)) for m in BLOCK.finditer(f.read()) if m.group(1) == lang]
    return found


def test_every_yaml_sample_is_a_config_the_loader_accepts(tmp_path):
    samples = blocks("yaml")
    assert len(samples) >= 5
    for n, (page, text) in enumerate(samples):
        path = tmp_path / f"sample{n}.yaml"
        path.write_text(text)
        try:
            load_config(str(path), [], command="config")
        except InputError as err:
            pytest.fail(f"{page}: its YAML sample is refused: {err}\n{text}")


def _resolve(node, names: dict):
    """The object a call's function names, where the sample's imports say it (else None)."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        if owner is not None and inspect.ismodule(owner):
            assert hasattr(owner, node.attr), f"{owner.__name__} has no {node.attr}"
            return getattr(owner, node.attr)
    return None


def test_every_python_sample_imports_what_exists_and_calls_it_as_it_is_declared():
    samples = blocks("python")
    assert len(samples) >= 6
    checked = 0
    for page, text in samples:
        tree = ast.parse(text)        # a sample that is not Python fails here
        names: dict = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    names[alias.asname or alias.name] = importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page}: {node.module}.{alias.name}"
                    names[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            target = _resolve(node.func, names)
            if target is None or not callable(target) or inspect.ismodule(target):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or \
                    any(k.arg is None for k in node.keywords):
                continue
            try:
                signature = inspect.signature(target)
            except (TypeError, ValueError):     # a builtin without one
                continue
            try:
                signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as err:
                pytest.fail(f"{page}: {ast.unparse(node)[:120]}: {err}")
            checked += 1
    assert checked >= 12, checked


def _shell_lines(page: str, text: str) -> list:
    """The sample's commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (re.sub(r"(^|\s)#.*$", "", line) for line in joined.splitlines())  # not a#b
    return [shlex.split(line) for line in lines if line.strip()]


def test_every_shell_sample_names_commands_targets_and_keys_that_exist():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        targets = set(re.findall(r"^([\w-]+):", f.read(), re.M))
    checked = 0
    for page, text in blocks("bash"):
        for words in _shell_lines(page, text):
            if words[0] == "make":
                assert set(words[1:]) <= targets, f"{page}: {' '.join(words)}"
                checked += 1
                continue
            if words[0] == "gio-spark":
                args = words[1:]
            elif words[0] == "spark-submit":
                args = words[words.index("jobs/submit.py") + 1:]
            else:
                continue
            if not args or args[0].startswith("-") or "|" in args[0]:
                continue                      # --version; a usage line naming alternatives
            assert args[0] in COMMAND_NAMES, f"{page}: {' '.join(words)}"
            if args[0] == "datamodels" and len(args) > 1 and "|" not in args[1]:
                assert args[1] in DATAMODELS_ACTIONS, f"{page}: {' '.join(words)}"
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            try:
                load_config(None, sets, command="config")
            except InputError as err:
                pytest.fail(f"{page}: {' '.join(words)}: {err}")
            checked += 1
    assert checked >= 15, checked


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, docstrings):
    """The files the README's command-line sample names, in a folder of their own."""
    folder = tmp_path_factory.mktemp("own_data")
    (folder / "data").mkdir()
    pool, target = docstrings
    pd.DataFrame(pool).to_parquet(folder / "data" / "pool.parquet")
    with open(folder / "data" / "target.jsonl", "w", encoding="utf-8") as f:
        for row in target:
            f.write(json.dumps(row) + "\n")
    return folder


def _target_share(rows) -> float:
    return sum(r["package"] in TARGET_PACKAGES for r in rows) / len(rows)


@pytest.mark.slow
def test_the_readme_command_line_sample_runs_as_written(own_data, spark, docstrings, capsys):
    (page, config), = blocks("yaml", ["README.md"])
    (own_data / "my.yaml").write_text(config)
    shell = [words for _, text in blocks("bash", ["README.md"])
             for words in _shell_lines(page, text) if words[0] == "gio-spark"]
    assert [w[1] for w in shell] == ["config", "run"], shell
    for words in shell:
        # the run line's budget (50,000 rows, for a real pool) scaled to this test's small pool
        words = [w.replace("select.max_rows=50000", "select.max_rows=100") for w in words]
        run = subprocess.run([sys.executable, "-m", "jobs.cli", *words[1:]], cwd=own_data,
                             capture_output=True, text=True, timeout=600, env=child_env())
        assert run.returncode == 0, (words, run.stdout[-2000:], run.stderr[-3000:])
        if words[1] == "config":
            assert "path: data/pool.parquet" in run.stdout and "max_rows: 100000" in run.stdout
    out = own_data / "out" / "my-selection"
    chosen = [r.asDict() for r in spark.read.format("delta").load(str(out / "selected_rows"))
              .select("doc_id", "package").collect()]
    pool, _ = docstrings
    # the budget of 100 rows is filled (select.fill: mmd), with rows that lean to the target's
    # packages
    assert len(chosen) == 100
    assert len({r["doc_id"] for r in chosen}) == len(chosen)
    assert _target_share(chosen) > 2 * _target_share(pool), (_target_share(chosen), len(chosen))


@pytest.mark.slow
def test_the_readme_notebook_sample_runs_as_written(spark, docstrings, tmp_path, capsys):
    (_, select_sample), (_, read_sample) = blocks("python", ["README.md"])
    bucket = f"file://{tmp_path}/bucket"
    pool, target = docstrings
    spark.sql(f"CREATE DATABASE IF NOT EXISTS raw LOCATION '{tmp_path / 'warehouse'}'")
    spark.createDataFrame(pd.DataFrame(pool)).write.format("delta").saveAsTable("raw.web_docs")
    spark.createDataFrame(pd.DataFrame(target)).write.parquet(f"{bucket}/target/")
    scope = {"spark": spark}
    # the budget (100,000 rows, for a real pool) scaled to this test's small pool, as above
    select_sample = select_sample.replace("max_rows=100_000", "max_rows=100")
    try:
        exec(select_sample.replace("s3a://bucket", bucket), scope)   # noqa: S102 - the sample
        exec(read_sample.replace("s3a://bucket", bucket), scope)     # noqa: S102
    finally:
        spark.sql("DROP DATABASE IF EXISTS raw CASCADE")
    shown = capsys.readouterr().out
    assert "|rank|count|" in shown.replace(" ", "") and "stop_reason" in shown
    chosen = [r.asDict() for r in scope["chosen"].collect()]
    assert {"doc_id", "text", "cluster_id", "rank", "run_id"} <= set(chosen[0])
    assert len(chosen) == 100 and _target_share(chosen) > 2 * _target_share(pool)
    # jobs.selection(...) of the sample reads back the same rows
    import jobs
    again = jobs.selection(f"{bucket}/gio", spark=spark)
    assert sorted(r["doc_id"] for r in again.collect()) == sorted(r["doc_id"] for r in chosen)
