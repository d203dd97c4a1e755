import jax.numpy as jnp
import numpy as np

from jobs.tools.compat import GIOKL


def test_source_scale_example_runs_with_import_changes_only(spark, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (6, 4))
    pool = centres[rng.integers(0, 6, 400)] + rng.normal(0, 0.3, (400, 4))
    target = centres[rng.integers(0, 2, 120)] + rng.normal(0, 0.3, (120, 4))
    for name, data in (("train", pool), ("target", target)):
        with open(tmp_path / f"{name}.tsv", "w") as f:
            for i, v in enumerate(data):
                f.write(f"{name}{i}\ttext {i}\t{list(map(float, v))}\n")

    # The source README's scale example, with its import line changed.
    gio_kl = GIOKL.GIOKL(uniform_low=-1, uniform_high=1, uniform_start_size=20, dim=4,
                         spark=spark)            # GIOKL.GIOKL: the README's module pattern
    assert type(gio_kl) is GIOKL and hasattr(gio_kl, "quantize")
    train_df, target_df = gio_kl.read_data_from_csv(str(tmp_path / "train.tsv"),
                                                     str(tmp_path / "target.tsv"))
    model_train, model_X, transformed_train, transformed_X = gio_kl.quantize(
        train_df, target_df, k=12, rseed="manual")
    X = jnp.array(model_X.clusterCenters())
    train = jnp.array(model_train.clusterCenters())
    centroids_df = gio_kl.spark.createDataFrame(
        data=[(i, each.tolist()) for i, each in enumerate(model_train.clusterCenters())],
        schema=["id", "centroid"])
    W, kl_divs, _ = gio_kl.fit(train, X, D=jnp.asarray(centres[:2] * 0 + 9.0), max_iter=5,
                               stop_criterion="min_kl", min_kl=-1e9)
    W = W[2:]
    full = gio_kl.explode(W, transformed_train, centroids_df)
    rows = full.select("_c0", "_c1", "id").collect()

    assert gio_kl.unmatched_ == 0
    chosen = {int(np.argmin(((np.asarray(train) - w) ** 2).sum(1))) for w in np.asarray(W)}
    sizes = transformed_train.groupBy("prediction").count().collect()
    want = sum(r["count"] for r in sizes if r["prediction"] in chosen)
    assert len(rows) == want and {r["id"] for r in rows} == chosen
    assert all(r["_c0"].startswith("train") for r in rows)


def test_generate_embeddings_writes_the_models_vectors_as_the_source_does(tmp_path):
    """The source's helper: one text per line in, one ``[...]`` vector per line out, in order;
    its model's hub name loads the bundled copy (``tests/gio_core/test_gio_vs_source.py`` checks
    the file against the source's own helper)."""
    import ast
    import warnings

    import numpy as np
    import torch

    from jobs.tools.compat import GenerateEmbeddings

    texts = ["Parse an e-mail header.\n", "Open a URL.\n", "Sort a list in place.\n",
             "Return the HTTP status line."]
    (tmp_path / "in.txt").write_text("".join(texts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maker = GenerateEmbeddings("all-MiniLM-L6-v2")          # the source's default: cuda
    assert maker.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.cuda.is_available() or any("no GPU" in str(w.message) for w in caught)
    maker.generate_embeddings(str(tmp_path / "in.txt"), str(tmp_path / "out.txt"))
    lines = (tmp_path / "out.txt").read_text().splitlines()
    vectors = np.array([ast.literal_eval(line) for line in lines])
    assert vectors.shape == (4, 384) and all(line.startswith("[") for line in lines)
    # computed apart, by a model loaded afresh (load_model caches the one the helper used)
    from sentence_transformers import SentenceTransformer

    from jobs.io.encoders import resolve_model
    want = SentenceTransformer(resolve_model("bundled"), device=maker.device).encode(texts)
    np.testing.assert_allclose(vectors, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
