"""What a cluster needs from this project, built by one command.

    gio-spark package [--out dist] [--env]

* ``dist/gio_spark.zip``: the ``jobs`` and ``gio_core`` packages for ``--py-files`` (Spark puts
  zips on the executors' ``sys.path``; it does not install wheels passed there);
* with ``--env``, ``dist/gio_spark_env.tar.gz``: a relocatable Python environment with the
  project and its native dependencies (JAX, torch, pyarrow...), packed by ``venv-pack`` from a
  fresh non-editable virtual environment, for ``--archives dist/gio_spark_env.tar.gz#environment``
  with ``PYSPARK_PYTHON=./environment/bin/python``. It is large (torch's wheels are).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("gio_core", "jobs")


def build_zip(out_dir: str) -> str:
    """Writes ``<out_dir>/gio_spark.zip`` with every ``.py`` file of the two packages."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gio_spark.zip")
    tmp = path + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for root, dirs, files in os.walk(os.path.join(ROOT, package)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith(".py"):
                        full = os.path.join(root, name)
                        zf.write(full, os.path.relpath(full, ROOT))
    os.replace(tmp, path)          # never leave a half-written zip behind
    return path


def build_env(out_dir: str, python: str = sys.executable) -> str:
    """Packs a fresh environment with the project installed into ``gio_spark_env.tar.gz``."""
    env_dir = os.path.join(out_dir, "pack-env")
    shutil.rmtree(env_dir, ignore_errors=True)
    subprocess.run([python, "-m", "venv", env_dir], check=True)
    pip = os.path.join(env_dir, "bin", "pip")
    subprocess.run([pip, "install", "--quiet", ROOT, "venv-pack"], check=True)
    target = os.path.join(out_dir, "gio_spark_env.tar.gz")
    subprocess.run([os.path.join(env_dir, "bin", "venv-pack"), "-p", env_dir, "-o", target,
                    "--force"], check=True)
    shutil.rmtree(env_dir, ignore_errors=True)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gio-spark package", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="dist", help="folder to write into (default dist)")
    parser.add_argument("--env", action="store_true", help="also pack the Python environment")
    args = parser.parse_args(argv)
    print(build_zip(args.out))
    if args.env:
        print(build_env(args.out))
    return 0
