"""The datamodels spec: how many models, and what each one's ``main`` returns.

The spec has the source's format (MadryLab's datamodels)::

    {"num_models": 400,
     "schema": {"masks":   {"shape": [200], "dtype": "bool_"},
                "margins": {"shape": [100], "dtype": "float32"}}}

given as a JSON file (``datamodels.spec``) or inline in the config (``datamodels.num_models``
and ``datamodels.schema``). ``dtype`` is a NumPy type name; ``shape`` a list of sizes (``[]``
for a scalar). Every key becomes a column of the store: an array (flattened in C order) of the
Spark type below, or a plain column for a scalar. Pure Python and NumPy: checked before Spark
starts.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from jobs.common.errors import InputError

# NumPy dtype name -> (Spark SQL type name, the NumPy type values are stored as).
DTYPES = {
    "bool_": ("boolean", np.bool_), "bool": ("boolean", np.bool_),
    "int8": ("tinyint", np.int8), "uint8": ("smallint", np.int16),
    "int16": ("smallint", np.int16), "uint16": ("int", np.int32),
    "int32": ("int", np.int32), "uint32": ("bigint", np.int64), "int64": ("bigint", np.int64),
    "float16": ("float", np.float32), "float32": ("float", np.float32),
    "float64": ("double", np.float64), "float": ("double", np.float64),
    "int": ("bigint", np.int64),
}
# The store's own columns, which no schema key may take.
RESERVED = ("index", "completed", "attempt", "started_at", "finished_at", "seconds", "host",
            "error")
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUES = 2 ** 26          # per key and model (a 256 MB float32 array)


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple
    dtype: str                 # the spec's NumPy name

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def scalar(self) -> bool:
        return self.shape == ()

    @property
    def spark_type(self) -> str:
        base = DTYPES[self.dtype][0]
        return base if self.scalar else f"array<{base}>"

    @property
    def stored(self):
        return DTYPES[self.dtype][1]


@dataclass(frozen=True)
class Spec:
    num_models: int
    fields: tuple             # of Field, in the spec's order

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def to_json(self) -> str:
        """Canonical JSON: the store's property, and part of fingerprints."""
        return json.dumps({"num_models": self.num_models,
                           "schema": {f.name: {"shape": list(f.shape), "dtype": f.dtype}
                                      for f in self.fields}}, sort_keys=True)


def parse_spec(data, where: str) -> Spec:
    """Checks a spec mapping; raises InputError naming ``where`` and the problem."""
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping with num_models and schema; got "
                         f"{type(data).__name__}.")
    unknown = sorted(set(data) - {"num_models", "schema"})
    if unknown:
        raise InputError(f"{where} has unknown key(s) {unknown}; a spec has num_models and "
                         "schema.")
    num = data.get("num_models")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1 or num >= 2 ** 31:
        raise InputError(f"{where}: num_models must be an integer from 1 to 2**31 - 1; got "
                         f"{num!r}.")
    schema = data.get("schema")
    if not isinstance(schema, dict) or not schema:
        raise InputError(f"{where}: schema must map each key that main returns to its shape and "
                         "dtype, for example {masks: {shape: [1000], dtype: bool_}}.")
    fields = []
    for name, meta in schema.items():
        if not isinstance(name, str) or not KEY_PATTERN.match(name):
            raise InputError(f"{where}: schema key {name!r} must be a name of letters, digits "
                             "and '_' (not starting with a digit), at most 64 characters.")
        if name in RESERVED or name.startswith("_"):
            raise InputError(f"{where}: schema key {name!r} is reserved for the store's own "
                             f"columns ({', '.join(RESERVED)}) or starts with '_'; rename it.")
        if not isinstance(meta, dict) or set(meta) != {"shape", "dtype"}:
            raise InputError(f"{where}: schema.{name} must have exactly shape and dtype; got "
                             f"{meta!r}.")
        shape, dtype = meta["shape"], meta["dtype"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                  and s >= 1 for s in shape):
            raise InputError(f"{where}: schema.{name}.shape must be a list of sizes >= 1 ([] for "
                             f"a scalar); got {shape!r}.")
        if dtype not in DTYPES:
            hint = (" (uint64 values do not fit a Spark column; use int64)"
                    if dtype == "uint64" else "")
            raise InputError(f"{where}: schema.{name}.dtype {dtype!r} is not one of "
                             f"{', '.join(sorted(DTYPES))}{hint}.")
        f = Field(name, tuple(shape), dtype)
        if f.size > MAX_VALUES:
            raise InputError(f"{where}: schema.{name} holds {f.size} values per model; the store "
                             f"keeps at most {MAX_VALUES} per key and model. Write larger "
                             "outputs to logdir and store their path or a summary.")
        fields.append(f)
    return Spec(num, tuple(fields))


def read_spec_file(path: str) -> dict:
    """A JSON spec file as a mapping (InputError when missing or not JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"datamodels.spec {path!r} does not exist; give the JSON spec file "
                         "(num_models and schema), or set datamodels.num_models and "
                         "datamodels.schema in the config.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"datamodels.spec {path!r} cannot be read: {err}.") from None
    except json.JSONDecodeError as err:
        raise InputError(f"datamodels.spec {path!r} is not valid JSON: {err.msg} (line "
                         f"{err.lineno}, column {err.colno}).") from None


def check_output(spec: Spec, index: int, out) -> dict:
    """What one model's ``main`` returned, checked against the spec; returns ``{key: array}``
    flattened and cast to the stored type. Raises ValueError naming the index and the key."""
    if not isinstance(out, dict):
        raise ValueError(f"main returned {type(out).__name__} for index {index}; it must return a "
                         f"dict with the spec's keys ({', '.join(spec.names)}).")
    missing = [n for n in spec.names if n not in out]
    extra = sorted(str(k) for k in out if k not in spec.names)
    if missing or extra:
        raise ValueError(f"main's result for index {index} has keys {sorted(map(str, out))}; "
                         f"the spec's are {spec.names} (missing {missing}, unknown {extra}).")
    values = {}
    for f in spec.fields:
        arr = np.asarray(out[f.name])
        if arr.shape != f.shape:
            raise ValueError(f"main's {f.name!r} for index {index} has shape {list(arr.shape)}; "
                             f"the spec says {list(f.shape)}.")
        kind = np.dtype(np.bool_ if f.dtype in ("bool_", "bool") else f.dtype).kind
        if kind == "b" and arr.dtype.kind != "b":
            if not np.isin(arr, (0, 1)).all():
                raise ValueError(f"main's {f.name!r} for index {index} holds values other than "
                                 "0/1 for a bool_ key.")
        elif kind in "iu" and arr.dtype.kind == "f":
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise ValueError(f"main's {f.name!r} for index {index} holds non-integers for "
                                 f"an {f.dtype} key.")
        elif kind in "iub" and arr.dtype.kind not in "iubf":
            raise ValueError(f"main's {f.name!r} for index {index} has dtype {arr.dtype}; the "
                             f"spec says {f.dtype}.")
        elif kind == "f" and arr.dtype.kind not in "iubf":
            raise ValueError(f"main's {f.name!r} for index {index} has dtype {arr.dtype}; the "
                             f"spec says {f.dtype}.")
        if kind in "iu":
            info = np.iinfo(np.dtype(f.dtype))
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"main's {f.name!r} for index {index} holds values outside "
                                 f"{f.dtype}'s range.")
        values[f.name] = np.ascontiguousarray(arr.astype(np.dtype(f.dtype)).astype(f.stored)
                                              ).reshape(-1)
    return values
