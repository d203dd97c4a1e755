"""The job config: one section per stage, the YAML loader and ``--set``, and the checks that run
before Spark starts. Imports only :mod:`jobs.common` (and ``gio_core`` for option names).

The code is in :mod:`jobs.config.sections` (the sections, the loader and the checks) and
:mod:`jobs.config.store_spec` (the datamodels store's spec); the public names of
``sections`` are available here. They are loaded on first use, so that a Spark task importing
only the datamodels spec does not import JAX (which ``sections`` needs for option names).
"""
from __future__ import annotations

import importlib

__all__ = ["QUANTIZE_DEFAULT_ROWS_PER_CLUSTER", "QUANTIZE_UPDATE_OPTIONS",
           "RUNTIME_DATAMODELS_OPTIONS", "RUNTIME_EMBED_OPTIONS", "RUNTIME_IMNN_OPTIONS",
           "RUNTIME_SELECT_OPTIONS", "RUNTIME_TRAIN_OPTIONS", "SOURCE_FORMATS", "NAMED_FORMATS",
           "FRAME_FORMAT", "EmbedSection", "JobConfig", "QuantizeSection", "SelectSection",
           "SourceSection", "TrainSection", "auto_pool_k", "config_from_dict", "datamodels_spec",
           "jvm_bytes", "kmeans_driver_rows", "kmeans_init_rows",
           "effective_embedding_column", "engine_options", "load_config", "probe_options",
           "read_config_file", "row_budget", "sizes_itself", "uses_own_weights", "uses_weights",
           "validate"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("jobs.config.sections"), name)
    raise AttributeError(f"module 'jobs.config' has no attribute {name!r}")
