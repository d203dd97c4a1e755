"""Embedding through the text store (``text_embeddings``): a killed embed stage keeps the chunks
it committed, and a pool that grew embeds only its new texts; the run on the grown pool equals a
run from scratch.

The pool is a Parquet folder of the demo's docstrings; ``embed.commit_rows=100`` makes its
texts four commits. The embed stage is killed (SIGKILL, in a child process) after its first
commit, then run again here; then a tenth more rows are added to the folder and the run is made
again; then the same run from scratch on a new output folder.
"""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from pyspark.sql import SparkSession

from jobs.config import load_config
from jobs.io import tables
from jobs.planning import texts_to_embed
from tests.jobs.test_crash_safety import DEMO, has_table, run_child, run_here, text_sets

COMMIT_ROWS = "embed.commit_rows=100"


def hashes(rows) -> set:
    return {hashlib.sha256(r["text"].encode()).hexdigest() for r in rows}


def embed_record(spark, out, side) -> dict:
    records = [r for r in tables.read_table(spark, str(out), "stages")
               .where(f"stage = 'embed_{side}' and status = 'done'").orderBy("at_ns").collect()]
    return json.loads(records[-1]["detail"])


def store(spark, out):
    return tables.read_table(spark, str(out), "text_embeddings")


def vectors(out, key):
    """``(row ids, vectors)`` of the pool's embeddings under ``key``, in row id order."""
    spark = SparkSession.getActiveSession()
    rows = tables.read_key(spark, str(out), "pool_embeddings", key).orderBy("row_id").collect()
    return [r["row_id"] for r in rows], np.array([r["embedding"] for r in rows])


def chosen(out, run_id, id_column="doc_id"):
    spark = SparkSession.getActiveSession()
    return sorted((r[id_column], r["rank"]) for r in tables.read_key(
        spark, str(out), "selected_rows", run_id).collect())


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_embed_resumes_and_a_grown_pool_embeds_only_its_new_texts(spark, docstrings,
                                                                           tmp_path):
    pool, target = docstrings
    first, more = pool[:324], pool[324:]                  # 36 rows more: a tenth
    data = tmp_path / "data"
    (data / "pool.parquet").mkdir(parents=True)
    pd.DataFrame(first).to_parquet(data / "pool.parquet" / "part-0.parquet")
    pd.DataFrame(target).to_parquet(data / "target.parquet")
    out = tmp_path / "out"
    sets = text_sets(data, out, COMMIT_ROWS)

    rc = run_child(sets, "after:text_embeddings", tmp_path / "kill.log")
    assert rc == -9, open(tmp_path / "kill.log").read()[-3000:]
    committed = store(spark, out).count()
    assert 0 < committed < len(hashes(first)) and not has_table(out, "pool_embeddings")

    resumed = run_here(spark, sets)
    pool_record = embed_record(spark, out, "pool")
    assert pool_record["texts"] == len(hashes(first))
    assert pool_record["embedded"] == len(hashes(first)) - committed     # the rest, once
    stored = store(spark, out)
    assert stored.count() == stored.select("text_hash").distinct().count() \
        == len(hashes(first) | hashes(target))                          # no text embedded twice
    # resumed to a clean run's vectors, to the bit (the chunks are buckets of the texts' hashes)
    clean_out = tmp_path / "clean"
    clean = run_here(spark, text_sets(data, clean_out, COMMIT_ROWS))
    (first_key,) = {r["embeddings_id"] for r in tables.read_table(spark, str(clean_out),
                                                                   "pool_embeddings").collect()}
    assert np.array_equal(vectors(out, first_key)[1], vectors(clean_out, first_key)[1])
    assert chosen(out, resumed["run_id"]) == chosen(clean_out, clean["run_id"])

    pd.DataFrame(more).to_parquet(data / "pool.parquet" / "part-1.parquet")
    cfg = load_config(DEMO, sets)
    new = hashes(more) - hashes(first) - hashes(target)
    assert texts_to_embed(spark, cfg, {"pool", "target"}) == {
        "pool": (len(hashes(pool)), len(new)), "target": (len(hashes(target)), 0)}
    grown = run_here(spark, sets)
    assert len(new) > 0
    assert embed_record(spark, out, "pool")["embedded"] == len(new)
    assert store(spark, out).count() == len(hashes(pool) | hashes(target))

    fresh_out = tmp_path / "fresh"
    fresh = run_here(spark, text_sets(data, fresh_out, COMMIT_ROWS))
    # The grown pool's vectors: texts embedded in other chunks than from scratch (their batches
    # differ), equal to the last bits that batching changes.
    (key,) = {r["embeddings_id"] for r in tables.read_table(spark, str(fresh_out),
                                                             "pool_embeddings").collect()}
    grown_ids, grown_v = vectors(out, key)
    fresh_ids, fresh_v = vectors(fresh_out, key)
    assert grown_ids == fresh_ids and len(fresh_ids) == len(pool)
    assert np.allclose(grown_v, fresh_v, atol=1e-5)
    assert chosen(out, grown["run_id"]) == chosen(fresh_out, fresh["run_id"])
    assert len(chosen(out, grown["run_id"])) > 0


def _vectors(path, n, seed, shift=0.0):
    """``n`` rows of 8-D vectors around five centres (moved by ``shift``), with ids."""
    centres = np.random.default_rng(0).normal(size=(5, 8)) * 3 + shift
    rng = np.random.default_rng(seed)
    x = (centres[rng.integers(5, size=n)] + rng.normal(size=(n, 8))).astype(np.float32)
    pd.DataFrame({"id": [f"r{seed}-{i:04d}" for i in range(n)], "vec": list(x)}).to_parquet(path)


def _quantize_record(spark, out) -> dict:
    rows = (tables.read_table(spark, str(out), "stages")
            .where("stage = 'quantize' and status = 'done'").orderBy("at_ns").collect())
    return {"key": rows[-1]["key"], **json.loads(rows[-1]["detail"])}


def _quantize_records(spark, out) -> int:
    return tables.read_table(spark, str(out), "stages").where("stage = 'quantize'").count()


def _pool_centroids(spark, out, key) -> dict:
    return {r["cluster_id"]: (np.array(r["centroid"]), r["size"]) for r in tables.read_key(
        spark, str(out), "centroids", key).where("side = 'pool'").collect()}


@pytest.mark.slow
def test_update_assign_adds_grown_rows_to_the_clusters_and_reclusters_past_the_drift(spark,
                                                                                    tmp_path):
    from tests.jobs.test_crash_safety import vector_sets
    data = tmp_path / "data"
    (data / "pool.parquet").mkdir(parents=True)
    _vectors(data / "pool.parquet" / "part-0.parquet", 540, 1)
    _vectors(data / "target.parquet", 120, 2)
    out = tmp_path / "out"
    sets = vector_sets(data, out, "quantize.update=assign")

    first = run_here(spark, sets)
    made = _quantize_record(spark, out)
    assert made["update"] == "first" and made["base"] is None
    assert made["pool_inertia_per_row"] > 0

    _vectors(data / "pool.parquet" / "part-1.parquet", 60, 3)          # a tenth more, alike
    grown = run_here(spark, sets)
    update = _quantize_record(spark, out)
    assert (update["update"], update["base"]) == ("assigned", made["key"])
    assert update["key"] != made["key"] and abs(update["drift"]) <= 0.1
    before = _pool_centroids(spark, out, made["key"])
    after = _pool_centroids(spark, out, update["key"])
    assert set(after) <= set(before)
    for cid, (centre, _) in after.items():                             # the same centres
        assert np.array_equal(centre, before[cid][0])
    assert sum(size for _, size in after.values()) == 600              # the sizes counted again
    rows = pd.concat([pd.read_parquet(p) for p in sorted((data / "pool.parquet").iterdir())])
    x = np.stack(rows["vec"].to_numpy())
    ids = sorted(before)
    centres = np.stack([before[c][0] for c in ids])
    nearest = [ids[i] for i in np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)]
    assigned = {r["row_id"]: r["cluster_id"] for r in tables.read_key(
        spark, str(out), "pool_assignments", update["key"]).collect()}
    assert [assigned[i] for i in rows["id"]] == nearest                # each row's nearest
    assert grown["run_id"] != first["run_id"] and grown["selected_rows"] > 0
    records = _quantize_records(spark, out)
    assert run_here(spark, sets)["run_id"] == grown["run_id"]          # a re-run: reused
    assert _quantize_records(spark, out) == records                    # nothing recomputed

    _vectors(data / "pool.parquet" / "part-2.parquet", 300, 4, shift=6.0)   # elsewhere
    moved = run_here(spark, sets)
    again = _quantize_record(spark, out)
    assert (again["update"], again["base"]) == ("reclustered", update["key"])
    assert again["drift"] > 0.1
    fresh_out = tmp_path / "fresh"
    fresh = run_here(spark, vector_sets(data, fresh_out))               # update: recluster
    clean = _pool_centroids(spark, fresh_out, _quantize_record(spark, fresh_out)["key"])
    ours = _pool_centroids(spark, out, again["key"])
    assert set(ours) == set(clean)
    assert all(np.array_equal(ours[c][0], clean[c][0]) and ours[c][1] == clean[c][1]
               for c in clean)
    assert chosen(out, moved["run_id"], "id") == chosen(fresh_out, fresh["run_id"], "id")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_delta_pool_that_grew_embeds_only_its_new_texts_and_updates_the_clustering(
        spark, docstrings, tmp_path):
    """A pool in a Delta table, appended to (a new table version): the re-run embeds only the
    appended rows' texts and assigns them to the first run's clusters."""
    pool, target = docstrings
    first, more = pool[:324], pool[324:]                  # 36 rows more: a tenth
    data = tmp_path / "data"
    data.mkdir()
    delta = str(data / "pool")
    spark.createDataFrame(pd.DataFrame(first)).write.format("delta").save(delta)
    pd.DataFrame(target).to_parquet(data / "target.parquet")
    out = tmp_path / "out"
    sets = [s for s in text_sets(data, out, "quantize.update=assign")
            if not s.startswith("pool.")] + [f"pool.path={delta}", "pool.format=delta",
                                             "pool.id_column=doc_id"]
    made = run_here(spark, sets)
    assert embed_record(spark, out, "pool")["embedded"] == len(hashes(first))

    spark.createDataFrame(pd.DataFrame(more)).write.format("delta").mode("append").save(delta)
    grown = run_here(spark, sets)
    record = embed_record(spark, out, "pool")
    assert record["rows"] == len(pool) and record["texts"] == len(hashes(pool))
    assert record["embedded"] == len(hashes(more) - hashes(first) - hashes(target))
    rows = (tables.read_table(spark, str(out), "stages")
            .where("stage = 'quantize' and status = 'done'").orderBy("at_ns").collect())
    assert [json.loads(r["detail"]).get("update") for r in rows] == ["first", "assigned"]
    assert json.loads(rows[1]["detail"])["base"] == rows[0]["key"]      # an update of the first
    assert grown["run_id"] != made["run_id"] and grown["selected_rows"] > 0
