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
