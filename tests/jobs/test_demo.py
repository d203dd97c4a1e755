import os
import subprocess
import sys

from jobs.tools.demo import format_summary, run_demo


def test_demo_selects_the_target_components_and_writes_plots(tmp_path):
    summary = run_demo(str(tmp_path), seed=0)
    assert summary["knn"]["from_target_components"] >= 0.95
    shares = summary["knn"]["shares"]
    assert abs(shares[0] - 0.5) < 0.08 and abs(shares[1] - 0.3) < 0.08
    assert summary["averaged"]["shares"][0] > 0.8          # the source's estimator collapses
    for path in summary["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "150 picks" in format_summary(summary)


def test_cli_demo_command(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "gio-spark")
    out = subprocess.run([exe, "demo", "--out", str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "from the target's components" in out
    assert os.path.exists(tmp_path / "selection.png")
