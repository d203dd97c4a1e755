"""What the reference-shaped commands share: a gio-spark datamodels action run on a store kept
under the reference's ``logdir``, then the store's files written there."""
from __future__ import annotations

import json
import os

from jobs.common.errors import PartialFailure
from jobs.datamodels.actions import ACTIONS, run_export
from jobs.runner import run_main

# gio-spark's own tables (the store, its stage log) live in this folder of the logdir
OWN_FOLDER = "gio-spark"


def spec_copy(logdir: str) -> str:
    """Where initialize_store keeps the spec it was given, for the worker's config."""
    return os.path.join(os.path.abspath(logdir), OWN_FOLDER, "spec.json")


def settings(logdir: str) -> list[str]:
    """The ``--set`` words that put gio-spark's outputs under ``logdir``, its files in it, and
    take the spec initialize_store kept there."""
    logdir = os.path.abspath(logdir)
    own = os.path.join(logdir, OWN_FOLDER)
    pairs = {"output.path": own, "datamodels.store": os.path.join(own, "datamodels_store"),
             "datamodels.logdir": logdir, "datamodels.export_path": logdir,
             "datamodels.spec": spec_copy(logdir)}
    return [word for key, value in pairs.items()
            for word in ("--set", f"{key}={json.dumps(value)}")]


def run_action(prog: str, name: str, sets: list[str]) -> int:
    """Runs the datamodels action ``name`` (``init``, ``work``) with ``sets``, then writes the
    store's ``.npy`` files to the logdir; returns the exit code (the action's, when it fails:
    the files are written after a work whose indices failed too, since the others completed,
    and not after any other failure, whose message is the one given)."""
    stage = next(s for s in ACTIONS if s.name == name)

    def body(spark, cfg):
        try:
            stage.command(spark, cfg, None)
        except PartialFailure:
            run_export(spark, cfg)
            raise
        run_export(spark, cfg)
    return run_main(prog, stage.help, body, sets, command=f"datamodels-{name}",
                    precheck=stage.precheck, reads=stage.reads, requires=stage.required)
