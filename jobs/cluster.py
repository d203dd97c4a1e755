"""The command lines of a Spark standalone cluster running gio-spark, in one place.

The cluster test starts exactly these commands on 127.0.0.1, and ``docker/docker-compose.yml``
runs exactly these commands in its containers (a test compares them), so what is tested is what
ships.
"""
from __future__ import annotations

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
