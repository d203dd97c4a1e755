"""Static checks of docker/: the files are parsed and compared with the commands the cluster test
runs (jobs/tools/cluster.py). Building and running them needs a Docker engine: `make compose-demo`
(docker/compose_demo.sh) does that, outside make test; the README records its run."""
import pathlib

import pytest
import yaml

from jobs.tools import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())


def test_the_dockerfiles_build_checks_import():
    """The build's warm-up lines import what exists (a renamed function once broke the build
    while the static checks passed)."""
    import re
    import subprocess
    import sys
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for code in re.findall(r'python -c "([^"]+)"', text):
        imports = ";".join(part for part in code.split(";") if part.strip().startswith("from "))
        run = subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True)
        assert run.returncode == 0, (imports, run.stderr[-1000:])


def test_compose_services_and_volumes():
    services = COMPOSE["services"]
    assert set(services) == {"local", "spark-master", "spark-worker-1", "spark-worker-2", "submit"}
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        assert "../out:/out" in svc["volumes"] and "../data:/data" in svc["volumes"], name
    assert set(services["submit"]["depends_on"]) == {"spark-master", "spark-worker-1",
                                                     "spark-worker-2"}


def test_compose_commands_are_the_cluster_test_commands():
    services = COMPOSE["services"]
    url = "spark://spark-master:7077"
    assert services["spark-master"]["command"] == cluster.master_command("spark-master", 7077, 8080)
    for i in (1, 2):
        assert services[f"spark-worker-{i}"]["command"] == cluster.worker_command(
            url, f"spark-worker-{i}", cores=2, memory="4g", webui_port=8081)
    assert services["submit"]["command"] == cluster.submit_command(
        url, "conf/demo.yaml", ["spark.master=null", "output.path=/out/compose-cluster"])
    assert services["local"]["command"][-1] == "output.path=/out/compose-local"
    assert COMPOSE["x-gio"]["build"]["args"]["BASE"] == \
        "${GIO_SPARK_BASE:-python:3.11-slim-bookworm}"


def test_compose_demo_script_compares_what_the_services_write():
    """docker/compose_demo.sh runs the services above and compares the folders they write."""
    import subprocess
    script = ROOT / "docker" / "compose_demo.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "python -m jobs.tools.cluster compare /out/compose-local /out/compose-cluster" in text
    for step in ("run --rm local", "up -d spark-master spark-worker-1 spark-worker-2",
                 "run --rm submit", "docker/base.sh"):
        assert step in text, step


def test_dockerfile_bakes_python_java_jars_and_model():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert text.startswith("#") and "ARG BASE=python:3.11-slim-bookworm\nFROM ${BASE}" in text
    assert "openjdk-17-jre-headless" in text
    assert "build_session('warm-up', 'local[1]')" in text          # Delta jars into Ivy's cache
    assert "from jobs.io.encoders import model_dimension; assert model_dimension('bundled') == 384" \
        in text                                                     # the model, loaded offline
    for path in ("setup.cfg", "gio_core", "jobs", "conf"):
        assert f"COPY {path}" in text


def test_docker_compose_validates_the_file(tmp_path):
    """Debian's docker-compose parses and validates the file without an engine (make test
    installs it where apt-get may run)."""
    import shutil
    import subprocess
    import pytest
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    (ROOT / "data").mkdir(exist_ok=True)
    run = subprocess.run([exe, "-f", str(ROOT / "docker" / "docker-compose.yml"), "config"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load(run.stdout)
    assert rendered["services"]["submit"]["command"][:3] == ["spark-submit", "--master",
                                                            "spark://spark-master:7077"]


@pytest.mark.parametrize("mounted", [False, True])
def test_base_script_cleans_up_without_failing(tmp_path, mounted):
    """docker/base.sh's EXIT clean-up, run as the script runs it (bash, set -euo pipefail):
    with proc still mounted in the root (a failed CA step) and with it unmounted already (the
    normal path, where a second umount once ended a finished build with exit 32)."""
    import os
    import subprocess
    text = (ROOT / "docker" / "base.sh").read_text()
    start = text.index("cleanup() {")
    function = text[start:text.index("\n}\n", start) + 3]
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    if mounted:
        if os.geteuid() != 0:
            pytest.skip("mounting proc needs root")
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    script = f"set -euo pipefail\nROOT={root}\n{function}trap cleanup EXIT\necho built\n"
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert (run.returncode, run.stdout.strip()) == (0, "built"), run.stderr
    assert not root.exists()
