"""Credentials in a config never land in a table, a file or a log: a run (with the weigh stage,
whose table keeps the config too) with fake secrets in spark.conf, in pool.options and taken
from the environment, then every table, file and log it wrote searched for them."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml

from jobs.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRETS = {"s3a": "s3a-Secret-7d1f9", "password": "pw-Secret-42aa", "env": "env-Secret-0b3e",
           "token": "tok-Secret-e51c"}


def _config(tmp_path) -> str:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4))
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(300)], "vec": list(x),
                          "label": (x[:, 0] > 0).astype(int)})
    frame.to_parquet(tmp_path / "pool.parquet")
    frame.iloc[:60].to_parquet(tmp_path / "target.parquet")
    side = {"format": "parquet", "embedding_column": "vec", "id_column": "id",
            "text_column": None}
    config = {
        "spark": {"master": "local[2]", "conf": {
            "spark.hadoop.fs.s3a.secret.key": SECRETS["s3a"],
            "spark.hadoop.fs.s3a.session.token": SECRETS["token"],
            "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "${GIO_TEST_SECRET}"}},
        "pool": {**side, "path": str(tmp_path / "pool.parquet"),
                 "options": {"password": SECRETS["password"]}},
        "target": {**side, "path": str(tmp_path / "target.parquet")},
        "weigh": {"source": {**side, "path": str(tmp_path / "pool.parquet")},
                  "b_columns": ["label"], "num_points": 200, "num_epochs": 20},
        "quantize": {"pool_k": 20, "target_k": 5}, "select": {"k": 3},
        "output": {"path": str(tmp_path / "out")}}
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _found(text: str) -> list:
    return [name for name, value in SECRETS.items() if value in text]


def test_no_secret_lands_in_a_table_a_file_or_a_log(spark, tmp_path, monkeypatch):
    config = _config(tmp_path)
    monkeypatch.setenv("GIO_TEST_SECRET", SECRETS["env"])
    # The run gets the real values, the file's ${...} from the environment included.
    cfg = load_config(config)
    assert cfg.spark.conf["spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net"] == \
        SECRETS["env"] and cfg.pool.options["password"] == SECRETS["password"]
    logs = tmp_path / "logs"
    env = {**os.environ, "GIO_SPARK_LOG_DIR": str(logs), "GIO_TEST_SECRET": SECRETS["env"]}
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", config],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert _found(run.stdout + run.stderr) == []

    out = tmp_path / "out"
    tables = sorted(p.parent.name for p in out.glob("*/_delta_log"))
    assert {"runs", "weight_runs", "selected_rows", "stages"} <= set(tables)
    recorded = spark.read.format("delta").load(str(out / "runs")).first()["params"]
    assert json.loads(recorded)["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == \
        "*** (redacted)"
    for name in tables:                      # every row of every table, as text
        rows = spark.read.format("delta").load(str(out / name)).collect()
        assert _found(json.dumps([r.asDict(recursive=True) for r in rows], default=str)) == [], name
    for folder in (out, logs):               # every other file: logs, plots, Delta's JSON logs
        for root, _, names in os.walk(folder):
            for n in names:
                if not n.endswith(".parquet"):
                    with open(os.path.join(root, n), "rb") as f:
                        assert _found(f.read().decode("latin-1")) == [], os.path.join(root, n)
    assert any(logs.iterdir())               # there was a Spark log to search

    show = subprocess.run([sys.executable, "-m", "jobs.cli", "config", "--config", config],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert show.returncode == 0 and _found(show.stdout) == []
    assert "spark.hadoop.fs.s3a.secret.key: '*** (redacted)'" in show.stdout


def test_an_unset_variable_is_named(tmp_path, monkeypatch):
    import pytest

    from jobs.common.errors import InputError
    monkeypatch.delenv("GIO_TEST_SECRET", raising=False)
    with pytest.raises(InputError) as err:
        load_config(_config(tmp_path))
    assert str(err.value) == (
        "spark.conf.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net in "
        f"{str(tmp_path / 'secret.yaml')!r} takes ${{GIO_TEST_SECRET}} from the environment, but "
        "GIO_TEST_SECRET is not set; export it (or write the value).")
