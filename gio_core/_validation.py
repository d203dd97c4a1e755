"""Input checks shared by the selection API and the compatibility class.

Every check raises ``ValueError`` naming what is wrong and what to do, before
any heavy work starts.
"""
from __future__ import annotations

import numpy as np


def as_points(name: str, value, *, allow_empty: bool = False) -> np.ndarray:
    """A finite float32 array of shape ``[rows, d]``."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape [rows, dim]: {err}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim]; got shape {arr.shape}. "
                         "Reshape a single vector with x[None, :].")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero columns; embeddings need at least one dimension.")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 rows); give it at least one row.")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{name} has {rows.size} row(s) with NaN or inf values (first at row "
                         f"{rows[0]}); drop or repair them before selecting.")
    return arr


def as_weights(name: str, value, rows: int) -> np.ndarray:
    """Positive finite float32 weights of shape ``[rows]``, or ones when ``value`` is None."""
    if value is None:
        return np.ones((rows,), np.float32)
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), one weight per row; got {arr.shape}.")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be finite and strictly positive (cluster sizes, counts); "
                         f"found {int((~np.isfinite(arr) | (arr <= 0)).sum())} bad value(s).")
    return arr


def same_dim(**arrays: np.ndarray) -> None:
    dims = {name: arr.shape[1] for name, arr in arrays.items() if arr is not None}
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{name} has {d}" for name, d in dims.items())
        raise ValueError(f"dimension mismatch: {listed} columns. Embed all sides with the same "
                         "model (and the same normalisation).")


def check_k(k, target_rows: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    if k >= target_rows:
        raise ValueError(f"k={k} is too large for a target of {target_rows} rows: the estimator "
                         f"needs k other target points per point, so k <= {target_rows - 1}. "
                         "Use a smaller k or a larger target sample.")
    return int(k)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}.")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    return bool(value)


def check_number(name: str, value, *, low=None, high=None, low_open=False, integer=False):
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kind) or (
            not isinstance(value, (int, np.integer)) and not np.isfinite(value)):
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}; "
                         f"got {value!r}.")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}; got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value!r}.")
    return value
