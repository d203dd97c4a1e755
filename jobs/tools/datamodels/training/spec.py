"""The reference's spec names and checks (``datamodels.training.spec``)."""
from __future__ import annotations

import copy

import numpy as np

COMPLETED = "_completed"
NUM_MODELS = "num_models"
SCHEMA = "schema"
DTYPE = "dtype"
SHAPE = "shape"


def verify_spec(spec: dict) -> None:
    """Raises ``AssertionError`` (the reference's type) naming what the spec lacks."""
    for key in (NUM_MODELS, SCHEMA):
        if key not in spec:
            raise AssertionError(f"the spec needs a {key!r} entry")
    if COMPLETED in spec[SCHEMA]:
        raise AssertionError(f"{COMPLETED!r} is kept for the completed flags; name the key "
                             "otherwise")
    for name, field in spec[SCHEMA].items():
        if DTYPE not in field or SHAPE not in field:
            raise AssertionError(f"schema key {name!r} needs a {DTYPE!r} and a {SHAPE!r}")
        if not isinstance(field[SHAPE], list):
            raise AssertionError(f"schema key {name!r}: the shape must be a list")
        if not hasattr(np, field[DTYPE]):
            raise AssertionError(f"schema key {name!r}: {field[DTYPE]!r} is not a numpy dtype")


def preprocess_spec(spec: dict) -> dict:
    """The spec checked, with the completed flags' entry (a boolean per model) added."""
    verify_spec(spec)
    out = copy.deepcopy(spec)
    out[SCHEMA][COMPLETED] = {DTYPE: "bool_", SHAPE: []}
    return out
