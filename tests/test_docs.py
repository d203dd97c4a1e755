"""The documentation site builds in strict mode (a broken link or anchor, a page left out of the
nav, an API reference that does not resolve or a docstring griffe cannot read fails it), and
what it builds is the README and the references the code generates."""
import html
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def text_of(page: str) -> str:
    body = re.sub(r"<[^>]+>", " ", open(page, encoding="utf-8").read())
    return re.sub(r"\s+", " ", html.unescape(body))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert run.returncode == 0, run.stderr[-4000:]
    assert "WARNING" not in run.stderr, run.stderr[-4000:]
    return out


def test_the_home_page_is_the_readme_with_its_links_made_relative(site):
    page = open(site / "index.html", encoding="utf-8").read()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    heading = re.search(r"^## (Your own data.*)$", readme, re.M).group(1)
    text = text_of(site / "index.html")
    assert heading in text and "Gradient Information Optimization (GIO)" in text
    assert 'href="python-api/"' in page and "docs/python-api" not in page


def test_every_page_of_docs_is_built(site):
    pages = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    assert len(pages) >= 15
    missing = [p for p in pages if not os.path.exists(site / p / "index.html")]
    assert not missing, missing


def test_the_api_reference_documents_each_parameter_from_its_docstring(site):
    text = text_of(site / "api" / "index.html")
    for name in ("select_rows", "learn_weights", "run_stage", "selection", "runs", "InputError",
                 "GIOSelector", "DIIWeigherModel"):
        assert name in text, name
    # the Args sections are read as parameters: a name, its type from the signature, its note
    assert "max_fraction float | None the row budget as a share of the pool's rows" in text
    assert "embedding_column str | None a vector column of both sides" in text


def test_the_cli_reference_holds_every_commands_help(site):
    text = text_of(site / "cli" / "index.html")
    for command in ("run", "quantize", "imnn-example", "datamodels work", "package", "config"):
        assert f"usage: gio-spark {command} " in text, command
