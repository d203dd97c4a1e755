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
