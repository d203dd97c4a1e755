"""The config reference, generated from the config's own declaration: every key of every
section (nested sections flattened: ``weigh.source.path``), its type and default as the
dataclass declares them, the note written beside it, whether it is a runtime knob (left out of
fingerprints: changing it reuses committed work), and the stages that read the section (from the
registry).

    python -m jobs.tools.reference > docs/config.md      (make references)

``tests/jobs/test_reference.py`` fails when ``docs/config.md`` is not what this prints, so the
reference cannot go stale. The checks themselves (ranges, choices, the rules between keys) are
in :mod:`jobs.config.sections`; their messages name the key, the value and what would do.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing

from jobs.config import sections
from jobs.pipeline import DATAMODELS_ACTIONS, STAGES

# Options that change no result (left out of the fingerprints), by section.
RUNTIME = {"select": sections.RUNTIME_SELECT_OPTIONS, "embed": sections.RUNTIME_EMBED_OPTIONS,
           "train": sections.RUNTIME_TRAIN_OPTIONS, "imnn": sections.RUNTIME_IMNN_OPTIONS,
           "datamodels": sections.RUNTIME_DATAMODELS_OPTIONS,
           "runtime": tuple(f.name for f in dataclasses.fields(sections.RuntimeSection))}


def _notes(cls) -> dict:
    """``{field: the comment beside it, or the comment lines just above it}`` of a dataclass,
    from its source (its own fields; inherited ones come from the base class)."""
    notes: dict = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        lines, _ = inspect.getsourcelines(klass)
        body = ast.parse(textwrap.dedent("".join(lines))).body[0].body
        for node in body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            text = lines[node.lineno - 1]
            comment = text.split("#", 1)[1].strip() if "#" in text.split("=", 1)[-1] else ""
            if not comment:
                above, n = [], node.lineno - 2
                while n >= 0 and lines[n].strip().startswith("#"):
                    above.insert(0, lines[n].strip()[1:].strip())
                    n -= 1
                comment = " ".join(above)
            notes[node.target.id] = comment
    return notes


def _type(hint) -> str:
    text = str(hint) if not isinstance(hint, type) else hint.__name__
    return text.replace("typing.", "").replace("NoneType", "null").replace(" | ", " or ")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", "") if isinstance(value, (list, dict)) else str(value)


def _rows(cls, prefix: str, section: str) -> list:
    hints = typing.get_type_hints(cls)
    notes = _notes(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _rows(hints[f.name], key + ".", section)
            continue
        runtime = "yes" if f.name in RUNTIME.get(section, ()) and "." not in key[len(section) + 1:] \
            else ""
        note = notes.get(f.name, "").replace("|", "\\|")
        rule = sections.rule_of(cls, f.name)
        must = (rule.must + rule.hint).replace("|", "\\|") if rule is not None else ""
        if must and note.replace(",", "").replace(" or ", " ") == must.replace(",", "").replace(
                " or ", " "):
            note = ""                      # a comment that only lists the choices
        rows.append(f"| `{key}` | {_type(hints[f.name])} | `{_value(_default(f))}` | {runtime} | "
                    f"{must} | {note} |")
    return rows


def _readers(section: str) -> str:
    stages = [s.name for s in STAGES if s.section == section]
    stages += [f"datamodels {s.name}" for s in DATAMODELS_ACTIONS.values() if s.section == section]
    if section in ("pool", "target"):
        stages = [s.name for s in STAGES if section in s.reads(sections.JobConfig())]
    if section in ("spark", "output", "runtime"):
        return "every command"
    return ", ".join(stages) or "every command"


def reference() -> str:
    """The config reference as Markdown."""
    out = ["# Config reference", "",
           "Generated from the config's declaration by `python -m jobs.tools.reference` (`make "
           "references`); a test fails when this page is stale. Every key is optional; a "
           "config names only what differs from the defaults. *Runtime*: left out of the "
           "fingerprints, so changing it reuses committed work. *Constraint*: the rule declared "
           "beside the field (`Annotated[type, rule]` in `jobs/config/sections.py`), checked "
           "with the message the reference quotes; keys without one are checked by their "
           "section's own code. Values are checked before "
           "Spark starts, every problem reported at once (see [Bad input](pipeline.md#bad-input)). "
           "The commands that take these keys: the [CLI reference](cli.md).", ""]
    hints = typing.get_type_hints(sections.JobConfig)
    for f in dataclasses.fields(sections.JobConfig):
        cls = hints[f.name]
        out.append(f"## `{f.name}`")
        out.append("")
        if not dataclasses.is_dataclass(cls):
            out += [f"Type {_type(cls)}, default `{_value(_default(f))}`.", ""]
            continue
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out += [inspect.cleandoc(cls.__doc__), ""]
        out += [f"Read by: {_readers(f.name)}.", "",
                "| key | type | default | runtime | constraint | note |",
                "| --- | --- | --- | --- | --- | --- |"]
        out += _rows(cls, f"{f.name}.", f.name)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
