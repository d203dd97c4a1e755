"""The reference's helpers (``datamodels.training.utils``): where the files are, reading them,
and its fastargs set-up."""
from __future__ import annotations

import types
from argparse import ArgumentParser
from pathlib import Path

import numpy as np


def memmap_path(logdir, key: str) -> Path:
    """The file of one spec key (or ``_completed``) in a store folder."""
    return Path(logdir) / f"{key}.npy"


def load_memmap(logdir, key: str, mode: str):
    """One key's array, ``[num_models, *shape]``, memory-mapped in ``mode`` (``'r'``,
    ``'r+'``)."""
    return np.load(memmap_path(logdir, key), mmap_mode=mode)


def _collect_known(config, parser, disable_help: bool = False) -> None:
    """fastargs' ``collect_argparse_args``, with the words no declared section knows left
    alone (``parse_known_args``) instead of refused."""
    known, _ = parser.parse_known_args()
    for name in getattr(known, "config_file", None) or []:
        config.collect_config_file(name)
    config.collect(vars(known))
    config.collect_env_variables()


def make_config(quiet: bool = False, conf_path=None):
    """fastargs' current config, filled from ``conf_path``, the command line and the
    environment, then validated (``quiet``: no summary printed). As the reference's helper, it
    makes the config's command-line collection lenient (for this config from now on: a
    script's own ``collect_argparse_args`` call after it is lenient too), so one command line
    can carry a worker's settings and its script's."""
    from fastargs import get_current_config       # a test and compatibility dependency

    config = get_current_config()
    if conf_path is not None:
        config.collect_config_file(conf_path)
    config.collect_argparse_args = types.MethodType(_collect_known, config)
    parser = ArgumentParser()
    config.augment_argparse(parser)             # which collects, through the method above
    config.collect_argparse_args(parser)
    config.validate(mode="stderr")
    if not quiet:
        config.summary()
    return config
