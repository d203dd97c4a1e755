"""Fingerprints and run ids: pure functions of the config and the sources' identities."""
import dataclasses
import os

import pytest

from jobs.state import reuse, stagelog
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


def test_pool_k_auto_clusters_again_when_the_budget_changes():
    """With pool_k: auto the cluster count follows the row budget and select.max_centroids, so
    they are part of quantize's fingerprint there (and only there)."""
    auto = planned("quantize.pool_k=auto")
    budget = planned("quantize.pool_k=auto", "select.max_rows=100")
    assert budget.embed == auto.embed and budget.clustering_id != auto.clustering_id
    assert planned("quantize.pool_k=auto", "select.max_centroids=500").quantize != auto.quantize
    fixed, fixed_budget = planned(), planned("select.max_rows=100")
    assert fixed_budget.clustering_id == fixed.clustering_id
    assert fixed_budget.select != fixed.select


def test_the_row_step_options_change_the_run_only_where_the_row_step_can_run():
    """Without a row budget, where select's clusters size the selection (select.own_size:
    clusters) and select.refine is not rows, explode takes whole clusters whatever the row
    step's options say: the run keeps its id. With a budget, or where the row step sizes the
    selection (the default), each one changes it."""
    base = planned("select.own_size=clusters")
    assert planned("select.refine=clusters") == base     # no row step: nothing to size with
    for knob in ("select.refine=clusters", "select.candidates=5", "select.max_candidates=10",
                 "select.max_target_rows=50"):
        assert planned("select.own_size=clusters", knob) == base, knob
        with_budget = planned("select.max_rows=100", knob)
        assert with_budget.run_id != planned("select.max_rows=100").run_id, knob
        assert with_budget.clustering_id == base.clustering_id
        assert planned(knob).run_id != planned().run_id, knob
    assert planned("select.own_size=clusters", "select.refine=rows").run_id != base.run_id


def test_own_size_changes_the_run_only_where_it_decides_the_size():
    """select.own_size auto (the default) or density, without a budget, sizes the selection in
    the row step: a run id of its own, with the row step's options and version in it.
    clusters, and any value under a row budget (where the budget is the size), or where the
    row step cannot run (select.refine: clusters, shares), keep the ids runs had before."""
    base, budget = planned("select.own_size=clusters"), planned("select.max_rows=100")
    auto, density = planned(), planned("select.own_size=density")
    for sized in (auto, density):
        assert (sized.clustering_id, sized.embed) == (base.clustering_id, base.embed)
        assert sized.run_id != base.run_id and sized.explode != base.explode
    assert auto.run_id != density.run_id          # two settings, each named in the run's params
    assert planned("select.own_size=density", "select.candidates=5").run_id != density.run_id
    assert planned("select.candidates=5").run_id != auto.run_id
    for own in ("auto", "density", "clusters"):
        assert planned(f"select.own_size={own}", "select.max_rows=100") == budget, own
    assert planned("select.refine=clusters") == planned("select.refine=clusters",
                                                        "select.own_size=clusters")


def test_a_new_row_step_recomputes_explode_under_the_same_run_id(monkeypatch):
    """The row step's version is in explode's fingerprint where the step can run: a new one
    recomputes the rows of such runs (same run id, same selection) and leaves the others be."""
    budget, sized = planned("select.max_rows=100"), planned()
    whole = planned("select.own_size=clusters")
    monkeypatch.setattr(reuse, "ROW_STEP_VERSION", reuse.ROW_STEP_VERSION + 1)
    for before, now in ((budget, planned("select.max_rows=100")), (sized, planned())):
        assert now.explode != before.explode
        assert (now.run_id, now.select) == (before.run_id, before.select)
    assert planned("select.own_size=clusters") == whole
    clusters = planned("select.max_rows=100", "select.refine=clusters")
    monkeypatch.setattr(reuse, "ROW_STEP_VERSION", reuse.ROW_STEP_VERSION - 1)
    assert planned("select.max_rows=100", "select.refine=clusters") == clusters


def test_planning_leaves_the_config_as_it_was():
    """The GIO source's CSV form implies its vector column without writing it into the config,
    so a stage run alone plans the same run id as the whole pipeline."""
    cfg = load_config(DEMO, ["pool.format=gio_csv", "pool.path=x.tsv", "pool.text_column=null"])
    before = cfg.to_dict()
    first = reuse.plan(cfg, IDENTITIES)
    assert cfg.to_dict() == before and reuse.plan(cfg, IDENTITIES) == first


def test_the_stage_log_cache_sees_every_writer_and_a_table_made_anew(spark, tmp_path):
    """stagelog.latest keeps the log it read while the table's newest commit is the same: a record
    appended behind its back (another process, here a plain Delta append) is seen at once, and
    so is a log deleted and written again with as many commits."""
    import datetime as dt
    import shutil

    from jobs.io import tables
    out = str(tmp_path / "out")
    stagelog.record(spark, out, "embed_pool", "k1", "fp1", "started")
    stagelog.record(spark, out, "embed_pool", "k1", "fp1", "done")
    assert stagelog.is_done(spark, out, "embed_pool", "k1", "fp1")
    stranger = spark.createDataFrame([("embed_pool", "k1", "fp2", "started", dt.datetime.now(),
                                       10 ** 19 // 10 * 9, None)], tables.STAGES)
    stranger.write.format("delta").mode("append").save(tables.table_path(out, "stages"))
    assert stagelog.latest(spark, out, "embed_pool", "k1")["fingerprint"] == "fp2"
    assert not stagelog.is_done(spark, out, "embed_pool", "k1", "fp1")
    shutil.rmtree(out)
    assert stagelog.latest(spark, out, "embed_pool", "k1") is None
    for status in ("started", "done", "started"):        # as many commits as before
        stagelog.record(spark, out, "embed_pool", "k1", "fp3", status)
    last = stagelog.latest(spark, out, "embed_pool", "k1")
    assert (last["fingerprint"], last["status"]) == ("fp3", "started")


def test_a_relative_output_path_that_does_not_exist_yet_is_created(spark, tmp_path):
    """`make demo` on a fresh clone writes to out/demo-pipeline, relative and not there yet
    (Delta took such a location for a table name and refused it)."""
    out = os.path.relpath(tmp_path / "fresh-run", os.getcwd())
    assert not os.path.isabs(out) and not os.path.exists(out)
    stagelog.record(spark, out, "embed_pool", "k1", "fp1", "done")
    assert os.path.isdir(tmp_path / "fresh-run" / "stages" / "_delta_log")
    assert stagelog.is_done(spark, out, "embed_pool", "k1", "fp1")


def test_run_stage_computes_then_begins_then_commits_then_records(spark, tmp_path, monkeypatch):
    """The lifecycle's order, on a real stage log: compute before any record; a compute that
    fails leaves no record and commits nothing; a commit that fails leaves no done and still
    releases what compute held; a done stage is reused without computing."""
    from jobs.stages.base import run_stage
    out = str(tmp_path / "out")
    calls = []
    begin = stagelog.begin
    monkeypatch.setattr(stagelog, "begin", lambda *a: (calls.append("begin"), begin(*a))[1])

    def compute():
        calls.append("compute")
        return "computed"

    def commit(value):
        calls.append(f"commit {value}")
        return "result", {"n": 1}

    def broken():
        calls.append("compute")
        raise ValueError("bad input")

    def failing(value):
        calls.append("commit")
        raise OSError("disk")

    release = lambda value: calls.append(f"release {value}")       # noqa: E731
    with pytest.raises(ValueError):
        run_stage(spark, out, "toy", "k", "fp1", broken, commit, lambda: "reused", release=release)
    assert calls == ["compute"] and stagelog.latest(spark, out, "toy", "k") is None
    calls.clear()
    with pytest.raises(OSError):
        run_stage(spark, out, "toy", "k", "fp1", compute, failing, lambda: "reused",
                  release=release)
    assert calls == ["compute", "begin", "commit", "release computed"]
    assert not stagelog.is_done(spark, out, "toy", "k", "fp1")
    calls.clear()
    assert run_stage(spark, out, "toy", "k", "fp1", compute, commit, lambda: "reused",
                     release=release) == "result"
    assert calls == ["compute", "begin", "commit computed", "release computed"]
    assert stagelog.latest(spark, out, "toy", "k")["status"] == "done"
    calls.clear()
    assert run_stage(spark, out, "toy", "k", "fp1", compute, commit, lambda: "reused") == "reused"
    assert calls == []


def test_an_update_is_keyed_by_the_clustering_it_updates_and_recluster_keeps_its_ids():
    base = planned()
    assert planned("quantize.update=recluster", "quantize.max_drift=0.5") == base
    assert planned("embed.commit_rows=10") == base                    # a runtime knob
    assign = planned("quantize.update=assign")
    assert assign.embed == base.embed and assign.clustering_id != base.clustering_id
    updating = reuse.plan(load_config(DEMO, ["quantize.update=assign"]),
                          dict(IDENTITIES, base="c0ffee"))
    assert updating.base == "c0ffee" and updating.clustering_id != assign.clustering_id
    # the basis names the pool, not its rows: a pool that grew keeps it; other settings do not
    grown = dict(IDENTITIES, pool=dict(IDENTITIES["pool"], files=[("a", 10, 1), ("b", 3, 4)]))
    assert planned(identities=grown).basis == base.basis
    assert planned(identities=grown).clustering_id != base.clustering_id
    assert planned("select.k=7").basis == base.basis
    assert planned("quantize.pool_k=50").basis != base.basis
    moved = dict(IDENTITIES, pool=dict(IDENTITIES["pool"], path="elsewhere"))
    assert planned(identities=moved).basis != base.basis


# Ids of configs without the options added since (several targets...), as the release before
# them computed them (precomputed vectors, so no model's identity is in them). A change here
# means every user's outputs stop being reused: it must be deliberate and in the changelog.
# Without a row budget the selection is sized by density since select.own_size: auto became
# the default (a deliberate change: other rows, a new id); select.own_size: clusters keeps
# the id such runs had.
PINNED = {("select.own_size=clusters",): ("run-1b0695613c8c", "2644dc1f53eba669",
                                          "939570fa158fde1b"),
          ("quantize.update=assign", "select.own_size=clusters"): (
              "run-3fdbbbe2e613", "5e8abbbf21668187", "939570fa158fde1b"),
          ("select.max_rows=100",): ("run-03aa6d8866f8", "2644dc1f53eba669", "939570fa158fde1b")}


@pytest.mark.parametrize("sets", list(PINNED))
def test_configs_without_the_new_options_keep_their_ids(sets):
    vectors = ["pool.embedding_column=vec", "target.embedding_column=vec"]
    p = reuse.plan(load_config(DEMO, vectors + list(sets)), dict(IDENTITIES, base="c0ffee"))
    assert (p.run_id, p.clustering_id, p.basis[:16]) == PINNED[sets]


def test_domains_and_shares_key_the_stages_they_change():
    vectors = ["pool.embedding_column=vec", "target.embedding_column=vec", "select.max_rows=100"]
    base = planned(*vectors)
    domains = reuse.plan(load_config(DEMO, vectors + ["target.domain_column=dom"]),
                         dict(IDENTITIES, target=dict(IDENTITIES["target"], domain="dom")))
    assert domains.embed["pool"] == base.embed["pool"] and domains.quantize != base.quantize
    k7 = reuse.plan(load_config(DEMO, vectors + ["target.domain_column=dom", "select.k=7"]),
                    dict(IDENTITIES, target=dict(IDENTITIES["target"], domain="dom")))
    assert k7.quantize != domains.quantize        # each domain's clusters: at least k + 1
    shares = ["target.domain_column=dom", "select.shares={1: 0.5, b: 0.5}"]
    mixed = reuse.plan(load_config(DEMO, vectors + shares), IDENTITIES)
    text = reuse.plan(load_config(DEMO, vectors + ["target.domain_column=dom",
                                                   "select.shares={'1': 0.5, b: 0.5}"]),
                      IDENTITIES)
    assert mixed.select == text.select and mixed.quantize == text.quantize


def test_where_the_centres_are_fitted_keeps_the_ids_what_they_are_fitted_on_does_not():
    base = planned()
    assert planned("quantize.driver_rows=1").clustering_id == base.clustering_id
    assert planned("quantize.rows_per_cluster=256").clustering_id == base.clustering_id
    # init_rows: auto keys as the 20000 it replaced; a number set by hand, 20000 included
    # (which differs from auto for k under 2,000), keys apart
    assert planned("quantize.init_rows=auto").clustering_id == base.clustering_id
    by_hand = {planned(f"quantize.init_rows={n}").clustering_id for n in (20000, 5000)}
    assert len(by_hand) == 2 and base.clustering_id not in by_hand
    assert planned("quantize.rows_per_cluster=64").clustering_id != base.clustering_id
    every = planned("quantize.rows_per_cluster=null")
    assert every.clustering_id not in (base.clustering_id, planned(
        "quantize.rows_per_cluster=64").clustering_id)
