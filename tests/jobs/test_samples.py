"""The code samples of the README and of docs/, checked against the code they show and run.

Every sample is checked statically: a YAML sample is a config the loader accepts; a Python
sample's imports exist and each call of the project's functions and classes (and of the
libraries it imports) binds to the callee's signature; a shell sample names commands, make
targets and ``--set`` keys that exist.

And every sample is run, here or by the test ``ELSEWHERE`` names, unless the page marks it
``<!-- sample: cluster (...) -->`` (a cluster or an object store; the mark says which test runs
its equivalent on 127.0.0.1):

- the README's two "own data" samples, as written, on small files and tables standing in for
  the user's data: the command-line one in a child process from the README's own YAML, the
  notebook one on this session (its ``s3a://`` URLs pointed at a ``file:///`` URL of a local
  folder; ``tests/jobs/test_s3.py`` runs the pipeline on a real S3 API);
- every Python sample of docs/, on small arrays and DataFrames bound to the names it uses;
- the commands of docs/pipeline.md, in this process, on the demo config with a slice of the
  demo's docstrings standing in for all of them;
- the YAML sections of the DII, GAF and quality pages, added to the README's config, and those
  pages' commands on it, in this process.

Where a run is scaled down (a row budget, epochs, sample sizes), the substitution is written
next to it.
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

DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = ["README.md"] + DOCS
BLOCK = re.compile(r"(?:^<!-- sample: ([^\n]*?) -->\n)?^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND_NAMES = {"demo", "package", "config", "plan", "datamodels", *COMMANDS}
SAMPLE_LANGS = ("python", "bash", "yaml")


def blocks(lang: str, pages=PAGES, marked: bool = True) -> list:
    """``[(page, text)]`` of the fenced blocks of one language (``marked=False``: without the
    blocks a ``<!-- sample: ... -->`` line marks)."""
    found = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            found += [(page, m.group(3)) for m in BLOCK.finditer(f.read())
                      if m.group(2) == lang and (marked or m.group(1) is None)]
    return found


def marks(pages=DOCS) -> list:
    """``[(page, mark, lang)]`` of the marked blocks."""
    found = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            found += [(page, m.group(1), m.group(2)) for m in BLOCK.finditer(f.read())
                      if m.group(1) is not None]
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
@pytest.mark.e2e
def test_the_readme_command_line_sample_runs_as_written(own_data, spark, docstrings, capsys):
    (page, config), = blocks("yaml", ["README.md"])
    (own_data / "my.yaml").write_text(config)
    shell = [words for _, text in blocks("bash", ["README.md"])
             for words in _shell_lines(page, text) if words[0] == "gio-spark"]
    assert [w[1] for w in shell] == ["config", "run"], shell
    for words in shell:
        # the run line's budget (50,000 rows, for a real pool) scaled to this test's small pool
        words = [w.replace("select.max_rows=50000", "select.max_rows=100") for w in words]
        # as a user runs it: no PYSPARK_PYTHON (the README's config names no spark.master)
        env = {k: v for k, v in child_env().items() if k != "PYSPARK_PYTHON"}
        run = subprocess.run([sys.executable, "-m", "jobs.cli", *words[1:]], cwd=own_data,
                             capture_output=True, text=True, timeout=600, env=env)
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
@pytest.mark.e2e
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
    assert "|cluster_id|rank|run_id|" in shown.replace(" ", "") and "stop_reason" in shown
    chosen = [r.asDict() for r in scope["chosen"].collect()]
    assert {"doc_id", "text", "cluster_id", "rank", "run_id"} <= set(chosen[0])
    assert len(chosen) == 100 and _target_share(chosen) > 2 * _target_share(pool)
    # jobs.selection(...) of the sample reads back the same rows
    import jobs
    again = jobs.selection(f"{bucket}/gio", spark=spark)
    assert sorted(r["doc_id"] for r in again.collect()) == sorted(r["doc_id"] for r in chosen)


# -- the samples of docs/, run -------------------------------------------------------------------

# A command of the README or docs/ that a test of its own runs (on smaller data where that test
# says), with a phrase of that test's body that shows it runs that command. ``make test`` is the
# command CI runs (.ci/run); ``make demo`` runs in ``make test-demo`` (4 min: not in make test).
ELSEWHERE = {
    "make test": (".ci/run", "make test"),
    "make demo": ("tests/jobs/test_pipeline.py::test_readme_main_command_on_the_demo_data",
                  '"demo.yaml"'),
    "make datamodels-example": ("tests/jobs/test_datamodels.py::test_digits_example_end_to_end",
                                '"example"'),
    "spark-submit --properties-file conf/spark-defaults.conf --py-files my_trainer.py "
    "jobs/submit.py datamodels work --config my.yaml":
        ("tests/jobs/test_cluster.py::"
         "test_datamodels_work_on_the_cluster_with_main_shipped_by_py_files", '"work"'),
    "spark-submit --properties-file conf/spark-defaults.conf jobs/submit.py run --config "
    "conf/demo.yaml":
        ("tests/jobs/test_pipeline.py::test_spark_submit_runs_the_pipeline_and_bad_config_exits_2",
         '"spark-submit"'),
    "spark-submit --properties-file conf/spark-defaults.conf jobs/submit.py run --config my.yaml":
        ("tests/jobs/test_pipeline.py::test_spark_submit_runs_the_pipeline_and_bad_config_exits_2",
         '"spark-submit"'),
    "gio-spark imnn-example --config conf/imnn.yaml":
        ("tests/jobs/test_imnn.py::test_the_example_from_one_command", '["imnn-example"]'),
    "gio-spark imnn --config conf/imnn.yaml":
        ("tests/jobs/test_imnn.py::test_the_example_from_one_command", '["imnn"]'),
    "gio-spark imnn --config conf/imnn.yaml --local":
        ("tests/jobs/test_imnn.py::test_killed_between_its_tables_resumes_to_the_clean_fit",
         "--local"),
    "python -m jobs.tools.datamodels.training.initialize_store --logging.logdir=$dir "
    "--logging.spec=spec.json":
        ("tests/jobs/test_datamodels_reference.py::"
         "test_the_minimal_example_runs_on_gio_spark_with_one_import_line_changed",
         '"--logging.spec=spec.json"'),
    "python -m jobs.tools.datamodels.training.worker --worker.index=0 "
    "--worker.main_import=examples.minimal.train_minimal --worker.logdir=$dir "
    "--trainer.multiple=2":
        ("tests/jobs/test_datamodels_reference.py::"
         "test_the_minimal_example_runs_on_gio_spark_with_one_import_line_changed",
         '"--trainer.multiple=2"'),
}
README_RUN = ("config", "run")                       # the README's gio-spark lines, run above
PIPELINE_PAGE = "docs/pipeline.md"                   # its gio-spark commands run below
TOOL_PAGES = ("docs/dii.md", "docs/gaf.md", "docs/quality.md")   # one config, their commands
PROBE_SAMPLE = "load_probe"                          # gaf.md's, run on the tool pages' train run


def _docs_commands(page: str) -> list:
    return [words for p, text in blocks("bash", [page], marked=False)
            for words in _shell_lines(p, text)]


def test_every_docs_sample_is_run_here_or_elsewhere_or_marked_for_a_cluster():
    for page, mark, _ in marks():
        test_file = re.search(r"tests/jobs/test_\w+\.py", mark)
        assert mark.startswith("cluster (") and test_file, f"{page}: sample mark {mark!r}"
        assert os.path.exists(os.path.join(ROOT, test_file.group(0))), mark
    for page, _ in blocks("yaml", DOCS, marked=False):
        assert page in TOOL_PAGES, f"{page}: a YAML sample no test runs (mark it or run it)"
    ran_elsewhere = set()
    for page in PAGES:
        for words in _docs_commands(page):
            line = " ".join(words)
            if words[0] == "gio-spark" and (page in (PIPELINE_PAGE, *TOOL_PAGES) or (
                    page == "README.md" and words[1] in README_RUN)):
                continue                                 # run by the tests here
            assert line in ELSEWHERE, f"{page}: {line!r} is run by no test (mark it or run it)"
            ran_elsewhere.add(line)
            where, evidence = ELSEWHERE[line]
            path, _, name = where.partition("::")
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                body = f.read()
            if name:
                body = body[body.index(f"def {name}("):]
                body = body[:body.find("\ndef ", 1)]
            assert evidence in body, (line, where, evidence)
    assert ran_elsewhere == set(ELSEWHERE), set(ELSEWHERE) - ran_elsewhere
    probe = [text for _, text in blocks("python", DOCS, marked=False) if PROBE_SAMPLE in text]
    assert len(probe) == 1


def _python_scope(spark, tmp_path) -> dict:
    """The names the docs' Python samples use, bound to small data of the right kind."""
    import numpy as np
    from pyspark.ml.feature import VectorAssembler
    from sklearn.datasets import load_digits
    rng = np.random.default_rng(0)
    data_a = rng.normal(size=(200, 4)).astype(np.float32)
    centres = np.array([[0.0] * 8, [6.0] * 8])
    pool = np.concatenate([centres[0] + rng.normal(size=(150, 8)),
                           centres[1] + rng.normal(size=(150, 8))]).astype(np.float32)
    target = (centres[0] + rng.normal(size=(40, 8))).astype(np.float32)
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int32)
    rows = [(i, *map(float, v), int(v[0] > 3)) for i, v in
            enumerate(np.concatenate([centres[0][:3] + rng.normal(size=(60, 3)),
                                      centres[1][:3] + rng.normal(size=(60, 3))]))]
    frame = spark.createDataFrame(rows, "id long, x0 double, x1 double, x2 double, label int")
    # Several targets (pipeline.md): a pool of three blobs, two of them target domains.
    mix = np.random.default_rng(1)
    blobs = [np.full(8, 6.0), np.full(8, -6.0), np.r_[np.full(4, 6.0), np.full(4, -6.0)]]
    docs_df = spark.createDataFrame(pd.DataFrame({
        "id": [f"d{i}" for i in range(300)], "blob": np.repeat(["code", "math", "other"], 100),
        "vec": [v.tolist() for b in blobs for v in b + mix.normal(size=(100, 8))]}))

    def domain(name, centre):
        return spark.createDataFrame(pd.DataFrame({
            "id": [f"{name}{i}" for i in range(40)],
            "vec": [v.tolist() for v in centre + mix.normal(size=(40, 8))]}))
    return {"spark": spark, "data_A": data_a, "data_B": data_a[:, :2] * np.float32([1, 3]),
            "docs_df": docs_df, "code_df": domain("c", blobs[0]), "math_df": domain("m", blobs[1]),
            "target": target, "pool": pool,
            "microbatches": {"x": x[:64].reshape(2, 32, 64), "y": y[:64].reshape(2, 32)},
            "train": {"x": x[:600], "y": y[:600]}, "val": {"x": x[600:800], "y": y[600:800]},
            "target_df": frame.where("id < 60"), "pool_df": frame,
            "df": VectorAssembler(inputCols=["x0", "x1", "x2"], outputCol="features")
            .transform(frame)}


# Each Python sample as run: what it does at a user's size, made small (the sample's text is
# run with these replaced), and what is checked after it.
PY_SCALE = {"num_epochs=500": "num_epochs=50", "epochs=40": "epochs=3",
            "maxRows=50_000": "maxRows=30", "max_rows=50_000": "max_rows=60"}


@pytest.mark.slow
def test_the_docs_python_samples_run(spark, tmp_path):
    import numpy as np
    samples = [(page, text) for page, text in blocks("python", DOCS, marked=False)
               if PROBE_SAMPLE not in text]
    assert len(samples) >= 9
    base = _python_scope(spark, tmp_path)
    for page, text in samples:
        for old, new in PY_SCALE.items():
            text = text.replace(old, new)
        text = text.replace('"/models/gio"', repr(str(tmp_path / "models" / "gio")))
        text = text.replace('"s3a://bucket/gio-domains"', repr(str(tmp_path / "domains")))
        scope = dict(base)
        try:
            exec(compile(text, page, "exec"), scope)        # noqa: S102 - the docs' sample
        except Exception as err:                            # noqa: BLE001 - name the sample
            pytest.fail(f"{page}: its sample fails: {type(err).__name__}: {err}\n{text}")
        if "gio_core.select(target, pool)" in text:         # engine.md: picks the target's blob
            assert len(scope["chosen"]) > 0 and scope["result"].stop_reason
            assert np.abs(scope["chosen"].mean(axis=0)).max() < 1.5
        if "dii.train()" in text:                           # dii.md and compatibility.md
            weights = np.asarray(scope["weights"])
            assert weights.shape[1] == 4 and np.isfinite(weights).all()
        if "forward_greedy_feature_selection" in text:
            assert len(scope["sets"]) == 3 and len(scope["sets"][0]) == 1
        if "gaf.train_gaf" in text:                         # gaf.md
            assert len(scope["records"]) == 3 and scope["m"].agreed_count >= 1
        if "GIOSelector" in text:                           # python-api.md
            from pyspark.ml import PipelineModel
            saved = PipelineModel.load(str(tmp_path / "models" / "gio"))
            chosen = saved.transform(scope["pool_df"]).where("selected")
            assert 0 < chosen.count() <= 30
            assert chosen.where("id < 60").count() >= 0.9 * chosen.count()  # the target's blob
            assert max(scope["weigher"].scaledWeights) == 1.0
        if "shares=" in text:                               # pipeline.md: several targets
            got = {r["blob"]: r["count"] for r in scope["chosen"].groupBy("blob").count().collect()}
            assert sum(got.values()) == 60 and "other" not in got, got
            assert abs(got.get("code", 0) - 42) <= 12 and abs(got.get("math", 0) - 18) <= 12, got
            assert {r["domain"] for r in scope["served"].collect()} == {"code", "math"}
        if "GIOKL.GIOKL(" in text:                          # compatibility.md
            assert scope["gio_kl"].dim == 2


def _versions(spark, out: str) -> dict:
    """Each Delta table's version under ``out``."""
    from delta.tables import DeltaTable
    found = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "_delta_log"))):
        table = os.path.dirname(path)
        found[os.path.basename(table)] = (DeltaTable.forPath(spark, table).history(1)
                                          .first()["version"])
    return found


def _cli(words: list, sets: list, capsys) -> str:
    """A sample's ``gio-spark`` line run in this process (on this session) with ``sets`` added;
    what it printed."""
    from jobs.cli import main
    capsys.readouterr()
    try:
        code = main(words[1:] + [a for s in sets for a in ("--set", s)])
    except SystemExit as done:                     # --version and --help exit through argparse
        code = done.code
    printed = capsys.readouterr()
    assert code == 0, (words, printed.out[-2000:], printed.err[-2000:])
    return printed.out + printed.err


@pytest.mark.slow
def test_the_pipeline_page_commands_run(spark, tmp_path, docstrings, capsys):
    """docs/pipeline.md's gio-spark lines, in order, on conf/demo.yaml with the test's slice of
    the demo's docstrings for its pool and target and fewer clusters (the full demo runs in
    ``make test-demo``)."""
    pool, target = docstrings
    sides = {}
    for name, rows in (("pool", pool), ("target", target)):
        sides[name] = str(tmp_path / f"{name}.parquet")
        pd.DataFrame(rows).to_parquet(sides[name])
    out = str(tmp_path / "out")
    scaled = [f"pool.path={sides['pool']}", f"target.path={sides['target']}",
              "pool.format=parquet", "target.format=parquet", "quantize.pool_k=40",
              "quantize.target_k=8", f"output.path={out}"]
    commands = [w for w in _docs_commands(PIPELINE_PAGE) if w[0] == "gio-spark"]
    assert [w[1] for w in commands] == ["plan", "run", "select", "config", "--version",
                                        "run"], commands
    for words in commands:
        if "target.domain_column=package" in words:
            continue                                   # its own test below (make test-e2e)
        before = _versions(spark, out)
        printed = _cli(words, scaled if words[1] != "--version" else [], capsys)
        if words[1] == "plan":                     # before the run: all of it runs, none written
            assert printed.startswith("plan for run run-") and "\n  run    explode " in printed
            assert not os.path.exists(out)
        elif words[1] == "run":
            chosen = spark.read.format("delta").load(os.path.join(out, "selected_rows"))
            assert chosen.count() > 0
            run = spark.read.format("delta").load(os.path.join(out, "runs")).first()
            assert json.loads(run["params"])["select"]["k"] == 7
        elif words[1] == "select":                 # the run's select stage: reused, no commit
            assert _versions(spark, out) == before
        elif words[1] == "config":
            assert "\n  k: 7\n" in printed and f"path: {out}" in printed
        else:
            assert printed.startswith("gio-spark ")


@pytest.mark.slow
@pytest.mark.e2e
def test_the_pipeline_page_several_targets_run(spark, tmp_path, capsys):
    """The page's run with a target of three domains (packages), on a slice of the demo's
    docstrings: 300 of other packages and 40 of each target package in the pool, 14 of each in
    the target, 40 pool and 24 target clusters; the row budget is 100 (the page's 300 is most
    of this pool)."""
    from jobs.io.demo_data import TARGET_PACKAGES, stdlib_docstrings
    found = [w for w in _docs_commands(PIPELINE_PAGE) if "target.domain_column=package" in w]
    assert len(found) == 1
    words = found[0]
    rows = stdlib_docstrings()
    by = {p: [r for r in rows if r["package"] == p] for p in TARGET_PACKAGES}
    other = [r for r in rows if r["package"] not in TARGET_PACKAGES][::20][:300]
    pool = other + [r for p in TARGET_PACKAGES for r in by[p][1::2][:40]]
    target = [r for p in TARGET_PACKAGES for r in by[p][0::2][:14]]
    sides = {}
    for name, part in (("pool", pool), ("target", target)):
        sides[name] = str(tmp_path / f"domains_{name}.parquet")
        pd.DataFrame(part).to_parquet(sides[name])
    out = str(tmp_path / "domains")
    _cli(words, [f"pool.path={sides['pool']}", f"target.path={sides['target']}",
                 "pool.format=parquet", "target.format=parquet", "quantize.pool_k=40",
                 "quantize.target_k=24", f"output.path={out}", "select.max_rows=100"], capsys)
    served = spark.read.format("delta").load(os.path.join(out, "selection_domains"))
    chosen = spark.read.format("delta").load(os.path.join(out, "selected_rows"))
    counts = {r["domain"]: r["count"] for r in chosen.join(
        served.select("cluster_id", "domain"), "cluster_id").groupBy("domain").count().collect()}
    sizes = [r["size"] for r in spark.read.format("delta").load(os.path.join(out, "centroids"))
             .where("side = 'pool'").collect()]
    assert sum(counts.values()) == 100
    for name, share in (("email", 0.5), ("http", 0.25), ("urllib", 0.25)):
        assert abs(counts.get(name, 0) - share * 100) <= max(sizes), counts


# The tool pages' YAML sections and commands at a user's size, made small for this test's pool of
# 360 docstrings: the README's row budget, as in its own test.
TOOL_SCALE = ["select.max_rows=100"]


@pytest.fixture(scope="module")
def tool_folder(tmp_path_factory, docstrings):
    """The README's own-data files plus what the tool pages' sections name: ``labelled.parquet``
    (the weigh source: ids, the bundled model's vectors, a label) and ``data/heldout`` (held-out
    docstrings with a ``topic`` and a ``source``, as the pool has)."""
    import numpy as np

    from jobs.io.demo_data import stdlib_docstrings
    from jobs.io.encoders import load_model
    folder = tmp_path_factory.mktemp("tool_pages")
    (folder / "data").mkdir()
    pool, target = docstrings

    def tagged(rows):
        return pd.DataFrame([dict(r, topic="target" if r["package"] in TARGET_PACKAGES
                                  else "other", source=r["package"]) for r in rows])
    tagged(pool).to_parquet(folder / "data" / "pool.parquet")
    with open(folder / "data" / "target.jsonl", "w", encoding="utf-8") as f:
        for row in target:
            f.write(json.dumps(row) + "\n")
    used = {r["doc_id"] for r in pool + target}
    rest = [r for r in stdlib_docstrings() if r["doc_id"] not in used]
    held = ([r for r in rest if r["package"] in TARGET_PACKAGES][:60]
            + [r for r in rest if r["package"] not in TARGET_PACKAGES][::40][:60])
    tagged(held).rename(columns={"doc_id": "id"}).to_parquet(folder / "data" / "heldout")
    labelled = pool[::2]
    vectors = load_model("bundled").encode([r["text"] for r in labelled], batch_size=64,
                                           normalize_embeddings=True)
    pd.DataFrame({"id": [r["doc_id"] for r in labelled],
                  "vec": [np.asarray(v, np.float32).tolist() for v in vectors],
                  "label": [r["package"] for r in labelled]}).to_parquet(folder / "labelled.parquet")
    return folder


@pytest.mark.slow
@pytest.mark.e2e
def test_the_tool_pages_samples_run_on_the_readme_config(spark, tool_folder, docstrings, capsys,
                                                          monkeypatch):
    """The YAML sections of the DII, GAF and quality pages added to the README's config, then
    those pages' commands in page order: weigh alone, then the whole run (weigh reused), then
    each stage alone again (reused, nothing written); then gaf.md's probe sample on the run."""
    import yaml
    (_, readme), = blocks("yaml", ["README.md"])
    config = yaml.safe_load(readme)
    for page in TOOL_PAGES:
        (_, section), = blocks("yaml", [page], marked=False)
        config.update(yaml.safe_load(section))
    # The sample's paths are relative to the folder the user runs in; this process's Spark
    # resolves relative paths against the JVM's working directory, so they are made absolute.
    def rooted(node):
        for key, value in node.items():
            if isinstance(value, dict):
                rooted(value)
            elif key == "path" and isinstance(value, str) and not os.path.isabs(value):
                node[key] = str(tool_folder / value)
    rooted(config)
    (tool_folder / "my.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tool_folder)
    out = str(tool_folder / "out" / "my-selection")
    seen = []
    for page in TOOL_PAGES:
        for words in _docs_commands(page):
            assert words[0] == "gio-spark" and words[2:] == ["--config", "my.yaml"], words
            before = _versions(spark, out)
            _cli(words, TOOL_SCALE, capsys)
            if words[1] in seen or words[1] in ("train", "evaluate"):
                assert _versions(spark, out) == before, words      # reused: nothing written
            seen.append(words[1])
    assert seen == ["weigh", "run", "run", "train", "run", "evaluate"], seen
    weights = spark.read.format("delta").load(f"{out}/feature_weights")
    assert weights.select("weights_id").distinct().count() == 1   # the run reused weigh's
    runs = spark.read.format("delta").load(f"{out}/train_runs").collect()
    assert {r["arm"] for r in runs} == {"selection", "random"}
    selection = next(r for r in runs if r["arm"] == "selection")
    evaluations = spark.read.format("delta").load(f"{out}/evaluations").collect()
    assert {r["method"] for r in evaluations} >= {"selection", "random", "k_center",
                                                  "nn_round_robin", "gio_rows"}
    # the selection leans to the target's docstrings more than random rows do
    share = {r["method"]: r["share"] for r in evaluations}
    assert share["selection"] > share["random"], share

    (_, probe_sample), = [(p, t) for p, t in blocks("python", DOCS, marked=False)
                          if PROBE_SAMPLE in t]
    labelled = pd.read_parquet(tool_folder / "labelled.parquet")
    scope = {"spark": spark, "vectors": labelled["vec"].tolist()[:20]}
    exec(probe_sample.replace('"out/my-job"', repr(out))                 # noqa: S102
         .replace('"train-1a2b3c4d5e6f"', repr(selection["train_id"])), scope)
    assert set(scope["probe"].predict(scope["vectors"])) <= {"target", "other"}
