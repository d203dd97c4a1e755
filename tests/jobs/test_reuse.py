"""Fingerprints and run ids: pure functions of the config and the sources' identities."""
import dataclasses
import os

import pytest

from jobs import reuse
from jobs.config import RUNTIME_EMBED_OPTIONS, RUNTIME_SELECT_OPTIONS, load_config
from tests.jobs.test_pipeline import ROOT

DEMO = os.path.join(ROOT, "conf", "demo.yaml")
IDENTITIES = {"pool": {"format": "parquet", "path": "p", "files": [("a", 10, 1)]},
              "target": {"format": "parquet", "path": "t", "files": [("b", 5, 2)]}}


def planned(*sets, identities=IDENTITIES):
    return reuse.plan(load_config(DEMO, list(sets)), identities)


@pytest.mark.parametrize("knob", [
    "select.jax_platform=cpu", "select.jax_memory_fraction=0.3", "select.jax_preallocate=true",
    "select.max_centroids=5000", "select.block_size=128", "select.cache_bytes=1024",
    "embed.batch_size=8", "embed.device=cpu"])
def test_runtime_knobs_change_no_fingerprint(knob):
    assert planned(knob) == planned()


def test_the_knob_lists_name_real_options():
    cfg = load_config(DEMO)
    assert set(RUNTIME_SELECT_OPTIONS) <= {f.name for f in dataclasses.fields(cfg.select)}
    assert set(RUNTIME_EMBED_OPTIONS) <= {f.name for f in dataclasses.fields(cfg.embed)}


def test_each_parameter_changes_its_stage_and_those_after_it():
    base = planned()
    k = planned("select.k=7")
    assert (k.embed, k.quantize) == (base.embed, base.quantize)
    assert k.select != base.select and k.run_id != base.run_id
    pool_k = planned("quantize.pool_k=50")
    assert pool_k.embed == base.embed and pool_k.clustering_id != base.clustering_id
    assert pool_k.run_id != base.run_id
    normalize = planned("embed.normalize=false")
    assert normalize.embeddings_id != base.embeddings_id and normalize.run_id != base.run_id
    touched = dict(IDENTITIES, pool=dict(IDENTITIES["pool"], files=[("a", 10, 3)]))
    new_file = planned(identities=touched)
    assert new_file.embed["pool"] != base.embed["pool"]
    assert new_file.embed["target"] == base.embed["target"] and new_file.run_id != base.run_id
    assert planned("run_id=mine").run_id == "mine"
    assert planned("output.path=/elsewhere") == base          # the output is not an input


def test_planning_leaves_the_config_as_it_was():
    """The GIO source's CSV form implies its vector column without writing it into the config,
    so a stage run alone plans the same run id as the whole pipeline."""
    cfg = load_config(DEMO, ["pool.format=gio_csv", "pool.path=x.tsv", "pool.text_column=null"])
    before = cfg.to_dict()
    first = reuse.plan(cfg, IDENTITIES)
    assert cfg.to_dict() == before and reuse.plan(cfg, IDENTITIES) == first
