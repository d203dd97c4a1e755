"""The imnn command: an IMNN's summaries fitted from simulations stored in a Delta table.

    gio-spark imnn --config conf/imnn.yaml [--local]
    gio-spark imnn-example --config conf/imnn.yaml     (writes the tutorial's simulations, fits)

The simulations (``imnn.simulations``) are one row per simulation: ``split`` (``train`` or
``validation``), ``kind`` (``fiducial``: with its ``derivative``; ``remaining``: without, it
only helps estimate the covariance), ``index`` (unique within a split and kind), ``values``
(the simulation, flattened) and ``derivative`` (flattened). They are checked in one pass before
anything heavy: columns and types, known splits and kinds, one length for every simulation,
derivatives where they belong, unique indices, finite numbers, as many simulations in the
validation split as in the training one.

The fit is :mod:`gio_core.imnn`'s aggregated IMNN, with the batches coming from the table:

* ``imnn.mode: spark`` -- the simulations are cached on the executors. With ``imnn.barrier``
  (the default, where the cluster allows it: no dynamic allocation, no more partitions than
  task slots) the whole fit is one barrier Spark job: each task keeps its partition's
  simulations in memory and runs the fit loop; every pass it computes its batches' summaries
  (or chain-rule sums) and exchanges them with the other tasks (an all-gather in partition
  order over TCP, :mod:`jobs.common.exchange`), so every task takes the same steps on the
  same numbers (each checks that the weights agree), and the first sends the final state
  back. Otherwise each iteration the weights are broadcast; executors compute each batch's
  summaries and their parameter derivatives (one Spark job, only ``n_s x n_summaries``
  numbers come back); the driver forms the loss's gradient with respect to them; executors
  return each partition's chain-rule sum (a second job), which the driver adds up in
  partition order. The validation set's summaries come with the next iteration's training
  summaries.
* ``imnn.mode: local`` (``--local``) -- the driver streams the same table's Parquet files in
  batches of ``imnn.batch_size`` (pyarrow), the same arithmetic with no Spark jobs.

Batches are padded to ``imnn.batch_size`` (padded rows get a zero cotangent), so each side
compiles once. It writes, each in one transaction under the fit's id (``imnn.run_id`` or
``imnn-<fingerprint>``): ``imnn_history`` (one row per iteration: det F, det C, det C⁻¹, Λ2, r
and the loss, for training and validation) and ``imnn_fits`` (the network, the chosen and the
final weights, F, C, C⁻¹, μ, dμ/dθ, F⁻¹ and the fit's facts), and the history's plot under
``plots/``. :func:`load_estimator` gives a fit back as a :class:`gio_core.imnn.Estimator`.
The fit is reused while the table's version and the options are unchanged.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import faults
from jobs.common.errors import ConcurrentRunError, InputError
from jobs.common.exchange import Exchange
from jobs.common.extras import plotting
from jobs.common.log import log
from jobs.common.runtime import configure_jax, library_versions
from jobs.config import RUNTIME_IMNN_OPTIONS, JobConfig
from jobs.io import tables
from jobs.io.session import check_delta
from jobs.io.sources import check_outputs
from jobs.stages.base import Stage, no_sides, run_stage
from jobs.state import reuse
from jobs.state.stored import stored_run

SPLITS = ("train", "validation")
KINDS = ("fiducial", "remaining")
WEIGHTS_FORMAT = "float32-ravel-v1"
SIMULATIONS = T.StructType([
    T.StructField("split", T.StringType(), False),
    T.StructField("kind", T.StringType(), False),
    T.StructField("index", T.LongType(), False),
    T.StructField("values", T.ArrayType(T.FloatType(), False), False),
    T.StructField("derivative", T.ArrayType(T.FloatType(), False), True),
])
_NUMERIC = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType,
            T.DecimalType)


# ---------------------------------------------------------------------------
# The simulations: read and checked
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """What the simulations table holds, as checked."""
    path: str
    version: int
    n_s: int
    n_d: int
    input_shape: tuple
    n_params: int
    validation: bool
    mode: str                       # gradient or numerical

    @property
    def derivative_shape(self) -> tuple:
        if self.mode == "gradient":
            return self.input_shape + (self.n_params,)
        return (2, self.n_params) + self.input_shape


def _delta_version(spark, path: str) -> int:
    """The simulations table's current version; InputError when ``path`` is not Delta."""
    from delta.tables import DeltaTable
    if not tables.exists(spark, path):
        raise InputError(f"imnn.simulations {path!r} is not a Delta table (no _delta_log); "
                         "write the simulations there as Delta (gio-spark imnn-example writes "
                         "the tutorial's).")
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def read_simulations(spark, cfg: JobConfig) -> tuple[DataFrame, Layout]:
    """The simulations table, checked (one aggregate pass), and its layout.

    Raises:
      InputError: naming the first problem and what to do.
    """
    m = cfg.imnn
    path = m.simulations
    version = _delta_version(spark, path)
    df = spark.read.format("delta").option("versionAsOf", version).load(path)
    fields = {f.name: f.dataType for f in df.schema.fields}
    for name, ok, want in (
            ("split", lambda t: isinstance(t, T.StringType), "string"),
            ("kind", lambda t: isinstance(t, T.StringType), "string"),
            ("index", lambda t: isinstance(t, (T.IntegerType, T.LongType, T.ShortType)),
             "integer"),
            ("values", lambda t: isinstance(t, T.ArrayType)
             and isinstance(t.elementType, _NUMERIC), "array of numbers"),
            ("derivative", lambda t: isinstance(t, T.ArrayType)
             and isinstance(t.elementType, _NUMERIC), "array of numbers")):
        if name not in fields:
            raise InputError(f"imnn.simulations has no column {name!r}; it needs split, kind, "
                             f"index, values and derivative (its columns: "
                             f"{', '.join(fields)}).")
        if not ok(fields[name]):
            raise InputError(f"imnn.simulations column {name!r} is "
                             f"{fields[name].simpleString()}; it must be {want}.")

    def bad(column):
        return F.exists(column, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == math.inf))
    stats = (df.groupBy("split", "kind")
             .agg(F.count(F.lit(1)).alias("rows"),
                  F.countDistinct("index").alias("indices"),
                  F.sum(F.col("index").isNull().cast("int")).alias("null_index"),
                  F.min(F.size("values")).alias("len_min"),
                  F.max(F.size("values")).alias("len_max"),
                  F.sum(F.col("values").isNull().cast("int")).alias("null_values"),
                  F.min(F.size("derivative")).alias("der_min"),
                  F.max(F.size("derivative")).alias("der_max"),
                  F.sum(F.col("derivative").isNull().cast("int")).alias("null_der"),
                  F.sum(F.coalesce(bad("values"), F.lit(False)).cast("int")).alias("bad_values"),
                  F.sum(F.coalesce(bad("derivative"), F.lit(False)).cast("int"))
                  .alias("bad_der"))
             .collect())
    groups = {(r["split"], r["kind"]): r for r in stats}
    unknown = sorted(k for k in groups if k[0] not in SPLITS or k[1] not in KINDS)
    if unknown:
        split, kind = unknown[0]
        raise InputError(f"imnn.simulations has {groups[unknown[0]]['rows']} row(s) with split "
                         f"{split!r} and kind {kind!r}; split must be train or validation and "
                         "kind fiducial (with a derivative) or remaining.")
    if ("train", "fiducial") not in groups:
        raise InputError("imnn.simulations has no rows with split 'train' and kind 'fiducial': "
                         "the fit needs training simulations with their derivatives.")
    lengths = set()
    for (split, kind), r in sorted(groups.items()):
        where = f"imnn.simulations ({split}, {kind})"
        if r["null_index"] or r["null_values"]:
            raise InputError(f"{where} has rows with a null index or null values; drop them.")
        if r["indices"] != r["rows"]:
            raise InputError(f"{where} has {r['rows'] - r['indices']} repeated index value(s); "
                             "each simulation needs its own index within its split and kind.")
        if r["bad_values"]:
            raise InputError(f"{where}: {r['bad_values']} simulation(s) hold non-finite or null "
                             "numbers in values; drop or regenerate them.")
        if r["len_min"] != r["len_max"]:
            raise InputError(f"{where}: simulations have {r['len_min']} to {r['len_max']} "
                             "values; every simulation must have the same length.")
        lengths.add(int(r["len_min"]))
        if kind == "fiducial":
            if r["null_der"]:
                raise InputError(f"{where}: {r['null_der']} fiducial simulation(s) have no "
                                 "derivative; give each its derivative, or mark it remaining.")
            if r["bad_der"]:
                raise InputError(f"{where}: {r['bad_der']} derivative(s) hold non-finite or "
                                 "null numbers; drop or regenerate those simulations.")
            if r["der_min"] != r["der_max"]:
                raise InputError(f"{where}: derivatives have {r['der_min']} to {r['der_max']} "
                                 "values; every derivative must have the same length.")
    if len(lengths) != 1:
        raise InputError(f"imnn.simulations holds simulations of lengths {sorted(lengths)}; "
                         "every simulation must have the same length.")
    (length,) = lengths
    if m.input_shape is not None:
        shape = tuple(m.input_shape)
        if int(np.prod(shape)) != length:
            raise InputError(f"imnn.input_shape {list(shape)} has {int(np.prod(shape))} values "
                             f"but the simulations have {length}; fix imnn.input_shape.")
    else:
        shape = (length,)
    n_params = len(m.theta_fid)
    mode = m.derivatives
    layout = Layout(path, version, 0, 0, shape, n_params, False, mode)
    want = int(np.prod(layout.derivative_shape))
    got = int(groups[("train", "fiducial")]["der_min"])
    if got != want:
        form = ("[*input_shape, n_params]" if mode == "gradient"
                else "[2, n_params, *input_shape] (numerical)")
        raise InputError(f"imnn.simulations' derivatives have {got} values; with {n_params} "
                         f"parameter(s) (imnn.theta_fid) and input_shape {list(shape)} a "
                         f"derivative {form} has {want}. Check imnn.theta_fid, "
                         "imnn.input_shape and imnn.derivatives.")
    counts = {s: (sum(int(groups[(s, k)]["rows"]) for k in KINDS if (s, k) in groups),
                  int(groups[(s, "fiducial")]["rows"]) if (s, "fiducial") in groups else 0)
              for s in SPLITS}
    n_s, n_d = counts["train"]
    validation = counts["validation"] != (0, 0)
    if validation:
        if counts["validation"] != counts["train"]:
            raise InputError(f"imnn.simulations' validation split holds {counts['validation'][0]} "
                             f"simulations ({counts['validation'][1]} fiducial) but the train "
                             f"split {n_s} ({n_d}); the two must hold as many of each.")
        if groups[("validation", "fiducial")]["der_min"] != want:
            raise InputError("imnn.simulations' validation derivatives have "
                             f"{groups[('validation', 'fiducial')]['der_min']} values; expected "
                             f"{want}, as in the train split.")
    else:
        log("warning: imnn: imnn.simulations has no validation split; early stopping and the "
            "best weights follow the training set's det F, which a fixed training set "
            "overstates.")
    n_summaries = m.n_summaries or n_params
    if n_s <= n_summaries:
        raise InputError(f"imnn.simulations' train split holds {n_s} simulations; estimating "
                         f"the covariance of {n_summaries} summaries needs more.")
    return df, Layout(path, version, n_s, n_d, shape, n_params, validation, mode)


# ---------------------------------------------------------------------------
# The network, on the driver and on the executors
# ---------------------------------------------------------------------------

def network_spec(cfg: JobConfig, layout: Layout, platform: str = "auto") -> dict:
    m = cfg.imnn
    return {"hidden": [int(h) for h in m.hidden], "activation": m.activation,
            "n_summaries": int(m.n_summaries or layout.n_params),
            "input_shape": list(layout.input_shape), "n_params": layout.n_params,
            "mode": layout.mode, "delta_theta": m.delta_theta, "batch_size": m.batch_size,
            "platform": platform}


_EXECUTOR: dict = {}


def _network(spec: dict):
    """``(apply_fn, template weights, summaries fn, gradient fn)`` for a spec, built once per
    Python process (executors reuse their Python workers)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _EXECUTOR:
        if spec.get("platform", "auto") != "auto":
            os.environ.setdefault("JAX_PLATFORMS", "cpu" if spec["platform"] == "cpu"
                                  else "cuda")
        import jax
        import jax.numpy as jnp

        from gio_core import imnn
        init, apply_fn = imnn.mlp(spec["hidden"], spec["n_summaries"], spec["activation"])
        _, template = init(jax.random.PRNGKey(0), tuple(spec["input_shape"]))
        δθ = None if spec["delta_theta"] is None else jnp.asarray(spec["delta_theta"],
                                                                  jnp.float32)
        summaries = jax.jit(partial(imnn.chunk_summaries, apply_fn, mode=spec["mode"], δθ=δθ))
        gradient = jax.jit(partial(imnn.chunk_gradient, apply_fn, mode=spec["mode"], δθ=δθ))
        _EXECUTOR[key] = (apply_fn, template, summaries, gradient)
    return _EXECUTOR[key]


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    pad = np.zeros((size - array.shape[0],) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad])


def _stack(values, shape) -> np.ndarray:
    return np.stack([np.asarray(v, np.float32) for v in values]).reshape((len(values),) + shape)


def _chunks(pdf, size: int):
    for start in range(0, len(pdf), size):
        yield pdf.iloc[start:start + size]


def _summaries_task(spec: dict, weights, frames):
    """mapInPandas: one row per batch: split, kind, indices, summaries and derivatives (bytes)."""
    import pandas as pd

    from gio_core.imnn import weights_from_bytes
    _, template, summaries, _ = _network(spec)
    w = weights_from_bytes(weights.value, template)
    shape = tuple(spec["input_shape"])
    der_shape = _derivative_shape(spec)
    size = spec["batch_size"]
    for pdf in frames:
        for (split, kind), part in pdf.groupby(["split", "kind"], sort=True):
            for chunk in _chunks(part, size):
                n = len(chunk)
                fid = _padded(_stack(chunk["values"].tolist(), shape), size)
                der = (_padded(_stack(chunk["derivative"].tolist(), der_shape), size)
                       if kind == "fiducial" else None)
                x, dx = summaries(w, fid, der)
                yield pd.DataFrame({
                    "split": [split], "kind": [kind],
                    "indices": [chunk["index"].to_numpy(np.int64)],
                    "x": [np.asarray(x[:n], np.float32).tobytes()],
                    "dx": [None if dx is None else np.asarray(dx[:n], np.float32).tobytes()]})


def _derivative_shape(spec: dict) -> tuple:
    shape = tuple(spec["input_shape"])
    if spec["mode"] == "gradient":
        return shape + (spec["n_params"],)
    return (2, spec["n_params"]) + shape


def _gradient_task(spec: dict, shared, frames):
    """mapInPandas: one row per partition: its id and its share of the loss gradient."""
    import jax
    import pandas as pd
    from jax.flatten_util import ravel_pytree
    from pyspark import TaskContext

    from gio_core.imnn import weights_from_bytes
    _, template, _, gradient = _network(spec)
    data = shared.value
    w = weights_from_bytes(data["weights"], template)
    shape = tuple(spec["input_shape"])
    der_shape = _derivative_shape(spec)
    size = spec["batch_size"]
    total = None
    for pdf in frames:
        for kind in KINDS:
            part = pdf[pdf["kind"] == kind]
            order = data[kind + "_index"]
            for chunk in _chunks(part, size):
                pos = np.searchsorted(order, chunk["index"].to_numpy(np.int64))
                fid = _padded(_stack(chunk["values"].tolist(), shape), size)
                cx = _padded(data[kind + "_gx"][pos], size)
                if kind == "fiducial":
                    der = _padded(_stack(chunk["derivative"].tolist(), der_shape), size)
                    cdx = _padded(data["gdx"][pos], size)
                else:
                    der, cdx = None, None
                g = gradient(w, fid, der, cx, cdx)
                total = g if total is None else jax.tree_util.tree_map(np.add, total, g)
    if total is not None:
        flat = np.asarray(ravel_pytree(total)[0], np.float32)
        yield pd.DataFrame({"partition": [TaskContext.get().partitionId()],
                            "grad": [flat.tobytes()]})


SUMMARY_ROWS = T.StructType([
    T.StructField("split", T.StringType()), T.StructField("kind", T.StringType()),
    T.StructField("indices", T.ArrayType(T.LongType())),
    T.StructField("x", T.BinaryType()), T.StructField("dx", T.BinaryType())])
GRADIENT_ROWS = T.StructType([T.StructField("partition", T.IntegerType()),
                              T.StructField("grad", T.BinaryType())])


# ---------------------------------------------------------------------------
# The IMNNs over a table
# ---------------------------------------------------------------------------

def _imnn_classes():
    """The table-backed IMNN classes (built lazily: gio_core.imnn imports JAX)."""
    import jax
    import jax.numpy as jnp

    from gio_core import imnn

    class TableIMNN(imnn._Aggregated):
        """An aggregated IMNN whose batches come from the simulations table."""

        def __init__(self, cfg: JobConfig, layout: Layout, spec: dict):
            m = cfg.imnn
            from gio_core.gaf import make_optimizer
            self._mode = layout.mode
            imnn._IMNN.__init__(
                self, layout.n_s, layout.n_d, layout.n_params, spec["n_summaries"],
                layout.input_shape, np.asarray(m.theta_fid, np.float32),
                imnn.mlp(m.hidden, spec["n_summaries"], m.activation),
                make_optimizer(m.optimizer, m.learning_rate),
                jax.random.PRNGKey(m.seed))
            if layout.mode == "numerical":
                self.δθ = jnp.asarray(m.delta_theta, jnp.float32)
            self._setup_devices(n_per_device=m.batch_size)
            self.validate = layout.validation
            self.layout = layout
            self.spec = spec
            self.passes = 0

        def _ordered(self, rows, validate):
            """Summaries from batch rows (kind, indices, x, dx) in index order, fiducial first."""
            S, P = self.n_summaries, self.n_params
            out = {}
            for kind in KINDS:
                picked = [r for r in rows if r[0] == kind]
                if not picked:
                    out[kind] = (np.zeros(0, np.int64), np.zeros((0, S), np.float32),
                                 np.zeros((0, S, P), np.float32))
                    continue
                idx = np.concatenate([np.asarray(r[1], np.int64) for r in picked])
                x = np.concatenate([np.frombuffer(r[2], np.float32).reshape(-1, S)
                                    for r in picked])
                dx = (np.concatenate([np.frombuffer(r[3], np.float32).reshape(-1, S, P)
                                      for r in picked]) if kind == "fiducial"
                      else np.zeros((0, S, P), np.float32))
                order = np.argsort(idx, kind="stable")
                out[kind] = (idx[order], x[order], dx[order] if len(dx) else dx)
            self._check_counts(len(out["fiducial"][0]) + len(out["remaining"][0]),
                               len(out["fiducial"][0]), validate)
            if not validate:           # the rows get_gradient's cotangents line up with
                self._index = {k: out[k][0] for k in KINDS}
            return (jnp.asarray(np.concatenate([out["fiducial"][1], out["remaining"][1]])),
                    jnp.asarray(out["fiducial"][2]))

    class LocalIMNN(TableIMNN):
        """Streams the table's Parquet files through the driver (pyarrow), batch by batch."""

        def __init__(self, spark, cfg, layout, spec):
            super().__init__(cfg, layout, spec)
            from delta.tables import DeltaTable
            files = (DeltaTable.forPath(spark, layout.path).toDF().inputFiles())
            self._files = sorted(f.removeprefix("file:") for f in files)
            import pyarrow.dataset as ds
            self._dataset = ds.dataset(self._files, format="parquet")
            missing = [c for c in ("split", "kind", "index", "values", "derivative")
                       if c not in self._dataset.schema.names]
            if missing:
                raise InputError(f"imnn.simulations' files lack the column(s) {missing} "
                                 "(a partitioned table, or one with column mapping): "
                                 "imnn.mode local reads the files directly; use imnn.mode "
                                 "spark.")
            rows = self._dataset.count_rows()
            expected = (spark.read.format("delta").option("versionAsOf", layout.version)
                        .load(layout.path).count())
            if rows != expected:
                raise InputError(f"imnn.simulations' files hold {rows} rows but the table "
                                 f"{expected} (deleted rows in deletion vectors): imnn.mode "
                                 "local reads the files directly; use imnn.mode spark, or "
                                 "rewrite the table (REORG TABLE ... APPLY (PURGE)).")

        def _rows(self, validate, kind):
            import pyarrow.dataset as ds
            split = "validation" if validate else "train"
            columns = ["index", "values"] + (["derivative"] if kind == "fiducial" else [])
            flt = (ds.field("split") == split) & (ds.field("kind") == kind)
            size = self.n_per_device
            pending: list = []
            count = 0
            for batch in self._dataset.to_batches(columns=columns, filter=flt,
                                                  batch_size=size):
                if batch.num_rows:
                    pending.append(batch)
                    count += batch.num_rows
                while count >= size:
                    yield self._take(pending, size, kind)
                    count -= size
            if count:
                yield self._take(pending, count, kind)

        def _take(self, pending, size, kind):
            import pyarrow as pa
            table = pa.Table.from_batches(pending)
            head, rest = table.slice(0, size), table.slice(size)
            pending.clear()
            if rest.num_rows:
                pending.extend(rest.to_batches())
            idx = head.column("index").to_numpy().astype(np.int64)
            n = head.num_rows
            fid = (head.column("values").combine_chunks().flatten().to_numpy()
                   .astype(np.float32).reshape((n,) + self.input_shape))
            der = None
            if kind == "fiducial":
                der = (head.column("derivative").combine_chunks().flatten().to_numpy()
                       .astype(np.float32).reshape((n,) + self.layout.derivative_shape))
            return idx, fid, der

        def _passes(self, validate):
            for kind in KINDS:
                for idx, fid, der in self._rows(validate, kind):
                    yield kind, idx, fid, der

        def _summary_rows(self, w, validate):
            """``(kind, indices, x bytes, dx bytes)`` for each batch of :meth:`_passes`."""
            size = self.n_per_device
            rows = []
            for kind, idx, fid, der in self._passes(validate):
                n = len(idx)
                x, dx = self._summaries_fn(w, _padded(fid, size),
                                           None if der is None else _padded(der, size))
                rows.append((kind, idx, np.asarray(x[:n], np.float32).tobytes(),
                             None if dx is None else np.asarray(dx[:n], np.float32).tobytes()))
            return rows

        def get_summaries(self, w, key=None, validate=False):
            rows = self._summary_rows(w, validate)
            self.passes += 1
            return self._ordered(rows, validate)

        def get_gradient(self, w, g_x, g_dx, validate=False):
            size = self.n_per_device
            g_x, g_dx = np.asarray(g_x), np.asarray(g_dx)
            n_d = len(self._index["fiducial"])
            total = None
            for kind, idx, fid, der in self._passes(validate):
                if kind == "fiducial":
                    pos = np.searchsorted(self._index["fiducial"], idx)
                    cx, cdx = g_x[pos], g_dx[pos]
                else:
                    pos = np.searchsorted(self._index["remaining"], idx)
                    cx, cdx = g_x[n_d + pos], None
                g = self._gradient_fn(w, _padded(fid, size),
                                      None if der is None else _padded(der, size),
                                      _padded(cx, size), None if cdx is None
                                      else _padded(cdx, size))
                total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
            self.passes += 1
            return total

    class BarrierIMNN(LocalIMNN):
        """One task of a barrier job: its partition's simulations in memory; each pass computes
        its batches and exchanges the result with every other task (an all-gather in partition
        order, :class:`jobs.common.exchange.Exchange`), so that every task runs the same fit
        loop on the same numbers."""

        def __init__(self, cfg, layout, spec, data: dict, exchange):
            TableIMNN.__init__(self, cfg, layout, spec)
            self._data = data          # (split, kind) -> (indices, values, derivatives)
            self._gather = exchange.gather      # jobs.common.exchange.Exchange

        def _passes(self, validate):
            split = "validation" if validate else "train"
            size = self.n_per_device
            for kind in KINDS:
                if (split, kind) not in self._data:
                    continue
                idx, fid, der = self._data[(split, kind)]
                for lo in range(0, len(idx), size):
                    yield (kind, idx[lo:lo + size], fid[lo:lo + size],
                           None if der is None else der[lo:lo + size])

        def get_summaries(self, w, key=None, validate=False):
            import pickle
            mine = pickle.dumps(self._summary_rows(w, validate))
            rows = [r for got in self._gather(mine) for r in pickle.loads(got)]
            self.passes += 1
            return self._ordered(rows, validate)

        def get_gradient(self, w, g_x, g_dx, validate=False):
            import hashlib

            from jax.flatten_util import ravel_pytree

            from gio_core.imnn import weights_to_bytes
            local = LocalIMNN.get_gradient(self, w, g_x, g_dx, validate)
            flat, unravel = ravel_pytree(w)
            mine = (np.zeros(flat.size, np.float32) if local is None
                    else np.asarray(ravel_pytree(local)[0], np.float32))
            digest = hashlib.sha256(weights_to_bytes(w)).digest()[:16]
            parts = self._gather(digest + mine.tobytes())
            if len({p[:16] for p in parts}) > 1:
                raise RuntimeError("imnn: the barrier job's tasks hold different weights (the "
                                   "executors' arithmetic differs: mixed CPU types?); set "
                                   "imnn.barrier: false")
            total = np.zeros(flat.size, np.float32)
            for p in parts:
                total += np.frombuffer(p[16:], np.float32)
            return unravel(jnp.asarray(total))

    class SparkIMNN(TableIMNN):
        """Executors compute the batches' summaries and chain-rule sums; the driver adds up.
        The validation pass also computes the training summaries for the same (new) weights,
        which the next iteration starts from: two Spark jobs an iteration, not three."""

        def __init__(self, spark, cfg, layout, spec, frame):
            super().__init__(cfg, layout, spec)
            self.spark = spark
            parts = cfg.imnn.partitions or spark.sparkContext.defaultParallelism
            cols = frame.select("split", "kind", F.col("index").cast("long").alias("index"),
                                F.col("values").cast(T.ArrayType(T.FloatType())).alias("values"),
                                F.col("derivative").cast(T.ArrayType(T.FloatType()))
                                .alias("derivative"))
            self._all = (cols.repartition(parts, "split", "index")
                         .sortWithinPartitions("split", "kind", "index").persist())
            self._all.count()
            self._train = self._all.where(F.col("split") == "train")
            self._ahead: tuple | None = None       # (weights bytes, training summaries)
            self.jobs = 0
            self.barrier_jobs = 0
            self.cfg = cfg

        def release(self):
            self._all.unpersist()

        def _no_barrier(self) -> str | None:
            """Why the fit cannot run as one barrier job here (None: it can)."""
            sc = self.spark.sparkContext
            if not self.cfg.imnn.barrier:
                return "imnn.barrier is false"
            if sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
                return "Spark's dynamic allocation is on (barrier jobs need fixed executors)"
            parts = self._all.rdd.getNumPartitions()
            slots = _task_slots(sc)
            if parts > slots:
                return (f"{parts} partitions (imnn.partitions) but {slots} task slots: a "
                        "barrier job runs every task at once")
            return None

        def _fit_loop(self, λ, α, min_iterations, patience, max_iterations, print_rate, carry):
            import pickle
            why = self._no_barrier()
            if why is not None:
                log(f"imnn: two Spark jobs an iteration ({why})")
                return super()._fit_loop(λ, α, min_iterations, patience, max_iterations,
                                         print_rate, carry)
            parts = self._all.rdd.getNumPartitions()
            log(f"imnn: the fit runs as one barrier Spark job of {parts} tasks, which exchange "
                "their sums every iteration")
            state = pickle.dumps(jax.tree_util.tree_map(np.asarray, carry))
            task = partial(_barrier_fit, self.cfg, self.layout, self.spec,
                           (λ, α, min_iterations, patience, max_iterations), state)
            try:
                got = self._all.rdd.barrier().mapPartitions(task).collect()
            except Exception as err:                # noqa: BLE001 - any failure: the other way
                self.jobs += 1
                log("imnn: the barrier job failed ("
                    + (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    + "); fitting again with two Spark jobs an iteration")
                return super()._fit_loop(λ, α, min_iterations, patience, max_iterations,
                                         print_rate, carry)
            out, passes = got[0]
            self.jobs += 1
            self.passes += passes
            self.barrier_jobs += 1
            return jax.tree_util.tree_map(jnp.asarray, pickle.loads(out))

        def get_summaries(self, w, key=None, validate=False):
            from gio_core.imnn import weights_to_bytes
            data = weights_to_bytes(w)
            if not validate and self._ahead is not None and self._ahead[0] == data:
                rows = self._ahead[1]
                self._ahead = None
                return self._ordered(rows, False)
            sc = self.spark.sparkContext
            weights = sc.broadcast(data)
            frame = self._all if validate else self._train
            try:
                got = (frame.mapInPandas(partial(_summaries_task, self.spec, weights),
                                         SUMMARY_ROWS).collect())
            finally:
                weights.unpersist()
            self.passes += 1
            self.jobs += 1
            rows = {s: [(r["kind"], r["indices"], r["x"], r["dx"]) for r in got
                        if r["split"] == s] for s in SPLITS}
            if validate:
                self._ahead = (data, rows["train"])
                return self._ordered(rows["validation"], True)
            return self._ordered(rows["train"], False)

        def get_gradient(self, w, g_x, g_dx, validate=False):
            from jax.flatten_util import ravel_pytree

            from gio_core.imnn import weights_to_bytes
            g_x, g_dx = np.asarray(g_x, np.float32), np.asarray(g_dx, np.float32)
            n_d = len(self._index["fiducial"])
            shared = self.spark.sparkContext.broadcast({
                "weights": weights_to_bytes(w),
                "fiducial_index": self._index["fiducial"], "fiducial_gx": g_x[:n_d],
                "gdx": g_dx, "remaining_index": self._index["remaining"],
                "remaining_gx": g_x[n_d:]})
            try:
                rows = (self._train
                        .mapInPandas(partial(_gradient_task, self.spec, shared), GRADIENT_ROWS)
                        .collect())
            finally:
                shared.unpersist()
            self.passes += 1
            self.jobs += 1
            flat, unravel = ravel_pytree(w)
            total = np.zeros(flat.size, np.float32)
            for r in sorted(rows, key=lambda r: r["partition"]):
                total += np.frombuffer(r["grad"], np.float32)
            return unravel(jnp.asarray(total))

    return LocalIMNN, SparkIMNN, BarrierIMNN


def _task_slots(sc) -> int:
    """How many tasks the cluster can run at once (what a barrier job needs): Spark's own count
    for the default resource profile, else the default parallelism."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(
            jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:                                   # noqa: BLE001 - a JVM without it
        return sc.defaultParallelism


def _partition_arrays(rows, layout) -> dict:
    """A barrier task's rows (split, kind, index, values, derivative) as arrays by split and
    kind, in index order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["split"], r["kind"]), []).append(r)
    out = {}
    for (split, kind), got in groups.items():
        got.sort(key=lambda r: r["index"])
        idx = np.array([r["index"] for r in got], np.int64)
        fid = np.asarray([r["values"] for r in got], np.float32).reshape(
            (len(got),) + tuple(layout.input_shape))
        der = (np.asarray([r["derivative"] for r in got], np.float32).reshape(
            (len(got),) + tuple(layout.derivative_shape)) if kind == "fiducial" else None)
        out[(split, kind)] = (idx, fid, der)
    return out


def _barrier_fit(cfg, layout, spec, args, state: bytes, rows):
    """One task of the fit's barrier job: the fit loop of :class:`BarrierIMNN` on its
    partition, from the driver's state; the first task sends the final state back."""
    import pickle

    from pyspark import BarrierTaskContext
    faults.point("imnn:barrier")
    _network(spec)                       # JAX's platform as the spec says, before JAX starts
    import jax
    import jax.numpy as jnp
    ctx = BarrierTaskContext.get()
    barrier_cls = _imnn_classes()[2]
    data = _partition_arrays(rows, layout)
    λ, α, min_iterations, patience, max_iterations = args
    with Exchange(ctx) as exchange:
        model = barrier_cls(cfg, layout, spec, data, exchange)
        carry = jax.tree_util.tree_map(jnp.asarray, pickle.loads(state))
        carry = model._fit_loop(λ, α, min_iterations, patience, max_iterations, None, carry)
    if ctx.partitionId() == 0:
        yield pickle.dumps(jax.tree_util.tree_map(np.asarray, carry)), model.passes


def build_imnn(spark, cfg: JobConfig, layout: Layout, frame: DataFrame, mode: str | None = None):
    """The table-backed IMNN for ``mode`` (default ``imnn.mode``): its ``fit``,
    ``get_summaries``, ``get_gradient`` and statistics are gio_core.imnn's."""
    configure_jax(cfg.runtime)
    local_cls, spark_cls, _ = _imnn_classes()
    spec = network_spec(cfg, layout, cfg.runtime.jax_platform)
    mode = mode or cfg.imnn.mode
    if mode == "local":
        return local_cls(spark, cfg, layout, spec)
    return spark_cls(spark, cfg, layout, spec, frame)


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------



def imnn_params(cfg: JobConfig) -> dict:
    """What changes the fit: every imnn option but the table, the id and the runtime knobs
    (mode, batch size and partitions change only the float rounding)."""
    import dataclasses
    return {k: v for k, v in dataclasses.asdict(cfg.imnn).items()
            if k not in ("simulations", "run_id") + RUNTIME_IMNN_OPTIONS}


@dataclass(frozen=True)
class IMNNPlan:
    fingerprint: str
    imnn_id: str
    version: int


def make_imnn_plan(spark, cfg: JobConfig) -> IMNNPlan:
    path = cfg.imnn.simulations
    version = _delta_version(spark, path)
    fp = reuse.fingerprint("imnn", {"simulations": {"path": os.path.abspath(path)
                                                    if "://" not in path else path,
                                                    "version": version},
                                    "params": imnn_params(cfg)})
    return IMNNPlan(fp, cfg.imnn.run_id or "imnn-" + fp[:12], version)


def _matrix(a) -> list:
    return [[float(v) for v in row] for row in np.asarray(a, np.float64)]


def save_history_plot(path: str, history: dict, title: str, expected: float | None) -> bool:
    """The fit's history as a PNG (to a temporary name, then renamed into place); False, with a
    warning, where matplotlib is not installed."""
    if plotting("imnn: the history plot", log) is None:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gio_core.imnn import plot_history
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig = Figure(figsize=(6, 10))
    FigureCanvasAgg(fig)
    ax = fig.subplots(3, 1, sharex=True)
    plot_history(history, ax=ax, expected_detF=expected, label="training")
    ax[0].set_title(title)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.part.png"
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    os.replace(tmp, path)
    return True


def _progress_logger(total: int, every_s: float = 30.0):
    """A progress hook for the fit: a log line every ``every_s`` seconds."""
    last = [time.perf_counter()]

    def progress(done: int, max_det_f: float, patience: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s:
            last[0] = now
            log(f"imnn: iteration {done}/{total}, max det F {max_det_f:.4g}, "
                f"{patience} without a new max")
    return progress


def run_imnn(spark, cfg: JobConfig, plan: IMNNPlan | None = None) -> dict:
    """Checks the simulations, fits (or reuses) the IMNN and commits its tables; returns the
    fit's summary (``imnn_id``, ``det_F``, ``max_det_F``, ``iterations``, ``reused``)."""
    import jax.numpy as jnp

    m = cfg.imnn
    plan = plan or make_imnn_plan(spark, cfg)
    out = cfg.output.path            # its tables were checked by check_outputs

    def compute():
        started = dt.datetime.now()
        t0 = time.perf_counter()
        frame, layout = read_simulations(spark, cfg)
        if layout.version != plan.version:
            raise ConcurrentRunError(f"imnn.simulations {layout.path!r} changed while the fit was "
                                     "being planned; run again.")
        log(f"imnn: {layout.n_s} training simulations ({layout.n_d} with derivatives"
            f"{', as many for validation' if layout.validation else ', no validation split'}), "
            f"input {list(layout.input_shape)}, {layout.n_params} parameters; {m.mode} mode")
        model = build_imnn(spark, cfg, layout, frame)
        try:
            try:
                model._check_start()
            except ValueError as err:
                raise InputError(f"imnn: {err}") from None
            model._start_checked = True
            check_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            model.progress = _progress_logger(m.max_iterations)
            model.fit(float(m.coupling), float(m.closeness), patience=m.patience,
                      min_iterations=m.min_iterations, max_iterations=m.max_iterations,
                      print_rate=None, best=m.best)
            fit_s = time.perf_counter() - t1
        finally:
            if hasattr(model, "release"):
                model.release()
        h = model.history
        iterations = len(h["detF"])
        if not np.all(np.isfinite(h["detF"])):
            raise RuntimeError("the IMNN fit diverged (a non-finite det F); lower "
                               "imnn.learning_rate.")
        det_f = float(jnp.linalg.det(model.F))
        stopped = "max_iterations" if iterations >= m.max_iterations else "patience"
        log(f"imnn: {iterations} iterations in {fit_s:.1f}s ({iterations / max(fit_s, 1e-9):.2f}/s),"
            f" stopped by {stopped}; det F {det_f:.4g} (max {float(h['max_detF']):.4g}"
            f"{', validation' if layout.validation else ''})")
        from gio_core.imnn import weights_to_bytes
        spec = network_spec(cfg, layout)
        history_rows = []
        for i in range(iterations):
            vals = []
            for prefix in ("", "val_"):
                for name in ("detF", "detC", "detinvC", "Λ2", "r", "loss"):
                    col = h.get(prefix + name)
                    vals.append(None if col is None else float(col[i]))
            history_rows.append((plan.imnn_id, plan.fingerprint, i, *vals))
        sims = {"path": layout.path, "version": layout.version, "n_s": layout.n_s,
                "n_d": layout.n_d, "validation": layout.validation,
                "input_shape": list(layout.input_shape), "derivatives": layout.mode}
        fit_row = (plan.imnn_id, plan.fingerprint, started, dt.datetime.now(),
                   json.dumps(cfg.recorded(), default=str), json.dumps(sims),
                   json.dumps({k: spec[k] for k in ("hidden", "activation", "n_summaries",
                                                     "input_shape", "n_params", "mode",
                                                     "delta_theta")}),
                   [float(v) for v in m.theta_fid], WEIGHTS_FORMAT,
                   bytearray(weights_to_bytes(model.w)), bytearray(weights_to_bytes(model.final_w)),
                   _matrix(model.F), _matrix(model.C), _matrix(model.invC), _matrix(model.invF),
                   _matrix(model.dμ_dθ), [float(v) for v in np.asarray(model.μ)], det_f,
                   float(h["max_detF"]), iterations, stopped, m.mode,
                   json.dumps({"check_s": round(check_s, 3), "fit_s": round(fit_s, 3),
                               "iterations_per_s": round(iterations / max(fit_s, 1e-9), 3),
                               "passes": model.passes}),
                   json.dumps(library_versions()))
        return history_rows, fit_row, h, det_f, iterations

    def commit(computed):
        history_rows, fit_row, h, det_f, iterations = computed
        tables.replace_key(spark, spark.createDataFrame(history_rows, tables.IMNN_HISTORY), out,
                           "imnn_history", plan.imnn_id)
        tables.replace_key(spark, spark.createDataFrame([fit_row], tables.IMNN_FITS), out, "imnn_fits",
                           plan.imnn_id)
        plot = os.path.join(out, "plots", f"{plan.imnn_id}_history.png")
        if tables.put_file(spark, plot, lambda path: save_history_plot(
                path, h, f"{plan.imnn_id}: det F {det_f:.3g}", m.expected_det_f)):
            log(f"imnn: history plot in {plot}")
        log(f"imnn: fit {plan.imnn_id} -> {tables.table_path(out, 'imnn_fits')}")
        return ({"imnn_id": plan.imnn_id, "det_F": det_f, "max_det_F": float(h["max_detF"]),
                 "iterations": iterations, "reused": False},
                {"det_F": det_f, "iterations": iterations})

    def reused():
        row = (tables.read_key(spark, out, "imnn_fits", plan.imnn_id)
               .where(F.col("imnn_fingerprint") == plan.fingerprint).first())
        if row is None:
            raise ConcurrentRunError(f"the fit {plan.imnn_id} under {out!r} was replaced by "
                                     "another run with the same id; run again.")
        log(f"imnn: reusing fit {plan.imnn_id} (det F {row['det_F']:.4g}, "
            f"{row['iterations']} iterations)")
        return {"imnn_id": plan.imnn_id, "det_F": row["det_F"], "max_det_F": row["max_det_F"],
                "iterations": row["iterations"], "reused": True}

    return run_stage(spark, out, "imnn", plan.imnn_id, plan.fingerprint, compute, commit,
                     reused)


# ---------------------------------------------------------------------------
# The tutorial's simulations, and fits loaded back
# ---------------------------------------------------------------------------

EXAMPLE_PROPERTY = "gio-spark.imnn-example"


def write_example(spark, path: str, n_s: int = 1000, n_d: int = 1000, seed: int = 0,
                  theta_fid=(0.0, 1.0), input_shape=(10,)) -> bool:
    """Writes the tutorial's simulations (Gaussian mean and variance, ``input_shape`` draws)
    to a Delta table at ``path`` in one transaction; returns False when the table is there
    already with the same example (nothing written).

    Raises:
      InputError: ``path`` holds something else.
    """
    import jax

    from gio_core.imnn import example_simulations
    check_delta(spark)
    spec = json.dumps({"n_s": n_s, "n_d": n_d, "seed": seed, "theta_fid": list(theta_fid),
                       "input_shape": list(input_shape)}, sort_keys=True)
    from delta.tables import DeltaTable
    if os.path.exists(path.removeprefix("file:")) or "://" in path:
        if tables.exists(spark, path):
            props = {r[0]: r[1] for r in spark.sql(
                f"SHOW TBLPROPERTIES delta.`{os.path.abspath(path)}`").collect()}
            if props.get(EXAMPLE_PROPERTY) == spec:
                return False
            raise InputError(f"imnn.simulations {path!r} is a Delta table already, not the "
                             "example with these settings; point imnn.simulations at a new "
                             "path to write the example there.")
        if "://" not in path and os.listdir(path):
            raise InputError(f"imnn.simulations {path!r} exists and is not empty; point it at "
                             "a new path to write the example there.")
    sims = example_simulations(jax.random.PRNGKey(seed), n_s=n_s, n_d=n_d, θ_fid=theta_fid,
                               input_shape=input_shape)
    rows = []
    for split, prefix in (("train", ""), ("validation", "validation_")):
        fid, der = sims[prefix + "fiducial"], sims[prefix + "derivative"]
        for i in range(n_s):
            rows.append((split, "fiducial" if i < n_d else "remaining", i,
                         fid[i].reshape(-1).tolist(),
                         der[i].reshape(-1).tolist() if i < n_d else None))
    df = spark.createDataFrame(rows, SIMULATIONS).repartition(2)
    location = os.path.abspath(path) if "://" not in path else path
    (DeltaTable.createIfNotExists(spark).location(location).addColumns(SIMULATIONS)
     .property(EXAMPLE_PROPERTY, spec).execute())
    df.write.format("delta").mode("append").save(location)
    return True


def load_estimator(spark, output: str, imnn_id: str | None = None):
    """A committed fit as a :class:`gio_core.imnn.Estimator` (``estimate(d)`` gives
    score-compressed parameter estimates; ``F``, ``invF``, ``summaries(d)``).

    Raises:
      InputError: no such fit, or several fits under ``output`` and no ``imnn_id``.
    """
    import jax

    from gio_core import imnn
    imnn_id, fp = stored_run(
        spark, output, "imnn_fits", "imnn", imnn_id,
        missing=f"there are no IMNN fits under {output!r}; run gio-spark imnn first.",
        several=("IMNN fits", "name the one to load"),
        incomplete=lambda run_id, ids: f"IMNN fit {run_id!r} is not complete under {output!r}; "
                                       "run gio-spark imnn first.")
    row = (tables.read_key(spark, output, "imnn_fits", imnn_id)
           .where(F.col("imnn_fingerprint") == fp).first())
    if row is None:
        raise ConcurrentRunError(f"the fit {imnn_id} under {output!r} was replaced by another "
                                 "run with the same id; load it again.")
    if row["weights_format"] != WEIGHTS_FORMAT:
        raise InputError(f"fit {imnn_id} was stored as {row['weights_format']!r}, which this "
                         f"version of gio-spark does not read ({WEIGHTS_FORMAT!r}).")
    net = json.loads(row["network"])
    init, apply_fn = imnn.mlp(net["hidden"], net["n_summaries"], net["activation"])
    _, template = init(jax.random.PRNGKey(0), tuple(net["input_shape"]))
    w = imnn.weights_from_bytes(bytes(row["weights"]), template)
    return imnn.Estimator(apply_fn, w, np.asarray(row["theta_fid"], np.float32),
                          np.asarray(row["F"], np.float32), np.asarray(row["invF"], np.float32),
                          np.asarray(row["invC"], np.float32),
                          np.asarray(row["dmu_dtheta"], np.float32),
                          np.asarray(row["mu"], np.float32))


def imnn_command(spark, cfg: JobConfig, registry) -> None:
    check_outputs(spark, cfg, None)
    run_imnn(spark, cfg, make_imnn_plan(spark, cfg))


def imnn_example_command(spark, cfg: JobConfig, registry) -> None:
    check_outputs(spark, cfg, None)
    if write_example(spark, cfg.imnn.simulations):
        log(f"imnn-example: the tutorial's simulations -> {cfg.imnn.simulations}")
    else:
        log(f"imnn-example: reusing the tutorial's simulations in {cfg.imnn.simulations}")
    run_imnn(spark, cfg, make_imnn_plan(spark, cfg))


REQUIRES = ("the config has no imnn stage: set imnn.simulations to the Delta table of "
            "simulations (and imnn.theta_fid to the fiducial parameters); conf/imnn.yaml is an "
            "example.")
STAGE = Stage(
    "imnn", "fit an IMNN's summaries from simulations in Delta (--local: stream them through "
    "the driver)", "imnn", no_sides, needs=(), outputs=("imnn_history", "imnn_fits"),
    command=imnn_command, requires=REQUIRES)
# The tutorial: its simulations written first (a table of the user's, not an output), then the
# imnn stage.
EXAMPLE = Stage(
    "imnn-example", "write the IMNN tutorial's simulations to imnn.simulations, then fit them",
    "imnn", no_sides, needs=(), outputs=("imnn_history", "imnn_fits"),
    command=imnn_example_command, requires=REQUIRES, log_names=("imnn",))
