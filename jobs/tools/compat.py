"""The GIO source's ``GIOKL`` with its Spark methods, for scripts written against it.

``from jobs.tools.compat import GIOKL`` gives ``fit`` and ``calculate_statistical_distance`` of
:class:`gio_core.GIOKL` plus the source's ``quantize``, ``explode``, ``read_data_from_csv`` and
``read_data_from_parquet`` with their signatures. Differences from the source:

* ``explode`` matches the chosen centroids to cluster ids by nearest centroid (a float32 round
  trip no longer loses matches), and reports centroids it cannot match;
* ``quantize`` accepts array or vector ``features`` columns;
* the session is built by :func:`jobs.io.session.build_session` (Delta configured), or passed in.
"""
from __future__ import annotations

import random

import numpy as np
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gio_core.compat import GIOKL as _NumericGIOKL
from jobs.io.session import build_session


class GIOKL(_NumericGIOKL):
    """Drop-in for ``GIO.GIOKL.GIOKL``.

    Example:
      >>> gio_kl = GIOKL(uniform_low=-1, uniform_high=1, uniform_start_size=20, dim=768)
      >>> train_df, target_df = gio_kl.read_data_from_csv(PATH_TO_TRAIN, PATH_TO_TARGET)
      >>> model_train, model_X, transformed_train, transformed_X = gio_kl.quantize(train_df, target_df)
    """

    def __init__(self, uniform_low=-1, uniform_high=1, uniform_start_size=20, dim=768, seed=None,
                 spark=None):
        super().__init__(uniform_low, uniform_high, uniform_start_size, dim, seed)
        if spark is None:
            spark = build_session("gio-spark-compat")
        self.spark = spark

    def _return_kmeans(self, df, k, rseed):
        from pyspark.ml.clustering import KMeans
        from pyspark.ml.functions import array_to_vector
        features = df
        if isinstance(df.schema["features"].dataType, T.ArrayType):
            features = df.withColumn("features", array_to_vector("features"))
        model = KMeans().setK(k).setSeed(rseed).fit(features.select("features"))
        return model, model.transform(features)

    def quantize(self, df_train, df_x, k=1500, rseed="auto", rseed1=234, rseed2=456):
        """K-means on the train and target frames (column ``features``), as in the source."""
        if rseed == "auto":
            draw = random.randint if self.seed is None else (
                lambda lo, hi: int(np.random.default_rng(self.seed).integers(lo, hi + 1)))
            rseed1 = draw(-1000, 1000)
            rseed2 = draw(-1000, 1000)
        model_train, transformed_train = self._return_kmeans(df_train, k, rseed1)
        model_x, transformed_x = self._return_kmeans(df_x, k, rseed2)
        return model_train, model_x, transformed_train, transformed_x

    def _read_features(self, df):
        return df.withColumn("features", F.col("features").cast("array<double>"))

    def read_data_from_csv(self, path, path_X, delim="\t"):
        """Tab-separated ``_c0, _c1, _c2`` files with a vector string in ``_c2``."""
        def read(p):
            df = self.spark.read.option("delimiter", delim).csv(p)
            return df.withColumn("features", F.from_json(F.col("_c2"), "array<double>"))
        return read(path), read(path_X)

    def read_data_from_parquet(self, path, path_X):
        """Parquet with an array ``features`` column."""
        return (self._read_features(self.spark.read.parquet(path)),
                self._read_features(self.spark.read.parquet(path_X)))

    def explode(self, chosen_centroids, kmeans_transformed_df, kmeans_centroids_df):
        """Rows of the clusters whose centroids were chosen: ``(i, id)`` joined with the
        transformed frame on ``id == prediction``, as in the source."""
        rows = sorted(((int(r[0]), np.asarray(r[1], np.float64))
                       for r in kmeans_centroids_df.collect()), key=lambda r: r[0])
        ids = np.array([r[0] for r in rows])
        centres = np.stack([r[1] for r in rows])
        chosen = np.asarray(chosen_centroids, np.float64).reshape(-1, centres.shape[1])
        d2 = ((chosen[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        nearest = d2.argmin(axis=1)
        scale = np.maximum(1.0, (centres ** 2).sum(1)[nearest])
        matched = d2[np.arange(len(chosen)), nearest] <= 1e-6 * scale
        paired = [int(ids[j]) for j, ok in zip(nearest, matched, strict=True) if ok]
        self.unmatched_ = int((~matched).sum())
        pairs = self.spark.createDataFrame(list(enumerate(paired)), "i long, id long")
        return pairs.join(kmeans_transformed_df, F.col("id") == F.col("prediction"))


# As gio_core's: ``GIOKL.GIOKL(...)`` (the source README's pattern) builds this class, Spark
# methods included, not the numerics-only one it inherits the attribute from.
GIOKL.GIOKL = GIOKL  # type: ignore[attr-defined]  # (the class body cannot name it)
