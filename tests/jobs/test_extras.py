"""The core install: a clean virtual environment with gio-spark and no extra installs without
torch, ONNX Runtime or matplotlib, selects on stored embeddings, and names the extra to install
when a run needs one. Real pip, from PyPI (its cache makes a re-run quick); about a minute."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tracked_copy(dest) -> None:
    """The tracked files (what a clean clone holds), so the build leaves the checkout alone."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
            with open(src, "rb") as f, open(os.path.join(dest, name), "wb") as g:
                g.write(f.read())


@pytest.mark.slow
def test_the_core_installs_without_torch_and_selects_on_stored_embeddings(tmp_path):
    src, venv = tmp_path / "src", tmp_path / "venv"
    _tracked_copy(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                          "--disable-pip-version-check", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    python = str(venv / "bin" / "python")
    for module in ("torch", "sentence_transformers", "onnxruntime", "matplotlib"):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is installed by the core"

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (6, 8))
    pool = centres[rng.integers(0, 6, 400)] + rng.normal(0, 1, (400, 8))
    target = centres[rng.choice([0, 1], 60)] + rng.normal(0, 1, (60, 8))
    for name, x in (("pool", pool), ("target", target)):
        pd.DataFrame({"id": [f"{name}{i}" for i in range(len(x))], "vec": list(x)}).to_parquet(
            tmp_path / f"{name}.parquet")
    pd.DataFrame({"text": [f"document {i}" for i in range(50)]}).to_parquet(
        tmp_path / "texts.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    cli = str(venv / "bin" / "gio-spark")
    sets = ["pool.path=pool.parquet", "target.path=target.parquet", "output.path=out",
            "spark.master=local[2]", "quantize.pool_k=24", "quantize.target_k=6", "select.k=3"]
    for side in ("pool", "target"):
        sets += [f"{side}.embedding_column=vec", f"{side}.id_column=id",
                 f"{side}.text_column=null"]
    run = subprocess.run([cli, "run"] + [a for s in sets for a in ("--set", s)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "rows (" in run.stdout and (tmp_path / "out" / "selected_rows" / "_delta_log").is_dir()
    # The plot is the one thing skipped, with a line that names the extra.
    assert ("warning: select: the KL curve not drawn: matplotlib is not installed (pip install "
            "'gio-spark[plots]').") in run.stdout
    assert not (tmp_path / "out" / "plots").exists()

    # Text to embed: exit 2 before Spark starts, naming the extra; nothing written.
    text = subprocess.run([cli, "run", "--set", "pool.path=texts.parquet", "--set",
                           "target.path=texts.parquet", "--set", "output.path=out_text"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 2
    assert text.stderr.strip().splitlines()[-1] == (
        "gio-spark: error: embedding the text of pool, target needs gio-spark's embed extra "
        "(sentence_transformers is not installed): pip install 'gio-spark[embed]'; or give "
        "precomputed vectors (embedding_column).")
    assert not (tmp_path / "out_text").exists()
