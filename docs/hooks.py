"""MkDocs hook (mkdocs.yml): the README is the site's home page. It is read at build time, so
there is one copy of it; its links into docs/ are made relative to the site's pages."""
import pathlib
import re

from mkdocs.structure.files import File


def on_files(files, config):
    readme = pathlib.Path(config.config_file_path).parent / "README.md"
    text = re.sub(r"\]\(docs/", "](", readme.read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files
