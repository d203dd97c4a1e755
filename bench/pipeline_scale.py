"""How the whole pipeline's cost grows with the pool's rows: ``gio-spark run`` on precomputed
vectors at several pool sizes (default 100,000, 1,000,000, 3,000,000 and 10,000,000 rows), each
stage's seconds, the driver's peak memory, the selection's MMD² to held-out rows, and the growth
exponent of each time fitted over the sizes (``seconds ~ rows^b``, least squares on logs), over
every size and over the sizes from a million rows up (where ``pool_k: auto`` stops growing).

Each size's pool (64-D unit vectors around 50 directions, ``bench._common.clustered``) is
written once as Parquet under ``--work`` and kept for the next run; the target (2,000 rows) and
the held-out rows (2,000) come from five of the directions. Every run is a new process on a new
output (``spark.master=local[C]``, the JAX cache of the runs before it), with ``pool_k: auto``
and a row budget of ``--share`` of the pool (default 5%). The driver's memory is sampled every
0.2 s: its Python process and its JVM, apart and together. ``--before-rows`` sizes also run
with the clusters the earlier rule gave (``4 * sqrt(rows)`` at every size, set as
``quantize.pool_k``), for the rule change's cost and quality at the same rows. Each run's line
is written as soon as it ends.

    python bench/pipeline_scale.py [--rows 100000 1000000 3000000 10000000]
                                   [--before-rows 3000000] [--share 0.05] [--cores 2]
                                   [--work /tmp/gio-pipeline-scale]
                                   [--out bench/results/pipeline_scale_cpu_2cores.jsonl]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import clustered, emit  # noqa: E402

DIM = 64
COMPONENTS = [3, 11, 19, 27, 35]
WEIGHTS = [0.4, 0.25, 0.15, 0.1, 0.1]
STAGE_LINES = {          # the stage, and the line that ends it (its own figure where it has one)
    "checks": re.compile(r"\[gio-spark\] target: "),
    "select_start": re.compile(r"\[gio-spark\] select: \d+ pool and \d+ target centroids"),
    "quantize": re.compile(r"\[gio-spark\] quantize: .* in (.+)$"),
    "select": re.compile(r"\[gio-spark\] select: \d+ clusters chosen.* in (.+)$"),
    "explode": re.compile(r"\[gio-spark\] explode: run .*\((.+)\)$"),
}


def seconds(text: str) -> float:
    """``took()``'s text (``2.1 s``, ``1 min 42 s``, ``1 h 2 min``) in seconds."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+) (h|min|s)\b", text):
        total += float(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def write_inputs(work: str, rows: int) -> str:
    folder = os.path.join(work, f"pool-{rows}")
    if os.path.exists(os.path.join(folder, "done")):
        return folder
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(folder, exist_ok=True)
    weights = np.zeros(50)
    weights[COMPONENTS] = WEIGHTS
    step = 250_000
    writer = None
    for start in range(0, rows, step):               # in pieces: 10M rows do not fit twice
        n = min(step, rows - start)
        x, comp = clustered(n, DIM, seed=1000 + start // step)
        table = pa.table({"id": pa.array(np.arange(start, start + n)),
                          "component": pa.array(comp),
                          "vec": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
                          .cast(pa.list_(pa.float32()))})
        if writer is None:
            writer = pq.ParquetWriter(os.path.join(folder, "pool.parquet"), table.schema)
        writer.write_table(table, row_group_size=50_000)
    writer.close()
    for name, seed in (("target", 2), ("heldout", 3)):
        x, _ = clustered(2_000, DIM, seed=seed, weights=weights)
        pd.DataFrame({"id": np.arange(len(x)), "vec": list(x)}).to_parquet(
            os.path.join(folder, f"{name}.parquet"))
    open(os.path.join(folder, "done"), "w").close()
    return folder


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_java(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "java"
    except OSError:
        return False


def rule_before(rows: int, share: float) -> int:
    """The clusters ``pool_k: auto`` gave before it stopped growing at a million rows:
    ``4 * sqrt(rows)`` at every size, at least 100 clusters' rows in the budget, between 50
    and 20,000."""
    k = max(4.0 * np.sqrt(rows), 100 / share)
    return int(min(max(round(k), 50), 20_000, rows))


def run(folder: str, out: str, share: float, cores: int, pool_k: int | str = "auto") -> dict:
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", str(ROOT / "conf" / "demo.yaml"),
            "--set", f"output.path={out}", "--set", f"spark.master=local[{cores}]",
            "--set", f"quantize.pool_k={pool_k}", "--set", "quantize.target_k=200",
            "--set", f"select.max_fraction={share}",
            "--set", "spark.conf.spark.driver.memory=6g"]
    for side in ("pool", "target"):
        for key, value in (("format", "parquet"), ("path", f"{folder}/{side}.parquet"),
                           ("id_column", "id"), ("embedding_column", "vec")):
            argv += ["--set", f"{side}.{key}={value}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                # like for like with trees before it
                                                GIO_SPARK_JVM_CACHE="off"))
    peaks = {"python": 0, "jvm": 0, "both": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            py = rss_kib(proc.pid)
            jvm = sum(rss_kib(p) for p in descendants(proc.pid) if is_java(p))
            peaks.update(python=max(peaks["python"], py), jvm=max(peaks["jvm"], jvm),
                         both=max(peaks["both"], py + jvm))
            done.wait(0.2)
    threading.Thread(target=sample, daemon=True).start()
    found: dict = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        now = time.perf_counter() - start
        for stage, pattern in STAGE_LINES.items():
            m = pattern.search(line.rstrip())
            if m:
                if m.groups():
                    found[stage] = seconds(m.group(1))
                found[f"{stage}_at"] = round(now, 2)
    code = proc.wait()
    done.set()
    if code != 0:
        raise RuntimeError("".join(lines[-40:]))
    found["wall"] = round(time.perf_counter() - start, 2)
    found["checks"] = found.get("checks_at")        # from the start: JVM, reading, checking
    # Whole stages, from line to line: quantize's own figure is its K-means; the assignment
    # pass over every row runs as its assignments are written, after that figure's line.
    if found.get("select_start_at") and found.get("checks_at"):
        found["quantize_whole"] = round(found["select_start_at"] - found["checks_at"], 2)
    if found.get("explode_at") and found.get("select_start_at"):
        found["select_explode_whole"] = round(found["explode_at"] - found["select_start_at"], 2)
    found["peak_mib"] = {k: round(v / 1024, 1) for k, v in peaks.items()}
    found["pool_k"] = next((int(m.group(1)) for m in
                            (re.search(r"quantize: (\d+) pool clusters", x) for x in lines)
                            if m), None)
    return found


def quality(spark, folder: str, out: str) -> dict:
    import pandas as pd
    from gio_core import mmd_rbf
    from pyspark.sql import functions as F
    rows = spark.read.format("delta").load(os.path.join(out, "selected_rows"))
    counts = rows.groupBy(F.col("component").isin(COMPONENTS).alias("target")).count() \
        .toPandas()
    n = int(counts["count"].sum())
    # the MMD on 4,000 of the rows, a sample drawn in Spark: 10M rows' selection is 500,000
    picked = rows.sample(fraction=min(1.0, 8_000 / max(n, 1)), seed=0).select("vec").toPandas()
    held = np.stack(pd.read_parquet(os.path.join(folder, "heldout.parquet"))["vec"])
    x = np.stack(picked["vec"].to_numpy()).astype(np.float32)
    rng = np.random.default_rng(0)
    sub = x[rng.choice(len(x), size=min(len(x), 4_000), replace=False)]
    inside = int(counts.loc[counts["target"], "count"].sum())
    return {"selected_rows": n, "mmd_heldout": float(mmd_rbf(sub, held)),
            "share_target_components": inside / max(n, 1)}


def exponent(sizes, values) -> float | None:
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v]
    if len(pairs) < 2:
        return None
    logs = np.log(np.array(pairs, dtype=float))
    return round(float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0]), 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+",
                        default=[100_000, 1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--before-rows", type=int, nargs="*", default=[3_000_000])
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                        "gio-pipeline-scale"))
    parser.add_argument("--out")
    args = parser.parse_args()
    from jobs.io.session import build_session

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip()
    spark = build_session("pipeline-scale", "local[1]", {"spark.driver.memory": "2g"}, quiet=True)
    plan = [(rows, "auto") for rows in args.rows]
    plan += [(rows, "before") for rows in args.before_rows]
    results = []
    for rows, rule in plan:
        folder = write_inputs(args.work, rows)
        out = tempfile.mkdtemp(prefix=f"gio-scale-{rows}-", dir=args.work)
        pool_k = "auto" if rule == "auto" else rule_before(rows, args.share)
        found = run(folder, out, args.share, args.cores, pool_k)
        found.update(quality(spark, folder, out))
        emit({"bench": "pipeline_scale", "date": time.strftime("%Y-%m-%d"), "commit": head,
              "rows": rows, "dim": DIM, "cores": args.cores, "share": args.share,
              "rule": rule, **found}, args.out)
        if rule == "auto":
            results.append((rows, found))
        shutil.rmtree(out, ignore_errors=True)      # 10M rows' tables: gigabytes
    sizes = [r[0] for r in results]

    def fitted(chosen):
        got = [r for r in results if r[0] in chosen]
        return {**{k: exponent(chosen, [f.get(k) for _, f in got])
                   for k in ("wall", "checks", "quantize_whole", "quantize", "select_explode_whole",
                             "select", "explode")},
                "peak_both": exponent(chosen, [f["peak_mib"]["both"] for _, f in got]),
                "peak_python": exponent(chosen, [f["peak_mib"]["python"] for _, f in got])}
    large = [n for n in sizes if n >= 1_000_000]
    emit({"bench": "pipeline_scale", "summary": "exponent b of seconds ~ rows^b",
          "rows": sizes, **fitted(sizes), "from_a_million": {"rows": large, **fitted(large)}},
         args.out)


if __name__ == "__main__":
    main()
