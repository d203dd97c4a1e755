"""gio_core: the numerics of gio-spark (pure NumPy/JAX; no Spark, no I/O).

Public API:
  select, SelectionResult, UniformStart, PoolFraction  -- greedy KL-minimising selection
  check_select_options                                 -- the one validator of select's options
  candidate_clusters                                   -- chosen clusters and their neighbours
  proportional_size                                    -- a selection's size without a budget
  row_regions, Regions, share_out                      -- regions for a row selection in parts
  select_shares, nearest_domain, share_budgets         -- several targets (domains)
  knn_kl, averaged_kl, intrinsic_dimension             -- the KL estimators and their d
  kl_noise_floor                                       -- the knn estimate between target halves
  mmd_rbf, median_bandwidth                            -- RBF-kernel MMD (the "mmd" stop rule)
  GIOKL                                                -- drop-in for the GIO source's class
  DiffImbalance (gio_core.dii)                         -- learnt feature weights (DADApy's API)
  gio_core.gaf: gaf_step, train_gaf, ...               -- gradient agreement filtering
"""
from gio_core._estimators import averaged_kl, intrinsic_dimension, kl_noise_floor, knn_kl
from gio_core._mmd import median_bandwidth, mmd_rbf
from gio_core._selection import (
    PoolFraction, Regions, SelectionResult, UniformStart, candidate_clusters, check_select_options,
    proportional_size, row_regions, select, share_out)
from gio_core.domains import DomainSelection, nearest_domain, select_shares, share_budgets

__all__ = ["select", "check_select_options", "candidate_clusters", "proportional_size",
           "row_regions", "Regions", "share_out", "SelectionResult", "select_shares",
           "nearest_domain", "share_budgets",
           "DomainSelection",
           "UniformStart", "PoolFraction",
           "knn_kl", "averaged_kl", "intrinsic_dimension", "kl_noise_floor", "mmd_rbf",
           "median_bandwidth", "GIOKL", "DiffImbalance"]


def __getattr__(name):
    # The compatibility class is imported lazily so that ``import gio_core`` stays light.
    if name == "GIOKL":
        from gio_core.compat import GIOKL
        return GIOKL
    if name == "DiffImbalance":
        from gio_core.dii import DiffImbalance
        return DiffImbalance
    raise AttributeError(f"module 'gio_core' has no attribute {name!r}")
