"""The config reference (docs/config.md) is what the config's declaration generates, and it
names every key that `gio-spark config --show` prints."""
import os

import yaml

from jobs.cli import main
from jobs.tools.reference import reference
from tests.jobs.test_pipeline import ROOT

PAGE = os.path.join(ROOT, "docs", "config.md")


def _keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("conf", "options", "args", "schema"):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_config_reference_is_not_stale():
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()
    assert page == reference(), "docs/config.md is stale: run make references"


def test_the_reference_names_every_key_config_show_prints(capsys):
    assert main(["config", "--show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    keys = list(_keys(shown))
    assert len(keys) > 200
    page = reference()
    missing = [k for k in keys if f"| `{k}` |" not in page and f"## `{k}`" not in page]
    assert not missing, missing


def test_the_cli_reference_is_not_stale():
    from jobs.cli import reference as cli_reference

    with open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8") as f:
        page = f.read()
    assert page == cli_reference(), "docs/cli.md is stale: run make references"
    assert "usage: gio-spark select [-h] [--config CONFIG] [--set KEY=VALUE]" in page
