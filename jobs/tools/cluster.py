"""The command lines of a Spark standalone cluster running gio-spark, in one place.

The cluster test starts exactly these commands on 127.0.0.1, and ``docker/docker-compose.yml``
runs exactly these commands in its containers (a test compares them), so what is tested is what
ships.
"""
from __future__ import annotations

import argparse

from jobs.io import tables
from jobs.io.session import build_session

SUBMIT_PROPERTIES = "conf/spark-defaults.conf"


def master_command(host: str, port: int = 7077, webui_port: int = 8080) -> list[str]:
    return ["spark-class", "org.apache.spark.deploy.master.Master", "--host", host,
            "--port", str(port), "--webui-port", str(webui_port)]


def worker_command(master_url: str, host: str, cores: int = 1, memory: str = "2g",
                   webui_port: int = 8081) -> list[str]:
    return ["spark-class", "org.apache.spark.deploy.worker.Worker", master_url, "--host", host,
            "--cores", str(cores), "--memory", memory, "--webui-port", str(webui_port)]


def submit_command(master_url: str, config: str, overrides: list[str] | None = None,
                   py_files: str | None = None, conf: dict | None = None,
                   command: tuple[str, ...] = ("run",)) -> list[str]:
    """``spark-submit`` of a gio-spark command (the whole pipeline by default; or, say,
    ``("datamodels", "work")``) against ``master_url``."""
    cmd = ["spark-submit", "--master", master_url, "--properties-file", SUBMIT_PROPERTIES]
    for key, value in (conf or {}).items():
        cmd += ["--conf", f"{key}={value}"]
    if py_files:
        cmd += ["--py-files", py_files]
    cmd += ["jobs/submit.py", *command, "--config", config]
    for item in overrides or []:
        cmd += ["--set", item]
    return cmd


def compare_outputs(spark, first: str, second: str) -> tuple[list[str], dict]:
    """Compares two output folders' runs: the same run ids, and for each the same selection
    (rank, cluster, KL to 4 decimals) and the same selected rows (every column).
    Returns ``(differences, {run_id: (clusters, rows)})``; no differences means equal."""
    from pyspark.sql import functions as F


    def runs(out):
        return {r["run_id"] for r in tables.read_table(spark, out, "runs").select("run_id")
                .collect()}

    def selection(out, run_id):
        return [(r["rank"], r["cluster_id"], round(r["kl_after"], 4)) for r in
                tables.read_key(spark, out, "selection", run_id).orderBy("rank").collect()]

    def rows(out, run_id):
        frame = tables.read_table(spark, out, "selected_rows").where(F.col("run_id") == run_id)
        return sorted(tuple(str(v) for v in r) for r in
                      frame.select(*sorted(frame.columns)).collect())

    differences, same = [], {}
    a, b = runs(first), runs(second)
    if a != b:
        differences.append(f"run ids differ: {sorted(a)} in {first}, {sorted(b)} in {second}")
    for run_id in sorted(a & b):
        sel, rws = selection(first, run_id), rows(first, run_id)
        if sel != selection(second, run_id):
            differences.append(f"run {run_id}: the selections differ")
        elif rws != rows(second, run_id):
            differences.append(f"run {run_id}: the selected rows differ")
        else:
            same[run_id] = (len(sel), len(rws))
    return differences, same


def main(argv=None) -> int:
    """``python -m jobs.tools.cluster compare OUT_A OUT_B``: exit 0 when both output folders hold the
    same runs with equal selections and selected rows (docker/compose_demo.sh runs it)."""

    p = argparse.ArgumentParser(prog="python -m jobs.tools.cluster")
    p.add_argument("action", choices=["compare"])
    p.add_argument("first")
    p.add_argument("second")
    args = p.parse_args(argv)
    spark = build_session("gio-spark-compare", "local[1]", quiet=True)
    try:
        differences, same = compare_outputs(spark, args.first, args.second)
    finally:
        spark.stop()
    for line in differences:
        print(f"compare: {line}")
    for run_id, (clusters, rows) in same.items():
        print(f"compare: run {run_id}: the same {clusters} clusters and {rows} rows in "
              f"{args.first} and {args.second}")
    return 1 if differences or not same else 0


if __name__ == "__main__":
    raise SystemExit(main())
