"""Frame helpers every stage shares: the names of the row-id and vector columns, and the one
seeded order of the project.

Determinism rule: wherever a stage takes *some* rows (a sample, the first rows of a cluster, the
rows k-means++ starts from) it takes those with the least ``xxhash64(seed, row_id)``, ties broken
by the row id. The hash depends on nothing but the seed and the id, so neither the sources' row
order nor their partitioning changes which rows are taken, or in what order.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

ROW_ID = "row_id"
EMBEDDING = "embedding"


def is_ml_vector(dtype: T.DataType) -> bool:
    """An MLlib vector column's type (``pyspark.ml`` or ``pyspark.mllib``; its type name is
    ``vectorudt``, its short form ``vector``)."""
    return isinstance(dtype, T.UserDefinedType) and dtype.simpleString() == "vector"


def seed_hash(seed: int, column: str = ROW_ID) -> Column:
    """``xxhash64(seed, <column>)``: the seeded order's key (``seed`` first, then the id)."""
    return F.xxhash64(F.lit(int(seed)), F.col(column))


def seeded_order(frame: DataFrame, seed: int, column: str = ROW_ID) -> DataFrame:
    """``frame`` ordered by :func:`seed_hash`, ties by the id."""
    return frame.orderBy(seed_hash(seed, column), F.col(column))


def seeded_sample(frame: DataFrame, n: int, seed: int, keep_hash: str | None = None) -> DataFrame:
    """The ``n`` rows of ``frame`` first in the seeded order, in that order. ``keep_hash``: keep
    the hash as a column of that name (to order by it again later).

    Example::

        seeded_sample(pool, 1000, seed=0)      # the same 1,000 rows on any layout
    """
    name = keep_hash or "__gio_seed_hash"
    out = (frame.withColumn(name, seed_hash(seed)).orderBy(F.col(name), F.col(ROW_ID))
           .limit(int(n)))
    return out if keep_hash else out.drop(name)
