import pytest

from jobs.config import load_config
from jobs.common.errors import InputError


def test_demo_config_loads_with_overrides():
    cfg = load_config("conf/demo.yaml", ["select.k=7", "quantize.pool_k=50", "run_id=abc",
                                         "spark.conf.spark.sql.shuffle.partitions=64"])
    assert cfg.select.k == 7 and cfg.quantize.pool_k == 50 and cfg.run_id == "abc"
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 64
    assert cfg.pool.format == "demo" and cfg.spark.master == "local[*]"


def test_cluster_templates_are_valid():
    cfg = load_config("conf/cluster.yaml")
    assert cfg.spark.master is None and cfg.quantize.pool_k == "auto"
    assert cfg.spark.log_level is None
    gpu = load_config("conf/cluster-gpu.yaml")
    assert gpu.runtime.jax_memory_fraction == 0.5 and gpu.embed.batch_size == 512


@pytest.mark.parametrize("path,sections", [
    ("conf/cluster.yaml", {"weigh", "train", "evaluate"}),
    ("conf/demo.yaml", {"weigh", "weights", "train", "evaluate"}),
])
def test_the_commented_stage_examples_are_valid_when_uncommented(tmp_path, path, sections):
    """Each config's commented block for a stage (`# weigh:` and the `#   ...` lines under it)
    loads and passes the checks once its '# ' is taken off."""
    import re
    lines = open(path).read().splitlines()
    for section in sections:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"# {section}:"))
        block = [lines[start]]
        for line in lines[start + 1:]:
            if not line.startswith("#   "):
                break
            block.append(line)
        text = "\n".join(lines) + "\n" + "\n".join(
            re.sub(r"\s+#.*$", "", line[2:]) for line in block) + "\n"
        (tmp_path / "cfg.yaml").write_text(text)
        cfg = load_config(str(tmp_path / "cfg.yaml"))
        assert getattr(cfg, section).enabled if section != "weights" else cfg.weights.path, section


@pytest.mark.parametrize("overrides,message", [
    (["select.kk=3"], "unknown key(s) 'select.kk'; valid keys in select: k, estimator"),
    (["colour=red"], "unknown key(s) 'colour'"),
    (["select.k=0"], "select.k must be a positive integer; got 0."),
    (["select.estimator=mean"], "select.estimator='mean' is not one of 'knn', 'averaged'"),
    (["quantize.distance=manhattan"], "quantize.distance must be euclidean or cosine"),
    (["quantize.algorithm=elkan"], "quantize.algorithm must be lloyd or mllib; got 'elkan'."),
    (["quantize.init_rows=0"],
     "quantize.init_rows must be auto (10 rows a cluster, 10,000 to 20,000) or an integer >= 1; "
     "got 0."),
    (["quantize.driver_rows=lots"],
     "quantize.driver_rows must be auto (as many rows as an eighth of spark.driver.memory holds) "
     "or an integer >= 1; got 'lots'."),
    (["embed.backend=tensorrt"], "embed.backend must be torch, onnx or onnx-int8; got 'tensorrt'."),
    (["pool.format=xlsx"], "pool.format='xlsx' is not one of"),
    (["pool.path=null"], "pool.path is missing"),
    (["pool.path=123"], "pool.path must be a path or URL written as text; got the int 123"),
    (["select.stop_criterion=max_resets"], "needs resets_allowed=True"),
    (["select.stop_criterion=min_kl", "select.resets_allowed=true"],
     "select.resets_allowed has no effect with stop_criterion='min_kl'"),
    (["select.k"], "expected key=value"),
    (["embed.batch_size=-1"], "embed.batch_size must be an integer >= 1"),
    (["runtime.jax_memory_fraction=1.5"], "runtime.jax_memory_fraction must be null or in (0, 1]"),
    (["select.jax_memory_fraction=1.5"], "runtime.jax_memory_fraction must be null or in (0, 1]"),
    (["runtime.stage_log_batch_s=-1"], "runtime.stage_log_batch_s must be a number >= 0; got -1"),
    (["select.dim=-3"], "select.dim must be None"),
    (["select.max_resets=-1"], "select.max_resets must be >= 0"),
    (["select.min_kl=abc"], "select.min_kl must be a finite number"),
    (["select.random_restart_prob=2"], "select.random_restart_prob must be <= 1"),
    (["select.smoothing=0"], "select.smoothing must be > 0"),
    (["select.max_sequential_increases=0"], "select.max_sequential_increases must be >= 1"),
    (["select.grad_desc_iter=0"], "select.grad_desc_iter must be >= 1"),
    (["select.seed=-1"], "select.seed must be >= 0"),
    (["select.seed=99999999999999999999999"], "select.seed must be <= 9223372036854775807"),
    (["quantize.seed=99999999999999999999999"], "quantize.seed must be an integer between"),
    (["select.k=40"], "select.k=40 needs more than 40 target clusters, but quantize.target_k=40"),
    (["spark.conf=3"], "spark.conf must be a mapping"),
    (["spark.master=local[abc]"], "spark.master must be null (spark-submit's) or a master URL "
                                  "Spark takes: local[*], local[N], spark://host:7077, yarn or "
                                  "k8s://https://host:port; got 'local[abc]'."),
    (["spark.master=spark:/host"], "a master URL Spark takes: local[*], local[N], "
                                   "spark://host:7077, yarn or k8s://https://host:port; got "
                                   "'spark:/host'."),
    (["spark.app_name=''"], "spark.app_name must be a non-empty string; got ''."),
    (["spark.conf={a: [1, 2]}"], "spark.conf.a must be a single value, not list."),
    (["output.path=''"], "output.path must be a folder (or object-store URL) for the Delta "
                       "tables; got ''."),
    (["output.table=a.b.c.d"], "output.table must be null or a table name such as db.selected"),
    (["spark=[1, 2]"], "section 'spark' must be a mapping"),
    (["pool.bad_rows=ignore"], "pool.bad_rows must be reject or drop"),
    (["run_id=a/b"], "run_id must be null or 1-128 letters"),
    (["select.use_weights=maybe"], "select.use_weights must be true or false"),
    (["quantize.pool_k=some"], "quantize.pool_k must be auto (from the pool's size) or an "
                               "integer >= 1; got 'some'"),
    (["select.fill=kl"], "select.fill must be auto (mmd with the mmd rule), mmd or null"),
    (["select.fill=mmd", "select.stop_criterion=increase"], "select.fill='mmd' fills a budget "
                                                            "past the point where the mmd rule"),
    (["select.refine=centroids"], "select.refine must be auto, rows or clusters; got "
                                  "'centroids'."),
    (["select.candidates=0.5"], "select.candidates must be a finite number >= 1 (candidate "
                                "rows per row to select); got 0.5."),
    (["select.candidates=.inf"], "select.candidates must be a finite number >= 1"),
    (["select.max_candidates=0"], "select.max_candidates must be an integer >= 1"),
    (["select.max_target_rows=4"], "select.k=5 needs more than 5 target rows in the row step, "
                                   "but select.max_target_rows=4"),
    (["evaluate.methods=[random, best]"], "evaluate.methods must be a list of distinct methods"),
    (["evaluate.target_domains=[a]"], "evaluate.target_domains needs evaluate.domain_column"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(InputError) as err:
        load_config("conf/demo.yaml", overrides)
    assert message in str(err.value)


def test_init_rows_auto_is_ten_a_cluster_between_10000_and_20000_never_under_k():
    from jobs.config import kmeans_init_rows
    q = load_config("conf/demo.yaml").quantize
    assert q.init_rows == "auto"
    assert [kmeans_init_rows(q, k) for k in (5, 500, 1000, 1500, 2000, 5000, 30_000)] == \
        [10_000, 10_000, 10_000, 15_000, 20_000, 20_000, 30_000]
    hand = load_config("conf/demo.yaml", ["quantize.init_rows=400"]).quantize
    assert kmeans_init_rows(hand, 9) == 400 and kmeans_init_rows(hand, 500) == 500


def test_driver_rows_auto_fills_an_eighth_of_the_heap_and_half_the_result_limit():
    from jobs.config import jvm_bytes, kmeans_driver_rows
    q = load_config("conf/demo.yaml").quantize
    assert q.driver_rows == "auto"
    mib = 2 ** 20
    # Spark's defaults (1g heap, 1g results): 128 MiB of rows, 4 bytes a value and 24 beside
    assert kmeans_driver_rows(q, 384, None, None) == 128 * mib // (384 * 4 + 24) == 86_037
    assert kmeans_driver_rows(q, 64, "4g", None) == 512 * mib // (64 * 4 + 24)
    # a large heap is held to half of spark.driver.maxResultSize, which 0 lifts
    assert kmeans_driver_rows(q, 384, "16g", "1g") == 512 * mib // 1560
    assert kmeans_driver_rows(q, 384, "16g", "0") == 2048 * mib // 1560
    assert kmeans_driver_rows(q, 384, "16g", "3000m") == 1500 * mib // 1560
    # the memory free where the rows land (this Python, or a Spark Connect client) holds too
    assert kmeans_driver_rows(q, 384, "16g", "0", 8 * 2 ** 30) == 1024 * mib // 1560
    assert kmeans_driver_rows(q, 384, "16g", "0", 10 ** 12) == 2048 * mib // 1560
    # a limit too small for a row leaves one row, not no limit
    assert kmeans_driver_rows(q, 384, None, "1") == 1
    # a setting this cannot read counts as Spark's default
    assert kmeans_driver_rows(q, 384, "lots", None) == 86_037
    assert kmeans_driver_rows(q, 10 ** 9, None, None) == 1
    assert (jvm_bytes("512M", "1g"), jvm_bytes(None, "1g"), jvm_bytes("0", "1g"),
            jvm_bytes("2048", "1g"), jvm_bytes("2048", "1g", mib)) == \
        (512 * mib, 1024 * mib, None, 2048, 2048 * mib)
    # spark.driver.memory's bare number is MiB, spark.driver.maxResultSize's bytes
    assert kmeans_driver_rows(q, 64, "4096", "1073741824") == 512 * mib // (64 * 4 + 24)
    hand = load_config("conf/demo.yaml", ["quantize.driver_rows=500"]).quantize
    assert kmeans_driver_rows(hand, 384, "64g", "0") == 500


def test_pool_k_auto_follows_the_pool_and_the_budget():
    from jobs.config import auto_pool_k, engine_options
    s = load_config("conf/demo.yaml").select
    assert load_config("conf/demo.yaml", ["quantize.pool_k=auto"]).quantize.pool_k == "auto"
    assert auto_pool_k(5824, s) == 305                      # 4 sqrt(rows)
    assert auto_pool_k(10 ** 6, s) == 4000
    assert auto_pool_k(999_000, s) == 3998
    # past a million rows the count holds, so K-means' cost grows linearly in the rows
    assert auto_pool_k(10 ** 7, s) == auto_pool_k(10 ** 9, s) == 4000
    share = load_config("conf/demo.yaml", ["select.max_fraction=0.01"]).select
    assert auto_pool_k(10 ** 7, share) == auto_pool_k(10 ** 9, share) == 10_000   # 100 / 1%
    small = load_config("conf/demo.yaml", ["select.max_fraction=0.001"]).select
    assert auto_pool_k(10 ** 8, small) == 20_000            # the cap
    assert auto_pool_k(100, s) == 50 and auto_pool_k(30, s) == 30
    budget = load_config("conf/demo.yaml", ["select.max_rows=1000"]).select
    assert auto_pool_k(5824, budget) == 582                 # 100 clusters' rows in the budget
    tiny = load_config("conf/demo.yaml", ["select.max_fraction=0.001"]).select
    assert auto_pool_k(5824, tiny) == 5824                  # never more than the rows
    capped = load_config("conf/demo.yaml", ["select.max_rows=1000",
                                            "select.max_centroids=500"]).select
    assert auto_pool_k(5824, capped) == 500
    # fill: auto is mmd with the mmd rule (the default), nothing with the others.
    assert engine_options(s)["fill"] == "mmd"
    other = load_config("conf/demo.yaml", ["select.stop_criterion=none"]).select
    assert engine_options(other)["fill"] is None


def test_config_files_that_cannot_be_used(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config("conf/nope.yaml")
    with pytest.raises(InputError, match="is a directory; give the path of a YAML file"):
        load_config(str(tmp_path))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output:\n  path: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="is not UTF-8 text"):
        load_config(str(latin))
    listed = tmp_path / "list.yaml"
    listed.write_text("- pool\n- target\n")
    with pytest.raises(InputError, match="must hold a mapping of sections .* not a list"):
        load_config(str(listed))
    broken = tmp_path / "broken.yaml"
    broken.write_text("select: {k: [\n")
    with pytest.raises(InputError, match="is not valid YAML"):
        load_config(str(broken))


def test_config_show_prints_the_effective_config_that_loads_back(tmp_path, capsys):
    import yaml

    from jobs import __version__
    from jobs.cli import main
    assert main(["config", "--show", "--config", "conf/demo.yaml", "--set", "select.k=7"]) == 0
    shown = capsys.readouterr().out
    data = yaml.safe_load(shown)
    assert data["select"]["k"] == 7 and data["quantize"]["pool_k"] == 300
    assert data["select"]["fill"] == "auto" and data["evaluate"]["sample_rows"] == 20000
    path = tmp_path / "shown.yaml"
    path.write_text(shown)
    want = load_config("conf/demo.yaml", ["select.k=7"]).to_dict()
    assert load_config(str(path)).to_dict() == want
    assert main(["config", "--set", "select.k=0"]) == 2
    assert capsys.readouterr().err.strip() == ("gio-spark: error: select.k must be a positive "
                                               "integer; got 0.")
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"gio-spark {__version__}"
    from importlib.metadata import version
    assert version("gio-spark") == __version__                 # setup.cfg reads the same one


def test_numbers_in_every_yaml_spelling_are_numbers(tmp_path):
    """``1e-4`` is a float in YAML 1.2 (PyYAML, on YAML 1.1, reads it as text): in files and in
    --set values alike."""
    path = tmp_path / "cfg.yaml"
    path.write_text("quantize:\n  tol: 1e-4\nselect:\n  min_kl: -2E1\n")
    cfg = load_config(str(path), ["evaluate.seed=3", "select.lr=5e-2"], command="config")
    assert cfg.quantize.tol == 1e-4 and isinstance(cfg.quantize.tol, float)
    assert cfg.select.min_kl == -20.0 and cfg.select.lr == 0.05
    assert load_config("conf/demo.yaml", ["run_id='1e5'"]).run_id == "1e5"   # quoted: text


def test_every_problem_of_a_config_is_named_at_once():
    with pytest.raises(InputError) as err:
        load_config("conf/demo.yaml", ["select.k=0", "quantize.tol=abc", "embed.batch_size=0",
                                       "colour=red", "pool.format=xlsx"])
    lines = str(err.value).splitlines()
    assert lines[0] == "5 problems in the config:"
    assert sorted(lines[1:]) == sorted([
        "  - unknown key(s) 'colour'; valid keys: spark, pool, target, embed, quantize, decontaminate, "
        "select, output, weigh, weights, train, evaluate, imnn, datamodels, runtime, run_id.",
        "  - pool.format='xlsx' is not one of delta, parquet, csv, tsv, jsonl, text, gio_csv, "
        "table, demo.",
        "  - embed.batch_size must be an integer >= 1; got 0.",
        "  - quantize.tol must be a number >= 0; got 'abc'.",
        "  - select.k must be a positive integer; got 0."])
    # A check that trips over a value already refused says nothing more about it.
    with pytest.raises(InputError) as err:
        load_config("conf/demo.yaml", ["quantize.target_k=abc"])
    assert str(err.value) == "quantize.target_k must be an integer >= 1; got 'abc'."


def test_config_command_checks_the_sources_it_shows(capsys):
    from jobs.cli import main
    assert main(["config", "--show", "--set", "pool.format=xlsx"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gio-spark: error: pool.format='xlsx' is not one of delta, parquet, csv, tsv, jsonl, "
        "text, gio_csv, table, demo.")
    assert main(["config", "--show", "--set", "target.bad_rows=ignore"]) == 2
    assert "target.bad_rows must be reject or drop; got 'ignore'." in capsys.readouterr().err


def test_the_deprecated_select_jax_keys_still_work_and_say_so(capsys):
    cfg = load_config("conf/demo.yaml", ["select.jax_platform=cpu", "select.jax_preallocate=true"])
    assert cfg.runtime.jax_platform == "cpu" and cfg.runtime.jax_preallocate is True
    assert cfg.select.jax_platform is None
    out = capsys.readouterr().out
    assert ("warning: select.jax_platform is deprecated; write runtime.jax_platform instead (this "
            "run uses runtime.jax_platform='cpu').") in out
    assert "select.jax_preallocate is deprecated" in out
    # The runtime section wins where both name a key.
    both = load_config("conf/demo.yaml", ["select.jax_platform=cpu", "runtime.jax_platform=gpu"])
    assert both.runtime.jax_platform == "gpu"


@pytest.mark.parametrize("master", ["local", "local[*]", "local[2]", "local[4, 3]", "local[*,2]",
                                    "local-cluster[2, 1, 1024]", "spark://127.0.0.1:7077",
                                    "spark://a:7077,b:7077", "yarn", "k8s://https://h:6443"])
def test_master_urls_spark_takes_are_accepted(master):
    assert load_config("conf/demo.yaml", [f"spark.master={master}"]).spark.master == master


def _ruled_keys(cls, prefix: str):
    """``(dotted key, Rule, the section path above it)`` of every declared rule, nested
    sections (``weigh.source``, ``train.validation``...) included."""
    import dataclasses

    from jobs.config import sections

    hints = __import__("typing").get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _ruled_keys(hints[f.name], f"{prefix}{f.name}.")
            continue
        rule = sections.rule_of(cls, f.name)
        if rule is not None:
            yield f"{prefix}{f.name}", rule, prefix.rstrip(".")


def test_each_declared_rule_is_checked_with_its_message():
    """Every ``Annotated[type, Rule]`` field, nested sources included: each value of a few
    candidates that its rule refuses (``True`` too, which is an int to Python) is refused by the
    loader with the rule's own message (the one the config reference's constraint column
    quotes). A nested source is checked when its stage is on, so its path is set too."""
    import yaml

    from jobs.config import sections

    checked = 0
    for key, rule, parent in _ruled_keys(sections.JobConfig, ""):
        extra = [f"{parent}.path=somewhere"] if parent.count(".") == 1 else []
        for bad in (0, "zzz", -1, 2.5, True, None, ""):
            if rule.ok(bad):
                continue
            value = yaml.safe_dump(bad).splitlines()[0] if bad != "" else "''"
            with pytest.raises(InputError) as err:
                load_config("conf/demo.yaml", [f"{key}={value}", *extra], command="config")
            assert rule.message(key, bad) in str(err.value), (key, bad, str(err.value))
            checked += 1
    assert checked >= 300, checked


@pytest.mark.parametrize("sets, held", [
    ([], 30.0), (["runtime.stage_log_batch_s=5"], 5.0), (["runtime.stage_log_batch_s=0"], 0.0),
    (["run_id=mine"], 0.0), (["train.run_id=mine"], 0.0), (["evaluate.run_id=mine"], 0.0),
    (["weigh.run_id=mine"], 0.0), (["imnn.run_id=mine"], 0.0)])
def test_a_run_holds_no_stage_log_record_where_an_id_is_set_by_hand(sets, held):
    from jobs.pipeline import batch_seconds
    assert batch_seconds(load_config("conf/demo.yaml", sets)) == held
