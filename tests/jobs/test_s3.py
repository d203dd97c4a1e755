"""Object stores for real: a run whose inputs and output are on S3 (moto's S3 server on
127.0.0.1, reached through Hadoop's s3a connector, hadoop-aws from Maven Central through Ivy).
A refreshed input at the same path is not reused; an unchanged one is; the plot lands in the
bucket next to the tables."""
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "gio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


def _put_frame(client, key: str, frame: pd.DataFrame, tmp_path) -> None:
    local = tmp_path / os.path.basename(key)
    frame.to_parquet(local)
    client.upload_file(str(local), BUCKET, key)


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _run(config: str) -> str:
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", config],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return re.search(r"run (run-[0-9a-f]+): done", out.stdout).group(1)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_on_s3_reuses_what_is_unchanged_and_not_what_was_refreshed(s3, tmp_path):
    endpoint, client = s3
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, (6, 8))
    pool = centres[rng.integers(0, 6, 400)] + rng.normal(0, 1, (400, 8))
    target = centres[rng.choice([0, 1], 60)] + rng.normal(0, 1, (60, 8))
    frames = {name: pd.DataFrame({"id": [f"{name}{i}" for i in range(len(x))], "vec": list(x)})
              for name, x in (("pool", pool), ("target", target))}
    for name, frame in frames.items():
        _put_frame(client, f"in/{name}.parquet", frame, tmp_path)
    conf = {"spark.jars.packages": "org.apache.hadoop:hadoop-aws:3.4.1",
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
            "spark.hadoop.fs.s3a.access.key": "testing",
            "spark.hadoop.fs.s3a.secret.key": "testing",
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false"}
    side = {"format": "parquet", "embedding_column": "vec", "id_column": "id",
            "text_column": None}
    config = {"spark": {"master": "local[2]", "conf": conf},
              "pool": {**side, "path": f"s3a://{BUCKET}/in/pool.parquet"},
              "target": {**side, "path": f"s3a://{BUCKET}/in/target.parquet"},
              "quantize": {"pool_k": 24, "target_k": 6}, "select": {"k": 3},
              "output": {"path": f"s3a://{BUCKET}/out"}}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(config))

    first = _run(str(path))
    keys = _keys(client, "out/")
    assert any(k.startswith("out/selected_rows/_delta_log/") for k in keys)
    assert f"out/plots/{first}_kl_curve.png" in keys        # through Hadoop's file system
    assert not os.path.exists(os.path.join(ROOT, "s3a:"))

    # The pool refreshed in place (same key, other rows): a new run, not the old embeddings.
    _put_frame(client, "in/pool.parquet", frames["pool"].iloc[:-10], tmp_path)
    second = _run(str(path))
    assert second != first

    # Unchanged since: everything is reused, nothing is committed.
    logs = [k for k in _keys(client, "out/") if "/_delta_log/" in k and k.endswith(".json")]
    assert _run(str(path)) == second
    assert [k for k in _keys(client, "out/") if "/_delta_log/" in k
            and k.endswith(".json")] == logs
