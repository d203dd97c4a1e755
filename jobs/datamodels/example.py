"""The datamodels example: scikit-learn's digits, a small classifier per random half.

Each model ``index`` draws its mask (each of the ``train_size`` training digits in with
probability ``alpha``, seeded by ``seed`` and the index), trains a multinomial logistic
regression on those digits, and returns the mask and its correct-class margins (the correct
class's logit minus the largest other one) on ``targets`` target digits that no model trains
on. ``main`` follows the datamodels contract, so the workers run it as they run a user's:

    gio-spark datamodels example --config conf/datamodels.yaml

The training and target digits are a fixed split of the 1,797 digits (by ``seed``).
:func:`write_tables` writes them as the config's ``pool`` and ``target`` Delta tables
(``index``, ``pixels``, ``label``), so a datamodels selection (and GIO) can pick among the
training digits and ``gio-spark train`` can train on the picks.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

EXAMPLE_PROPERTY = "gio-spark.datamodels-example"


def digits_split(train_size: int = 200, targets: int = 100, seed: int = 0):
    """``(pixels [1797, 64] in [0, 1], labels, training positions, target positions)``."""
    from sklearn.datasets import load_digits
    pixels, labels = load_digits(return_X_y=True)
    if train_size + targets > len(labels):
        raise ValueError(f"train_size + targets = {train_size + targets} is more than the "
                         f"{len(labels)} digits.")
    order = np.random.default_rng(seed).permutation(len(labels))
    return (pixels.astype(np.float32) / 16.0, labels, order[:train_size],
            order[train_size:train_size + targets])


def main(*, index: int, logdir: str, train_size: int = 200, targets: int = 100,
         alpha: float = 0.5, seed: int = 0, C: float = 1.0):
    """One model: its mask over the training digits and its margins on the target digits."""
    from sklearn.linear_model import LogisticRegression
    del logdir                               # nothing to keep besides the returned arrays
    pixels, labels, train, target = digits_split(train_size, targets, seed)
    mask = np.random.default_rng([seed, index]).random(train_size) < alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # lbfgs' iteration-limit notes on tiny subsets
        model = LogisticRegression(C=C, max_iter=300).fit(pixels[train][mask],
                                                           labels[train][mask])
    logits = np.full((len(target), 10), -np.inf)
    logits[:, model.classes_] = model.decision_function(pixels[target])
    truth = labels[target]
    correct = logits[np.arange(len(target)), truth]
    logits[np.arange(len(target)), truth] = -np.inf
    return {"masks": mask, "margins": (correct - logits.max(axis=1)).astype(np.float32)}


def _rows(pixels, labels, positions):
    return [(i, pixels[p].tolist(), int(labels[p])) for i, p in enumerate(positions)]


def write_tables(spark, cfg) -> dict:
    """Writes the training digits to ``pool.path`` and the target digits to ``target.path``
    (Delta, one transaction each) where the config names Delta tables that do not exist yet;
    returns ``{side: path}`` of those written. A table already there must hold the same
    example (its property says which), or the command stops.

    Raises:
      InputError: a table there holds something else.
    """
    # Imported here, not at the top: this module is also the training function's module, which
    # every Spark task imports; the tasks need neither Spark's Python API nor Delta.
    from delta.tables import DeltaTable
    from pyspark.sql import types as T

    from jobs.common.errors import InputError
    from jobs.io import tables
    args = cfg.datamodels.args
    settings = {k: args[k] for k in ("train_size", "targets", "seed") if k in args}
    pixels, labels, train, target = digits_split(**settings)
    schema = T.StructType([T.StructField("index", T.LongType(), False),
                           T.StructField("pixels", T.ArrayType(T.FloatType(), False), False),
                           T.StructField("label", T.IntegerType(), False)])
    written = {}
    for side, positions in (("pool", train), ("target", target)):
        src = getattr(cfg, side)
        if src.format != "delta" or not src.path:
            continue
        spec = json.dumps({"side": side, **settings}, sort_keys=True)
        path = src.path
        location = os.path.abspath(path) if "://" not in path else path
        if os.path.exists(path.removeprefix("file:")) or "://" in path:
            if tables.exists(spark, path):
                props = dict(DeltaTable.forPath(spark, path).detail().select("properties")
                             .first()["properties"] or {})
                if props.get(EXAMPLE_PROPERTY) == spec:
                    continue
                raise InputError(f"{side}.path {path!r} is a Delta table already, not the "
                                 "datamodels example's digits with these settings; point it at "
                                 "a new path.")
            if "://" not in path and os.listdir(path):
                raise InputError(f"{side}.path {path!r} exists and is not empty; point it at a "
                                 "new path for the example's digits.")
        (DeltaTable.createIfNotExists(spark).location(location).addColumns(schema)
         .property(EXAMPLE_PROPERTY, spec).execute())
        (spark.createDataFrame(_rows(pixels, labels, positions), schema).coalesce(1).write
         .format("delta").mode("append").save(location))
        written[side] = path
    return written


def format_report(cfg, fit: dict) -> str:
    """The example's closing lines."""
    lines = [f"datamodels example: {fit['targets']} target digits, {fit['training_examples']} "
             f"training digits; {fit['nonzeros_mean']:.1f} nonzero weights per target"]
    if fit.get("test_r_mean") is not None:
        lines.append(f"  held-out models: the datamodels' predicted margins correlate with the "
                     f"true ones at r = {fit['test_r_mean']:.3f} (mean over targets)")
    lines.append(f"  fit {fit['regress_id']} in {cfg.output.path} (datamodels_weights, "
                 "datamodels_fits, datamodels_regressions)")
    return "\n".join(lines)
