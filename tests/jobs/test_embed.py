import numpy as np

from jobs.embed import embed_frame
from jobs.models import load_model

TEXTS = ["Parse an email message from a string.", "Return the HTTP status line.",
         "Open a URL and return a file-like object.", "Compute the greatest common divisor.",
         "Format a date as an RFC 2822 string.", "Split a path into head and tail."] * 4


def test_udf_embeddings_equal_bare_encode(spark):
    df = spark.createDataFrame([(f"r{i}", t) for i, t in enumerate(TEXTS)], "row_id string, text string")
    rows = {r["row_id"]: np.asarray(r["embedding"]) for r in
            embed_frame(df.repartition(3), "text", batch_size=8).collect()}
    assert len(rows) == len(TEXTS)
    bare = load_model("bundled", "cpu").encode(TEXTS, normalize_embeddings=True)
    for i in range(len(TEXTS)):
        vec = rows[f"r{i}"]
        assert vec.shape == (384,)
        np.testing.assert_allclose(vec, bare[i], atol=2e-5)
        assert abs(np.linalg.norm(vec) - 1) < 1e-4


def test_related_texts_are_closer(spark):
    model = load_model("bundled", "cpu")
    a, b, c = model.encode(["Send an HTTP request to a server.",
                            "Issue an HTTP GET request to a web server.",
                            "Compute the median of a list of numbers."], normalize_embeddings=True)
    assert a @ b > a @ c + 0.2


def test_partitioned_by_row_id_the_vectors_do_not_depend_on_the_layout(spark, docstrings):
    """Hash-partitioned by row_id and sorted within each task, the same texts give the same
    vectors to the last bit from any source layout (one partition in order, five shuffled);
    the batches, and so the padding, are the same."""
    pool, _ = docstrings
    rows = [(f"r{i}", r["text"]) for i, r in enumerate(pool[:200])]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    got = []
    for data, parts in ((rows, 1), (shuffled, 5)):
        df = spark.createDataFrame(data, "row_id string, text string").repartition(parts)
        got.append({r["row_id"]: np.asarray(r["embedding"]) for r in
                    embed_frame(df, "text", batch_size=16, partitions=3).collect()})
    assert got[0].keys() == got[1].keys() and len(got[0]) == 200
    assert all(np.array_equal(got[0][k], got[1][k]) for k in got[0])


def test_embed_partitions_follow_the_rows_only():
    from jobs.embed import embed_partitions
    assert [embed_partitions(n, 1024) for n in (1, 1024, 1025, 5824)] == [1, 1, 2, 6]
