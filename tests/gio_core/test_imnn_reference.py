"""imnn 0.3.2's own test files, run against ``gio_core.imnn`` with only their import lines
changed (``make test-references``).

The test files come from the reference's published source package (downloaded from PyPI
once, its SHA-256 checked). The helpers they import (``test.defaults`` and the rest) are not
published; ours, in ``tests/gio_core/imnn_reference/``, make the same calls with the same
expectations. The run must have no failure: a message in other words than the reference's is
an expected failure that names both (counted and listed in docs/compatibility.md), and so are
the behaviours kept on purpose, listed in ``harness_conftest.py``.

Run it alone (it prints the counts and the kinds of wording differences):
``python -m pytest tests/gio_core/test_imnn_reference.py -m reference -s``; about 8 minutes on
2 cores with TensorFlow, of which 6.5 for the class files. ``GIO_SPARK_IMNN_SAMPLE=1`` runs
all 262,144 cases of the ``IMNN(...)`` selector's file instead of one in 16.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.reference

SDIST = "IMNN-0.3.2.tar.gz"
SHA256 = "11d4485f6785c9c107179b4e346169d8dde4265e0fedb96ba5928fc4d6ea82f6"
HARNESS = Path(__file__).parent / "imnn_reference"
# The reference's test files that import TensorFlow (for tf.data or Keras); they run only
# where TensorFlow imports.
NEEDS_TENSORFLOW = {"aggregated_gradient_imnn_test.py", "aggregated_numerical_gradient_imnn_test.py",
                    "dataset_gradient_imnn_test.py", "dataset_numerical_gradient_imnn_test.py",
                    "imnn_test.py"}
IMPORT = re.compile(r"^from imnn(?:\.imnn(?:\._imnn)?)? import ", re.M)


def sdist() -> Path:
    """The reference's source package, downloaded once into gio-spark's cache."""
    folder = Path.home() / ".cache" / "gio-spark" / "references"
    path = folder / SDIST
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", "imnn==0.3.2", "-d", str(folder)], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SHA256, f"{path} has SHA-256 {digest}, not the published {SHA256}"
    return path


def assemble(folder: Path, with_tensorflow: bool) -> list[str]:
    """Write the reference's test files (import lines changed) and our helpers into
    ``folder``; return the test files' names."""
    names = []
    with tarfile.open(sdist()) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not (member.name.startswith("IMNN-0.3.2/imnn/imnn/") and name.endswith("_test.py")):
                continue
            if name in NEEDS_TENSORFLOW and not with_tensorflow:
                continue
            text = archive.extractfile(member).read().decode()
            changed = IMPORT.sub("from gio_core.imnn import ", text)
            # Only the import lines differ.
            before, after = text.splitlines(), changed.splitlines()
            assert len(before) == len(after)
            assert all(a == b or IMPORT.match(a) for a, b in zip(before, after, strict=True)), name
            (folder / name).write_text(changed)
            names.append(name)
    helpers = folder / "test"
    helpers.mkdir()
    for source in HARNESS.glob("*.py"):
        if source.name == "harness_conftest.py":
            shutil.copy(source, folder / "conftest.py")
        else:
            shutil.copy(source, helpers / source.name)
    (folder / "pytest.ini").write_text("[pytest]\npython_files = *_test.py\n")
    return sorted(names)


def outcomes(report: Path) -> tuple[Counter, list[str], list[str]]:
    """Counts by outcome, the wording differences and the failures of a JUnit report."""
    counts: Counter = Counter()
    wording, failures = [], []
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            counts["failed"] += 1
            failures.append(f"{test_id}: {failed.get('message', '')[:300]}")
        elif skipped is not None and skipped.get("type") == "pytest.xfail":
            reason = skipped.get("message", "")
            kind = "deliberate" if "deliberate:" in reason else "wording"
            counts[kind] += 1
            if kind == "wording":
                wording.append(reason)
        elif skipped is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, wording, failures


def wording_kinds(wording: list[str]) -> Counter:
    """The wording differences by the form of the reference's message (names, types and
    numbers blanked)."""
    kinds: Counter = Counter()
    for reason in wording:
        found = re.search(r"reference /(.*?)/ ;", reason) or re.search(
            r'Expected regex: ["\'](.*?)["\'] ;', reason)
        text = (found.group(1) if found else reason).replace("\\", "")
        text = re.sub(r"`[^`]*`", "`…`", text)
        text = re.sub(r"<class '[^']*'>", "<class …>", text)
        kinds[re.sub(r"\d+", "N", text)[:70]] += 1
    return kinds


def run(folder: Path, names: list[str], report: Path, *options: str):
    environment = {**os.environ, "PYTHONPATH": str(folder), "JAX_PLATFORMS": "cpu",
                   "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *options,
         f"--junitxml={report}", "-o", "junit_family=xunit1", *names],
        cwd=folder, env=environment, capture_output=True, text=True)


def test_the_reference_test_files_pass_against_gio_core_imnn(tmp_path, monkeypatch):
    with_tensorflow = importlib.util.find_spec("tensorflow") is not None
    folder = tmp_path / "imnn"
    folder.mkdir()
    names = assemble(folder, with_tensorflow)
    # Each class's file on one worker (its stored results are per file); the selector's
    # 262,144 cases spread over both, one in GIO_SPARK_IMNN_SAMPLE of them (16 unless set).
    monkeypatch.setenv("GIO_SPARK_IMNN_SAMPLE", os.environ.get("GIO_SPARK_IMNN_SAMPLE", "16"))
    classes = [n for n in names if n != "imnn_test.py"]
    runs = [run(folder, classes, tmp_path / "classes.xml", "--dist", "loadfile")]
    if "imnn_test.py" in names:
        runs.append(run(folder, ["imnn_test.py"], tmp_path / "selector.xml"))
    counts, wording, failures = Counter(), [], []
    for result, report in zip(runs, ("classes.xml", "selector.xml"), strict=False):
        assert (tmp_path / report).is_file(), result.stdout[-3000:] + result.stderr[-3000:]
        c, w, f = outcomes(tmp_path / report)
        counts += c
        wording += w
        failures += f
    print(f"\nimnn 0.3.2's test files ({len(names)}): {dict(counts)}")
    if not with_tensorflow:
        print(f"   not run, TensorFlow missing: {sorted(NEEDS_TENSORFLOW)}")
    for kind, count in wording_kinds(wording).most_common():
        print(f"   {count:6d}  {kind}")
    assert not failures, "\n".join(failures[:40])
    for result in runs:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The behaviours kept on purpose (harness_conftest.DELIBERATE): the progress bar switched
    # between fits, 16 cases in each of three files; the smaller last batch, 4 cases in
    # aggregated_simulator's file and 8 in each of the two aggregated-arrays files.
    assert counts["deliberate"] == (68 if with_tensorflow else 52)
    assert counts["passed"] > (2000 if with_tensorflow else 900)
