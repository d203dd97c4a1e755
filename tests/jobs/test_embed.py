import numpy as np

from jobs.io.encoders import embed_frame
from jobs.io.encoders import load_model

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
    from jobs.io.encoders import embed_partitions
    assert [embed_partitions(n, 1024) for n in (1, 1024, 1025, 5824)] == [1, 1, 2, 6]


def test_onnx_backends_export_once_and_agree_with_torch(tmp_path, monkeypatch, docstrings):
    """The ONNX export of the bundled model gives torch's vectors (fp32: to 1e-4 in cosine; int8:
    close, as its README row says), and is made once: a second load in a fresh process-level
    cache reuses the files, and nothing half-written is left beside them."""
    import os

    from jobs.io import encoders as models
    monkeypatch.setenv("GIO_SPARK_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_MODELS", {})
    pool, _ = docstrings
    texts = [r["text"] for r in pool[:120]]
    torch_vecs = load_model("bundled", "cpu").encode(texts, batch_size=16,
                                                     normalize_embeddings=True)
    fp32 = load_model("bundled", "cpu", 1, "onnx")
    int8 = load_model("bundled", "cpu", 1, "onnx-int8")
    cos32 = (fp32.encode(texts, batch_size=16, normalize_embeddings=True) * torch_vecs).sum(1)
    cos8 = (int8.encode(texts, batch_size=16, normalize_embeddings=True) * torch_vecs).sum(1)
    assert cos32.min() > 0.9999, cos32.min()
    # int8 weights per output channel: mean 0.992, least 0.982 on 600 docstrings (README).
    assert cos8.mean() > 0.985 and cos8.min() > 0.95, (cos8.mean(), cos8.min())
    assert cos8.mean() < cos32.mean()                 # int8 is an approximation: it can be wrong
    folder = os.path.dirname(fp32.path)
    assert sorted(os.listdir(folder)) == [".lock", "model-int8-matmul-per-channel.onnx",
                                          "model.onnx"]
    stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)
              if f.endswith(".onnx")}
    monkeypatch.setattr(models, "_MODELS", {})
    again = load_model("bundled", "cpu", 1, "onnx-int8")
    assert again.path == int8.path
    assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)
            if f.endswith(".onnx")} == stamps
    # Batching longest first and restoring the order: one text alone gives the same vector.
    alone = fp32.encode(texts[5:6], normalize_embeddings=True)[0]
    np.testing.assert_allclose(alone, fp32.encode(texts, batch_size=7,
                                                  normalize_embeddings=True)[5], atol=1e-5)


def test_onnx_backend_in_the_udf_equals_the_encoder_in_process(spark):
    df = spark.createDataFrame([(f"r{i}", t) for i, t in enumerate(TEXTS)],
                               "row_id string, text string")
    rows = {r["row_id"]: np.asarray(r["embedding"]) for r in
            embed_frame(df.repartition(2), "text", batch_size=8, backend="onnx").collect()}
    bare = load_model("bundled", "cpu", 1, "onnx").encode(TEXTS, batch_size=8,
                                                          normalize_embeddings=True)
    torch_vecs = load_model("bundled", "cpu").encode(TEXTS, normalize_embeddings=True)
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(rows[f"r{i}"], bare[i], atol=2e-5)
        assert rows[f"r{i}"] @ torch_vecs[i] > 0.9999
