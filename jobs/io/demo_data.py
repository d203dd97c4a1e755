"""The demo data set, built at run time from text every machine has: the docstrings of
Python's standard library, read with ``ast`` (nothing is imported or executed).

* pool: every docstring of 40 characters or more, from every module (tests, IDLE and GUI
  demos excluded), with its module name;
* target: a fixed sample of the docstrings of the ``email``, ``http`` and ``urllib`` packages;
* heldout: the other docstrings of those packages (labelled rows from the target's
  distribution that the selection never saw: the train stage's validation set).

The same Python version gives the same rows on every machine.
"""
from __future__ import annotations

import ast
import hashlib
import os
import sysconfig

TARGET_PACKAGES = ("email", "http", "urllib")
TARGET_ROWS = 150
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "idlelib", "lib2to3",
              "turtledemo", "ensurepip", "tkinter"}


def stdlib_docstrings(min_chars: int = 40) -> list[dict]:
    """Every docstring of the standard library, in a fixed order."""
    root = sysconfig.get_paths()["stdlib"]
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            if module.endswith(".__init__"):
                module = module[: -len(".__init__")]
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
                n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            for node in nodes:
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    obj = getattr(node, "name", "")
                    rows.append({"doc_id": f"{module}:{obj}:{getattr(node, 'lineno', 0)}",
                                 "module": module, "package": module.split(".")[0],
                                 "text": doc})
    return rows


def demo_rows(side: str) -> list[dict]:
    rows = stdlib_docstrings()
    if side == "pool":
        return rows
    if side in ("target", "heldout"):
        mine = [r for r in rows if r["package"] in TARGET_PACKAGES]
        mine.sort(key=lambda r: hashlib.sha256(r["doc_id"].encode()).hexdigest())
        part = mine[:TARGET_ROWS] if side == "target" else mine[TARGET_ROWS:]
        return sorted(part, key=lambda r: r["doc_id"])
    raise ValueError(f"demo side must be 'pool', 'target' or 'heldout', not {side!r}.")


def demo_frame(spark, side: str):
    """The demo rows of one side as a DataFrame (doc_id, module, package, text)."""
    rows = demo_rows(side)
    schema = "doc_id string, module string, package string, text string"
    return spark.createDataFrame([(r["doc_id"], r["module"], r["package"], r["text"])
                                  for r in rows], schema).repartition(4, "doc_id")
