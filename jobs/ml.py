"""Spark ML estimators: GIO selection and DII feature weights as ``pyspark.ml`` stages.

    >>> from pyspark.ml import Pipeline
    >>> from pyspark.ml.feature import VectorAssembler
    >>> from jobs.ml import GIOSelector
    >>> pipe = Pipeline(stages=[VectorAssembler(inputCols=["x", "y"], outputCol="features"),
    ...                         GIOSelector(featuresCol="features", idCol="id", maxRows=10_000)])
    >>> model = pipe.fit(target_df)                   # doctest: +SKIP
    >>> model.transform(pool_df).where("selected")    # doctest: +SKIP
    >>> model.write().overwrite().save("s3a://bucket/models/gio")   # doctest: +SKIP

Both follow the conventions of ``pyspark.ml``: Params with docs and defaults (``explainParams``),
``fit``/``transform``, ``save``/``load`` (also inside a saved ``PipelineModel``). They run the
project's own stages through :mod:`jobs.api`, so a selector picks the rows
:func:`jobs.select_rows` picks on the same data and settings, and a weigher learns the weights
``gio-spark weigh`` learns.

- :class:`GIOSelector` ``fit(target)`` keeps the target's rows (a snapshot, written with the
  model when it is saved); :class:`GIOSelectorModel` ``transform(pool)`` runs the selection and
  returns the pool's rows with ``selected`` and ``gio_rank`` (the order GIO picked the row in
  where the row step picked it, as it does by default, else the pick that chose its cluster;
  null when not selected), or, with ``onlySelected``, the selected rows alone.
- :class:`DIIWeigher` ``fit(df)`` learns the weights of the features (``featuresCol``, a vector
  column, or ``inputCols``, numeric columns) against ``targetCols`` (numeric columns, one vector
  column or one label column); :class:`DIIWeigherModel` ``transform(df)`` adds ``outputCol``,
  the features multiplied by the scaled weights, as an MLlib vector.
"""
from __future__ import annotations

import os

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasInputCols, HasOutputCol
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable,
                             DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.api import learn_weights, select_rows
from jobs.common.errors import InputError
from jobs.common.frames import is_ml_vector
from jobs.io.sources import row_id_expr

_ROW = "gio_row_id"


def _optional(name: str, doc: str) -> Param:
    return Param(Params._dummy(), name, doc, TypeConverters.identity)


class _RunParams(Params):
    """What every gio-spark estimator takes: where its runs go, extra config keys, row ids."""
    idCol = _optional("idCol", "column identifying a row (text or number); None: rows are "
                               "identified by their content")
    outputPath = _optional("outputPath", "folder or object-store URL for the run's Delta tables "
                                         "(reused by a re-run); None: a temporary folder (local "
                                         "Spark only)")
    settings = _optional("settings", "any other gio-spark config keys, as a dict of dotted "
                                     "names to values, e.g. {'quantize.target_k': 200}")

    def getIdCol(self):
        return self.getOrDefault(self.idCol)

    def getOutputPath(self):
        return self.getOrDefault(self.outputPath)

    def getSettings(self) -> dict:
        return dict(self.getOrDefault(self.settings) or {})


class _GIOParams(HasFeaturesCol, _RunParams):
    k = _optional("k", "neighbours of the KL estimator (select.k); None: the config's, 5")
    poolK = _optional("poolK", "pool clusters (quantize.pool_k): a number or 'auto'; None: auto")
    targetK = _optional("targetK", "target clusters (quantize.target_k); None: the config's, "
                                   "1500, capped at the target's rows")
    maxRows = _optional("maxRows", "row budget: stop once the picked clusters hold this many "
                                   "rows (select.max_rows); None: no budget")
    maxFraction = _optional("maxFraction", "row budget as a share of the pool's rows "
                                           "(select.max_fraction); None: none")
    selectedCol = Param(Params._dummy(), "selectedCol", "name of the added boolean column",
                        TypeConverters.toString)
    rankCol = Param(Params._dummy(), "rankCol", "name of the added pick-order column (null for "
                    "rows not selected)", TypeConverters.toString)
    onlySelected = Param(Params._dummy(), "onlySelected", "transform returns the selected rows "
                         "alone (with cluster_id, the rank and run_id) instead of every pool "
                         "row with selectedCol and rankCol", TypeConverters.toBoolean)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", idCol=None, outputPath=None, settings=None,
                         k=None, poolK=None, targetK=None, maxRows=None, maxFraction=None,
                         selectedCol="selected", rankCol="gio_rank", onlySelected=False)

    def _select_settings(self) -> dict:
        sets = self.getSettings()
        for key, param in (("select.k", self.k), ("quantize.pool_k", self.poolK),
                           ("quantize.target_k", self.targetK)):
            value = self.getOrDefault(param)
            if value is not None:
                sets[key] = value
        return sets


def _check_column(df: DataFrame, column: str, param: str, what: str) -> None:
    if column not in df.columns:
        raise InputError(f"{param} {column!r} is not a column of the {what}; its columns are: "
                         f"{', '.join(df.columns)}.")


class GIOSelector(Estimator, _GIOParams, DefaultParamsReadable, DefaultParamsWritable):
    """GIO selection as a Spark ML estimator: ``fit`` on the target, ``transform`` a pool.

    ``featuresCol`` holds text (embedded with ``embed.model``, set through ``settings``) or
    vectors (arrays or MLlib vectors, used as they are); the target and the pool name it alike.
    """

    @keyword_only
    def __init__(self, *, featuresCol="features", idCol=None, outputPath=None, settings=None,
                 k=None, poolK=None, targetK=None, maxRows=None, maxFraction=None,
                 selectedCol="selected", rankCol="gio_rank", onlySelected=False):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol="features", idCol=None, outputPath=None, settings=None,
                  k=None, poolK=None, targetK=None, maxRows=None, maxFraction=None,
                  selectedCol="selected", rankCol="gio_rank", onlySelected=False):
        return self._set(**self._input_kwargs)

    def _fit(self, target: DataFrame) -> "GIOSelectorModel":
        _check_column(target, self.getFeaturesCol(), "featuresCol", "target")
        if self.getIdCol() is not None:
            _check_column(target, self.getIdCol(), "idCol", "target")
        model = GIOSelectorModel()
        model._target = target.localCheckpoint(eager=True)
        return self._copyValues(model)


class GIOSelectorModel(Model, _GIOParams, MLWritable, MLReadable):
    """A fitted :class:`GIOSelector`: the target's rows, and the settings."""

    def __init__(self) -> None:
        super().__init__()
        self._target: DataFrame | None = None

    @property
    def target(self) -> DataFrame:
        """The target rows the model selects for."""
        return self._target

    def setOnlySelected(self, value: bool) -> "GIOSelectorModel":
        return self._set(onlySelected=value)

    def _transform(self, pool: DataFrame) -> DataFrame:
        column = self.getFeaturesCol()
        _check_column(pool, column, "featuresCol", "pool")
        texts = isinstance(pool.schema[column].dataType, T.StringType)
        columns = {"text_column": column} if texts else {"embedding_column": column}
        # Rows are identified by idCol, or else by their content under a column of the
        # model's own, which the selected rows keep and the join below matches on.
        id_col = self.getIdCol()
        keyed = pool.withColumn(_ROW, row_id_expr([f"`{c}`" for c in pool.columns], id_col))
        target = self._target.withColumn(_ROW, row_id_expr(
            [f"`{c}`" for c in self._target.columns], id_col))
        chosen = select_rows(keyed, target, output=self.getOutputPath(), id_column=_ROW,
                             max_rows=self.getOrDefault(self.maxRows),
                             max_fraction=self.getOrDefault(self.maxFraction),
                             settings=self._select_settings(), spark=pool.sparkSession,
                             **columns)
        rank = self.getOrDefault(self.rankCol)
        if self.getOrDefault(self.onlySelected):
            return chosen.drop(_ROW).withColumnRenamed("rank", rank)
        picked = chosen.select(_ROW, F.col("rank").alias(rank))
        return (keyed.join(picked, _ROW, "left")
                .select(*pool.columns,
                        F.col(rank).isNotNull().alias(self.getOrDefault(self.selectedCol)), rank))

    def write(self) -> MLWriter:
        return _Writer(self, data=lambda m, path: m._target.write.parquet(path))

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls, data=lambda m, spark, path, meta: setattr(
            m, "_target", spark.read.parquet(path)))


class _DIIParams(HasFeaturesCol, HasInputCols, HasOutputCol, _RunParams):
    targetCols = Param(Params._dummy(), "targetCols", "space B: numeric columns, one vector "
                       "column or one label column (weigh.b_columns; weigh.b_type in settings "
                       "when the types do not tell)", TypeConverters.toListString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", outputCol="weighted_features", idCol=None,
                         outputPath=None, settings=None)

    def _space_a(self, df: DataFrame):
        """Space A as an array<double> column: ``inputCols`` when set, else ``featuresCol``."""
        if self.isSet(self.inputCols):
            for c in self.getInputCols():
                _check_column(df, c, "inputCols", "data")
            return F.array(*[F.col(c).cast("double") for c in self.getInputCols()])
        column = self.getFeaturesCol()
        _check_column(df, column, "featuresCol", "data")
        if is_ml_vector(df.schema[column].dataType):
            return vector_to_array(F.col(column), "float64")
        return F.col(column).cast("array<double>")


class DIIWeigher(Estimator, _DIIParams, DefaultParamsReadable, DefaultParamsWritable):
    """Feature weights by the Differentiable Information Imbalance, as a Spark ML estimator."""

    @keyword_only
    def __init__(self, *, featuresCol="features", inputCols=None, targetCols=None,
                 outputCol="weighted_features", idCol=None, outputPath=None, settings=None):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol="features", inputCols=None, targetCols=None,
                  outputCol="weighted_features", idCol=None, outputPath=None, settings=None):
        return self._set(**self._input_kwargs)

    def _fit(self, df: DataFrame) -> "DIIWeigherModel":
        if not self.isSet(self.targetCols):
            raise InputError("DIIWeigher needs targetCols: the columns of space B (numeric "
                             "columns, one vector column or one label column).")
        spaces = ({"a_columns": self.getInputCols()} if self.isSet(self.inputCols)
                  else {"embedding_column": self.getFeaturesCol()})
        rows = learn_weights(df, self.getOrDefault(self.targetCols), id_column=self.getIdCol(),
                             output=self.getOutputPath(), settings=self.getSettings(),
                             spark=df.sparkSession, **spaces).collect()
        model = DIIWeigherModel()
        model._set_weights(rows[0]["weights_id"], [r["name"] for r in rows],
                           [r["weight"] for r in rows], [r["scaled"] for r in rows])
        return self._copyValues(model)


class DIIWeigherModel(Model, _DIIParams, MLWritable, MLReadable):
    """A fitted :class:`DIIWeigher`: one weight per feature of space A."""

    def __init__(self) -> None:
        super().__init__()
        self._set_weights(None, [], [], [])

    def _set_weights(self, weights_id, names, weights, scaled) -> None:
        self.weightsId = weights_id
        self.featureNames = list(names)
        self.weights = np.asarray(weights, np.float64)         # as learnt
        self.scaledWeights = np.asarray(scaled, np.float64)    # divided by the largest

    def _transform(self, df: DataFrame) -> DataFrame:
        factors = F.array(*[F.lit(float(v)) for v in self.scaledWeights])
        a = self._space_a(df)
        size = len(self.scaledWeights)
        checked = F.when(F.size(a) == size, a).otherwise(F.raise_error(F.concat(
            F.lit("DIIWeigherModel: a row has "), F.size(a).cast("string"),
            F.lit(f" features; the weights were learnt for {size}."))))
        weighted = F.zip_with(checked, factors, lambda x, s: x * s)
        return df.withColumn(self.getOutputCol(), array_to_vector(weighted))

    def write(self) -> MLWriter:
        return _Writer(self, extra=lambda m: {
            "weights_id": m.weightsId, "names": m.featureNames,
            "weights": [float(v) for v in m.weights],
            "scaled": [float(v) for v in m.scaledWeights]})

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls, data=None, extra=lambda m, meta: m._set_weights(
            meta["weights_id"], meta["names"], meta["weights"], meta["scaled"]))


class _Writer(MLWriter):
    """Params as ``DefaultParamsWriter`` writes them (so ``PipelineModel`` reads them), plus the
    model's data: extra metadata, or a folder ``data`` written by ``data(model, path)``."""

    def __init__(self, instance, data=None, extra=None) -> None:
        super().__init__()
        self.instance, self._data, self._extra = instance, data, extra

    def saveImpl(self, path: str) -> None:
        extra = self._extra(self.instance) if self._extra else None
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata=extra)
        if self._data is not None:
            self._data(self.instance, os.path.join(path, "data"))


class _Reader(MLReader):
    def __init__(self, cls, data=None, extra=None) -> None:
        super().__init__()
        self.cls, self._data, self._extra = cls, data, extra

    def load(self, path: str):
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls()
        instance._resetUid(meta["uid"])
        DefaultParamsReader.getAndSetParams(instance, meta)
        if self._extra is not None:
            self._extra(instance, meta)
        if self._data is not None:
            self._data(instance, self.sparkSession, os.path.join(path, "data"), meta)
        return instance
