import subprocess
import sys
import zipfile

from jobs.tools.package import build_zip


def test_zip_carries_both_packages_and_imports_from_itself(tmp_path):
    path = build_zip(str(tmp_path))
    names = zipfile.ZipFile(path).namelist()
    assert "gio_core/__init__.py" in names and "jobs/pipeline.py" in names
    assert not any("__pycache__" in n or not n.endswith(".py") for n in names)
    # Importable from the zip first on sys.path, as executors load --py-files (the assertion
    # checks the modules came from the zip, not from the editable install).
    code = (f"import sys; sys.path.insert(0, {path!r}); import gio_core._selection, jobs.tools.cluster; "
            f"assert gio_core._selection.__file__.startswith({path!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_build_gives_an_sdist_and_a_wheel_that_install_and_run(tmp_path):
    """`python -m build` on the tracked files (a clean clone's): an sdist with the configs and
    container files, a wheel with the two packages only; each installed into a fresh venv (its
    dependencies borrowed from this environment through a .pth file, so nothing is downloaded)
    runs the CLI from the installed copy, with the version of jobs.__version__."""
    import os
    import tarfile

    import jobs
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = tmp_path / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.decode().split("\0")
    with tarfile.open(tmp_path / "src.tar", "w") as tar:
        for name in filter(None, files):
            if os.path.exists(os.path.join(root, name)):
                tar.add(os.path.join(root, name), arcname=name)
    with tarfile.open(tmp_path / "src.tar") as tar:
        tar.extractall(src, filter="data")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                            str(dist), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    version = jobs.__version__
    sdist, wheel = dist / f"gio_spark-{version}.tar.gz", dist / f"gio_spark-{version}-py3-none-any.whl"
    assert sdist.exists() and wheel.exists(), os.listdir(dist)
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    for name in ("conf/demo.yaml", "conf/spark-defaults.conf", "conf/log4j2.properties",
                 "docker/Dockerfile",
                 "docker/docker-compose.yml", "Makefile", "jobs/cli.py", "gio_core/_selection.py",
                 "tests/jobs/test_package.py"):
        assert name in members, name
    packages = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert packages == {"jobs", "gio_core", f"gio_spark-{version}.dist-info"}, packages

    deps = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}    # the installed copy only
    for artifact in (wheel, sdist):
        venv = tmp_path / f"venv-{artifact.suffix.strip('.')}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        (site / "zz_gio_spark_deps.pth").write_text(deps + "\n")
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(artifact)],
            capture_output=True, text=True)
        assert installed.returncode == 0, installed.stderr[-2000:]
        exe = str(venv / "bin" / "gio-spark")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=tmp_path,
                             env=env)
        assert out.stdout.strip() == f"gio-spark {version}", out.stdout + out.stderr
        where = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import jobs.cli, gio_core; print(jobs.cli.__file__); "
                                "print(gio_core.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
        assert where.returncode == 0, where.stderr
        assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
        shown = subprocess.run([exe, "config", "--show", "--config",
                                os.path.join(root, "conf", "demo.yaml")],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
        assert shown.returncode == 0 and "pool_k: 300" in shown.stdout, shown.stderr
