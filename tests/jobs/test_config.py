import pytest

from jobs.config import ConfigError, load_config


def test_demo_config_loads_with_overrides():
    cfg = load_config("conf/demo.yaml", ["select.k=7", "quantize.pool_k=50", "run_id=abc"])
    assert cfg.select.k == 7 and cfg.quantize.pool_k == 50 and cfg.run_id == "abc"
    assert cfg.pool.format == "demo" and cfg.spark.master == "local[*]"


def test_cluster_template_is_valid():
    cfg = load_config("conf/cluster.yaml")
    assert cfg.spark.master is None and cfg.quantize.pool_k == 1500


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
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("conf/demo.yaml", overrides)
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("conf/nope.yaml")
