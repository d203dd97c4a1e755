"""The GIO source's ``GIOKL`` with its Spark methods, for scripts written against it.

``from jobs.tools.compat import GIOKL`` gives ``fit`` and ``calculate_statistical_distance`` of
:class:`gio_core.GIOKL` plus the source's ``quantize``, ``explode``, ``read_data_from_csv`` and
``read_data_from_parquet`` with their signatures. Differences from the source:

* ``explode`` matches the chosen centroids to cluster ids by nearest centroid (a float32 round
  trip no longer loses matches), and reports centroids it cannot match;
* ``quantize`` accepts array or vector ``features`` columns;
* the session is built by :func:`jobs.io.session.build_session` (Delta configured), or passed in.

``GenerateEmbeddings`` is the source's helper (one text per line in, one vector per line out,
written as the source writes it), on the model gio-spark embeds with. Differences: the model's
name ``bundled``, ``all-MiniLM-L6-v2`` or ``sentence-transformers/all-MiniLM-L6-v2`` loads the
bundled copy of that model (no model hub needed); ``device="cuda"`` (the source's default) falls
back to the CPU, with a warning, where no GPU is seen. For a large corpus, embed inside Spark
instead: ``gio-spark embed`` or ``jobs.run_stage("embed", ...)``.
"""
from __future__ import annotations

import random
import time
import warnings

import numpy as np
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gio_core.compat import GIOKL as _NumericGIOKL
from jobs.io.encoders import load_model
from jobs.io.session import build_session

# Names of the model gio-spark bundles: loaded from the bundled copy, not a model hub.
BUNDLED_NAMES = ("bundled", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


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


class GenerateEmbeddings:
    """Drop-in for ``GIO.generate_text_embeddings.GenerateEmbeddings``: sentence embeddings of a
    text file, one line per text, written one vector per line as ``[0.1, -0.2, ...]``.

    Example:
      >>> GenerateEmbeddings("all-MiniLM-L6-v2", device="cpu").generate_embeddings(
      ...     "target.txt", "target_embeddings.txt")
    """

    def __init__(self, model_name, device="cuda"):
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                warnings.warn(f"device {device!r}: no GPU is seen here; embedding on the CPU.",
                              stacklevel=2)
                device = "cpu"
        name = "bundled" if model_name in BUNDLED_NAMES else model_name
        self.model = load_model(name, device)
        self.device = device

    def generate_embeddings(self, input_file_path, output_file_path):
        """Embeds every line of ``input_file_path`` (its newline kept, as the source reads it)
        and writes the vectors to ``output_file_path``, one per line, in the same order."""
        print("Reading File...")
        with open(input_file_path, encoding="utf-8") as fp:
            sentences = fp.readlines()
        print("Generating Embeddings... This May Take a While")
        start = time.time()
        embeddings = self.model.encode(sentences, device=self.device)
        print("Time Taken (s): " + str(time.time() - start))
        print("Writing Embeddings.. This May Take a While")
        with open(output_file_path, "w", encoding="utf-8") as out:
            for vector in embeddings:
                out.write(str(vector.tolist()).strip() + "\n")


# As gio_core's: ``GIOKL.GIOKL(...)`` (the source README's pattern) builds this class, Spark
# methods included, not the numerics-only one it inherits the attribute from.
GIOKL.GIOKL = GIOKL  # type: ignore[attr-defined]  # (the class body cannot name it)
