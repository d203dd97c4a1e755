"""A full disk under output.path, for real: a small tmpfs mounted there fills up mid-run. The run
ends with one line naming the cause, the location and its free space (no traceback), and after
the tmpfs is grown the re-run resumes to the rows a clean run selects."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, out):
    sets = [f"pool.path={tmp_path / 'pool.parquet'}", f"target.path={tmp_path / 'target.parquet'}",
            f"output.path={out}", "spark.master=local[2]", "quantize.pool_k=24",
            "quantize.target_k=6", "select.k=3"]
    for side in ("pool", "target"):
        sets += [f"{side}.embedding_column=vec", f"{side}.id_column=id",
                 f"{side}.text_column=null", f"{side}.format=parquet"]
    return subprocess.run([sys.executable, "-m", "jobs.cli", "run"]
                          + [a for s in sets for a in ("--set", s)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def _rows(spark, out):
    return sorted((r["id"], r["cluster_id"], r["rank"]) for r in spark.read.format("delta")
                  .load(os.path.join(out, "selected_rows")).select("id", "cluster_id", "rank")
                  .collect())


@pytest.mark.slow
@pytest.mark.e2e
def test_a_full_disk_is_named_and_the_rerun_resumes_to_the_clean_rows(spark, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 5, (6, 8))
    for name, rows, comps in (("pool", 400, range(6)), ("target", 60, (0, 1))):
        x = centres[rng.choice(list(comps), rows)] + rng.normal(0, 1, (rows, 8))
        pd.DataFrame({"id": [f"{name}{i}" for i in range(rows)], "vec": list(x)}).to_parquet(
            tmp_path / f"{name}.parquet")
    out = tmp_path / "small"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(out)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        full = _run(tmp_path, str(out))
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith(f"gio-spark: failed: no space left on device: a write under "
                               f"output.path {str(out)!r} (") and "KiB free there now" in last
        assert "Traceback" not in full.stderr
        subprocess.run(["mount", "-o", "remount,size=256m", str(out)], check=True)
        again = _run(tmp_path, str(out))
        assert again.returncode == 0, again.stderr[-3000:]
        clean = _run(tmp_path, str(tmp_path / "clean"))
        assert clean.returncode == 0, clean.stderr[-3000:]
        assert _rows(spark, str(out)) == _rows(spark, str(tmp_path / "clean"))
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)
