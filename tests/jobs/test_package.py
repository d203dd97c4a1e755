import subprocess
import sys
import zipfile

from jobs.package import build_zip


def test_zip_carries_both_packages_and_imports_from_itself(tmp_path):
    path = build_zip(str(tmp_path))
    names = zipfile.ZipFile(path).namelist()
    assert "gio_core/__init__.py" in names and "jobs/pipeline.py" in names
    assert not any("__pycache__" in n or not n.endswith(".py") for n in names)
    # Importable from the zip first on sys.path, as executors load --py-files (the assertion
    # checks the modules came from the zip, not from the editable install).
    code = (f"import sys; sys.path.insert(0, {path!r}); import gio_core._selection, jobs.cluster; "
            f"assert gio_core._selection.__file__.startswith({path!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
