import pytest

from jobs.config import ConfigError, load_config


def test_demo_config_loads_with_overrides():
    cfg = load_config("conf/demo.yaml", ["select.k=7", "quantize.pool_k=50", "run_id=abc",
                                         "spark.conf.spark.sql.shuffle.partitions=64"])
    assert cfg.select.k == 7 and cfg.quantize.pool_k == 50 and cfg.run_id == "abc"
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 64
    assert cfg.pool.format == "demo" and cfg.spark.master == "local[*]"


def test_cluster_templates_are_valid():
    cfg = load_config("conf/cluster.yaml")
    assert cfg.spark.master is None and cfg.quantize.pool_k == 1500
    gpu = load_config("conf/cluster-gpu.yaml")
    assert gpu.select.jax_memory_fraction == 0.5 and gpu.embed.batch_size == 512


@pytest.mark.parametrize("overrides,message", [
    (["select.kk=3"], "unknown key(s) 'select.kk'; valid keys in select: k, estimator"),
    (["colour=red"], "unknown key(s) 'colour'"),
    (["select.k=0"], "select.k must be an integer >= 1"),
    (["select.estimator=mean"], "select.estimator must be one of knn, averaged"),
    (["quantize.distance=manhattan"], "quantize.distance must be euclidean or cosine"),
    (["pool.format=xlsx"], "pool.format='xlsx' is not one of"),
    (["pool.path=null"], "pool.path is missing"),
    (["select.stop_criterion=max_resets"], "needs select.resets_allowed=true"),
    (["select.k"], "expected key=value"),
    (["embed.batch_size=-1"], "embed.batch_size must be an integer >= 1"),
    (["select.jax_memory_fraction=1.5"], "select.jax_memory_fraction must be null or in (0, 1]"),
    (["select.dim=-3"], "select.dim must be auto, null"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("conf/demo.yaml", overrides)
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("conf/nope.yaml")
