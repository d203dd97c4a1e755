"""Datamodels workers: models trained per second, `gio-spark datamodels work` against the ways
the source runs its workers, in one run, on the digits example (conf/datamodels.yaml's main:
a logistic regression on a random half of 200 digits, margins on 100 targets).

* ``loop``: one Python process calling ``main(index=i, logdir=...)`` for each index in turn,
  keeping the arrays in memory (no store, no commits): the floor a single process sets;
* ``pool``: the same calls over a ``multiprocessing`` pool of ``--cores`` processes (GNU
  parallel with ``-j cores`` over long-lived workers; still no store);
* ``process_per_index``: what the source's GNU parallel / SLURM scripts do, a fresh Python
  process per index (``python -c 'main(index=i)'``), ``--cores`` at a time, timed on
  ``--process-indices`` indices;

  both with one BLAS/OpenMP thread per process (``OMP_NUM_THREADS=1`` and the like), as
  PySpark gives its Python workers (one per task CPU): without it the processes oversubscribe
  the cores and run several times slower;
* ``spark_ipt{n}``: ``jobs.datamodels.actions.run_work`` on ``local[cores]``, ``n`` indices per Spark
  task, each wave of ``commit_every`` indices committed to a fresh Delta store by MERGE, the
  SparkSession started beforehand (its start-up is reported separately).

Each row: models per second and the ratio to ``loop`` measured in the same run. Writes JSON
lines to stdout and, with ``--out``, appends them to a file.

    python bench/datamodels_workers.py [--models 400] [--cores 2] [--out F]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARGS = {"train_size": 200, "targets": 100, "alpha": 0.5, "seed": 0}


def _one(index: int):
    from jobs.datamodels.example import main
    return main(index=index, logdir=tempfile.gettempdir(), **ARGS)


def loop(indices) -> float:
    start = time.perf_counter()
    out = [_one(i) for i in indices]
    assert len(out) == len(indices)
    return time.perf_counter() - start


ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def pool(indices, cores: int) -> float:
    ctx = mp.get_context("spawn")
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)                    # the spawned workers inherit it
    try:
        workers = ctx.Pool(cores)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with workers as p:
        p.map(_one, [indices[0]] * cores)           # start-up and imports, not timed
        start = time.perf_counter()
        out = p.map(_one, indices, chunksize=1)
        seconds = time.perf_counter() - start
    assert len(out) == len(indices)
    return seconds


def process_per_index(indices, cores: int) -> float:
    code = ("import sys; sys.path.insert(0, %r); from jobs.datamodels.example import main; "
            "main(index=int(sys.argv[1]), logdir='/tmp', **%r)" % (ROOT, ARGS))
    start = time.perf_counter()
    queue, running = list(indices), []
    while queue or running:
        while queue and len(running) < cores:
            running.append(subprocess.Popen([sys.executable, "-c", code, str(queue.pop(0))],
                                            env=dict(os.environ, **ONE_THREAD)))
        running[0].wait()
        if running[0].returncode != 0:
            raise RuntimeError(f"index run failed: {running[0].args}")
        running.pop(0)
    return time.perf_counter() - start


def spark_work(models: int, cores: int, per_task: int, commit_every: int, tmp: str, spark):
    from jobs.datamodels import actions as D
    from jobs.config import load_config
    out = os.path.join(tmp, f"out_ipt{per_task}")
    cfg = load_config(os.path.join(ROOT, "conf", "datamodels.yaml"),
                      [f"output.path={out}", f"datamodels.num_models={models}",
                       f"datamodels.indices_per_task={per_task}",
                       f"datamodels.commit_every={commit_every}",
                       f"spark.master=local[{cores}]"], "datamodels-work")
    report = D.run_work(spark, cfg)
    assert report.completed == models and not report.failed, report
    done = D.completed_indices(spark, D.open_store(spark, D.store_path(cfg)))
    assert len(done) == models
    return report.seconds


def main() -> None:
    from bench._common import emit
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=400)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--process-indices", type=int, default=40)
    p.add_argument("--per-task", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--commit-every", type=int, default=100)
    p.add_argument("--out")
    args = p.parse_args()
    indices = list(range(args.models))
    _one(0)                                           # imports and the digits' first load
    rows = []
    base = loop(indices)
    rows.append({"path": "loop", "models": args.models, "seconds": round(base, 2)})
    rows.append({"path": "pool", "models": args.models,
                 "seconds": round(pool(indices, args.cores), 2)})
    n = min(args.process_indices, args.models)
    rows.append({"path": "process_per_index", "models": n,
                 "seconds": round(process_per_index(indices[:n], args.cores), 2)})

    from jobs.io.session import build_session
    tmp = tempfile.mkdtemp(prefix="dm-workers-")
    start = time.perf_counter()
    spark = build_session("bench-datamodels-workers", f"local[{args.cores}]",
                          {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
    spark.range(1).count()
    session_s = time.perf_counter() - start
    try:
        for per_task in args.per_task:
            seconds = spark_work(args.models, args.cores, per_task, args.commit_every, tmp,
                                 spark)
            rows.append({"path": f"spark_ipt{per_task}", "models": args.models,
                         "seconds": round(seconds, 2), "commit_every": args.commit_every,
                         "session_start_s": round(session_s, 1)})
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    base_rate = args.models / base
    for row in rows:
        row["models_per_s"] = round(row["models"] / row["seconds"], 2)
        row["vs_loop"] = round(row["models_per_s"] / base_rate, 2)
        row["cores"] = args.cores
        emit(row, args.out)


if __name__ == "__main__":
    main()
