"""gio-spark from Python: DataFrames in, DataFrames out, on the caller's SparkSession.

    >>> import jobs
    >>> chosen = jobs.select_rows(pool_df, target_df, max_rows=50_000,
    ...                           output="s3a://bucket/gio")          # doctest: +SKIP
    >>> chosen.groupBy("rank").count().show()                         # doctest: +SKIP
    >>> jobs.runs("s3a://bucket/gio").select("run_id", "picks").show()  # doctest: +SKIP

:func:`select_rows` runs the same pipeline as ``gio-spark run`` (the same stages, checks, Delta
tables, run ids and reuse): the command line and ``spark-submit`` call the same code with a
config built from a YAML file. A pool or target may be a DataFrame, the name of a table of the
session's catalog, or a path (its format told by its name: a folder holding ``_delta_log`` is
Delta, ``*.csv``, ``*.tsv``, ``*.jsonl``/``*.json`` and ``*.txt`` are what they say, anything
else is Parquet). A DataFrame or a table that is not Delta's is identified by its content (one
pass: a row count and an order-free hash), so re-running on the same rows reuses the committed
stages and a changed row does not; a Delta table by its location and version.

Bad input raises :class:`jobs.InputError` (one message naming the problem, the value and what to
do) before anything is written; the session is the caller's and keeps its settings.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Mapping, Union

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.errors import InputError
from jobs.config import JobConfig, config_from_dict, read_config_file
from jobs.config.sections import OutputSection
from jobs.io import tables
from jobs.io.session import build_session, check_classic, check_delta
from jobs.io.sources import check_file_systems, preflight, register_frame, release_frame
from jobs import planning
from jobs.pipeline import COMMANDS, REGISTRY, STAGES, run_pipeline
from jobs.stages import weigh
from jobs.state import reuse

Source = Union[DataFrame, str]
ConfigLike = Union[JobConfig, Mapping, str, None]

_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
_SCRATCH: list[str] = []


def source_settings(side: str, source: Source) -> tuple[dict, str | None]:
    """The ``<side>.format`` and ``<side>.path`` settings that read ``source``, and the token of
    a DataFrame (to release after the run), or None."""
    if isinstance(source, DataFrame):
        token = register_frame(source)
        return {f"{side}.format": "dataframe", f"{side}.path": token}, token
    if not isinstance(source, str) or not source:
        raise InputError(f"{side} must be a DataFrame, a table name or a path; got "
                         f"{type(source).__name__} {source!r}.")
    local = source.removeprefix("file:")
    if "://" in source or os.path.sep in source or os.path.exists(local):
        if tables.on_file_system(source):
            delta = tables.path_exists(os.path.join(source, "_delta_log"))
        else:
            delta = os.path.isdir(os.path.join(local, "_delta_log"))
        if delta:
            fmt = "delta"
        else:
            fmt = _SUFFIXES.get(os.path.splitext(local.rstrip("/"))[1].lower(), "parquet")
        return {f"{side}.format": fmt, f"{side}.path": source}, None
    return {f"{side}.format": "table", f"{side}.path": source}, None


def _base(config: ConfigLike) -> dict:
    if config is None:
        return {}
    if isinstance(config, JobConfig):
        # Every key of a JobConfig is set, its default output folder too: that one does not
        # count as naming an output (the run then goes to a temporary folder, as without one).
        data = config.to_dict()
        if data["output"]["path"] == OutputSection().path:
            del data["output"]["path"]
        return data
    if isinstance(config, str):
        return read_config_file(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise InputError(f"config must be a JobConfig, a mapping of sections or the path of a YAML "
                     f"file; got {type(config).__name__}.")


def _session(spark: SparkSession | None, cfg: JobConfig) -> SparkSession:
    """The caller's session (given, or the active one), as it is; else a local one gio-spark
    starts with its defaults."""
    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        return build_session(cfg.spark.app_name, cfg.spark.master or "local[*]", cfg.spark.conf,
                             quiet=True, log_level=cfg.spark.log_level)
    check_delta(spark)
    return spark


def _is_local(spark: SparkSession) -> bool:
    master = spark.conf.get("spark.master", None) or ""
    return master.startswith("local")


def _scratch_output() -> str:
    """A folder for a run kept only for this Python process (removed when it exits)."""
    path = tempfile.mkdtemp(prefix="gio-spark-api-")
    if not _SCRATCH:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _SCRATCH])
    _SCRATCH.append(path)
    return os.path.join(path, "out")


def _run(data: dict, sets: dict, command: str, spark: SparkSession | None,
         reads=None, requires=None, classic: str | None = None) -> tuple[JobConfig, SparkSession]:
    """The checked config and the session to run a command on, after the checks every command
    runs before its work (the output location, the object stores' file systems, for the sides
    ``reads(cfg)`` names; both without it). Without an output location named, a scratch folder
    (local Spark only)."""
    cfg = config_from_dict(data, command, reads, requires, settings=sets)
    sides = tuple(reads(cfg)) if reads is not None else ("pool", "target")
    session = _session(spark, cfg)
    if classic is not None:
        check_classic(session, classic)
    if not ("output.path" in sets or (data.get("output") or {}).get("path")):
        if not _is_local(session):
            raise InputError("without output= the run is kept in a temporary folder of this "
                             "machine, which a cluster's executors cannot reach; give "
                             "output='s3a://...' (or another shared folder).")
        cfg.output.path = _scratch_output()
    preflight(cfg, sides)
    check_file_systems(session, cfg, sides)
    return cfg, session


def _columns(sets: dict, text_column, embedding_column, id_column) -> None:
    """The columns named for both sides (None: the config's)."""
    for side in ("pool", "target"):
        for key, value in (("text_column", text_column), ("embedding_column", embedding_column),
                           ("id_column", id_column)):
            if value is not None:
                sets[f"{side}.{key}"] = value


def _common(sets: dict, output, run_id, settings) -> dict:
    if run_id is not None:
        sets["run_id"] = run_id
    sets.update(settings or {})
    if output is not None:
        sets["output.path"] = output
    return sets


DEFAULT_DOMAIN_COLUMN = "domain"


def _targets(target, domain_column: str | None):
    """A target given as ``{domain: DataFrame}``: one DataFrame, each row with its domain in
    ``domain_column`` (default ``domain``), and the column's name; any other target as it is."""
    if not isinstance(target, Mapping):
        return target, domain_column
    column = domain_column or DEFAULT_DOMAIN_COLUMN
    if not target:
        raise InputError("target is an empty mapping; give {domain: DataFrame} with at least one "
                         "domain.")
    frames = []
    for name, frame in target.items():
        if not isinstance(frame, DataFrame):
            raise InputError(f"target[{name!r}] is a {type(frame).__name__}; a target given by "
                             "domain maps each domain to a DataFrame (spark.table(name) or "
                             "spark.read... for a table or files).")
        if column in frame.columns:
            raise InputError(f"target[{name!r}] already has a column {column!r}, the column the "
                             "domains go into; pass domain_column= another name.")
        frames.append(frame.withColumn(column, F.lit(str(name))))
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame, allowMissingColumns=True)
    return union, column


@contextlib.contextmanager
def _pipeline_run(pool, target, columns: tuple, extra: dict, config, output, run_id, settings,
                  spark) -> Iterator[tuple[JobConfig, SparkSession]]:
    """The checked config and session of a ``run`` on ``pool`` and ``target`` (given as
    select_rows takes them), ``columns`` (text, embedding, id) and the ``extra`` settings that
    are not None; a DataFrame handed in stays registered until the block ends."""
    sets: dict = {}
    tokens: list = []
    named = extra.pop("target.domain_column", None)
    if named is None and isinstance(target, Mapping):   # the column the config names, if any
        named = (settings or {}).get("target.domain_column") or (
            (_base(config).get("target") or {}).get("domain_column"))
    target, domain_column = _targets(target, named)
    if domain_column is not None:
        extra["target.domain_column"] = domain_column
    try:
        for side, source in (("pool", pool), ("target", target)):
            if source is not None:
                found, token = source_settings(side, source)
                sets.update(found)
                tokens += [token] if token else []
        _columns(sets, *columns)
        sets.update({key: value for key, value in extra.items() if value is not None})
        yield _run(_base(config), _common(sets, output, run_id, settings), "run", spark)
    finally:
        for token in tokens:
            release_frame(token)


def select_rows(pool: Source | None, target: Source | None, *, output: str | None = None,
                text_column: str | None = None, embedding_column: str | None = None,
                id_column: str | None = None, max_rows: int | None = None,
                max_fraction: float | None = None, table: str | None = None,
                domain_column: str | None = None, shares: Mapping[str, float] | None = None,
                config: ConfigLike = None, settings: Mapping[str, object] | None = None,
                run_id: str | None = None, spark: SparkSession | None = None) -> DataFrame:
    """Selects the pool's rows that bring it closest to the target (GIO on K-means clusters):
    the whole pipeline, as ``gio-spark run``.

    Args:
      pool: the rows to select from: a DataFrame, a catalog table's name (``db.docs``) or a
        path; None takes the side from ``config``.
      target: a sample of the distribution to select for, given as ``pool`` is; or several
        targets, ``{domain: DataFrame}``, each row then labelled with its domain in
        ``domain_column`` (default ``domain``).
      output: where the run's Delta tables go (a folder or an object-store URL every executor
        reaches); a re-run with the same inputs and settings reuses them. None: the config's
        ``output.path`` if it names one, else a temporary folder kept until this Python process
        exits (local Spark only).
      text_column: the text column of both sides, embedded with ``embed.model`` (None: the
        config's, by default ``text``).
      embedding_column: a vector column of both sides, used as it is: no model runs.
      id_column: a column identifying each row of both sides (None: rows are identified by
        their content).
      max_rows: the row budget, at most this many rows (``select.max_rows``).
      max_fraction: the row budget as a share of the pool's rows (``select.max_fraction``).
      table: a catalog table (``db.selected``) the selected rows are also written to
        (``output.table``: Delta, created when missing, this run's rows replaced).
      domain_column: the target's column naming the domain (the target) each row serves
        (``target.domain_column``): each domain is clustered apart, and ``selection_domains``
        records the domain each pick serves.
      shares: each domain's share of the row budget, such as ``{"code": 0.7, "math": 0.3}``
        (``select.shares``; needs a domain column and a budget); None: GIO chooses for the
        whole target.
      config: a ``jobs.config.JobConfig``, a mapping of sections, or a YAML file's path;
        the arguments above are set over it.
      settings: any config key as a dotted name and a Python value, for example
        ``{"select.k": 7, "quantize.target_k": 200}``; set over ``config``.
      run_id: the run's id (default: a fingerprint of the inputs and settings).
      spark: the session to run on (default: the active one; else a local one is started).

    Returns:
      The selected rows: the pool's own columns, then ``cluster_id``, ``rank`` (the order in
      which GIO picked the row where the row step picked it, which it does by default, with a
      row budget or without; else the pick that chose the row's cluster) and ``run_id``, read
      from ``selected_rows``.

    Raises:
      InputError: bad input (a setting, a missing column, rows that cannot be used...), before
        anything is written.
    """
    extra = {"select.max_rows": max_rows, "select.max_fraction": max_fraction,
             "output.table": table, "target.domain_column": domain_column,
             "select.shares": dict(shares) if shares is not None else None}
    with _pipeline_run(pool, target, (text_column, embedding_column, id_column), extra, config,
                       output, run_id, settings, spark) as (cfg, session):
        summary = run_pipeline(session, cfg)
    # The run has just recorded itself: its rows are read without looking it up in `runs`.
    return tables.read_key(session, cfg.output.path, "selected_rows", summary["run_id"])


def plan(pool: Source | None = None, target: Source | None = None, *,
         output: str | None = None, text_column: str | None = None,
         embedding_column: str | None = None, id_column: str | None = None,
         max_rows: int | None = None, max_fraction: float | None = None,
         domain_column: str | None = None, shares: Mapping[str, float] | None = None,
         config: ConfigLike = None, settings: Mapping[str, object] | None = None,
         run_id: str | None = None, sample_rows: int = planning.SAMPLE_ROWS,
         measure: bool = True, spark: SparkSession | None = None) -> planning.Forecast:
    """What [`select_rows`][jobs.api.select_rows] would do with the same arguments, before it
    runs, as ``gio-spark plan``: the stages it would reuse or run (and why), each side's files,
    bytes and rows, the clusters, the embedding time measured on a sample of the pool's texts,
    the driver memory the selection needs against what the driver has, and warnings naming the
    setting to change. Nothing is written.

    Args:
      pool: as in [`select_rows`][jobs.api.select_rows].
      target: as in [`select_rows`][jobs.api.select_rows].
      output: as in [`select_rows`][jobs.api.select_rows]; without one, every stage would run.
      text_column: as in [`select_rows`][jobs.api.select_rows].
      embedding_column: as in [`select_rows`][jobs.api.select_rows].
      id_column: as in [`select_rows`][jobs.api.select_rows].
      max_rows: as in [`select_rows`][jobs.api.select_rows].
      max_fraction: as in [`select_rows`][jobs.api.select_rows].
      domain_column: as in [`select_rows`][jobs.api.select_rows].
      shares: as in [`select_rows`][jobs.api.select_rows].
      config: as in [`select_rows`][jobs.api.select_rows].
      settings: as in [`select_rows`][jobs.api.select_rows].
      run_id: as in [`select_rows`][jobs.api.select_rows].
      sample_rows: the pool texts the embedding is timed on, after the model loads (at least
        16).
      measure: False runs no model and no JAX probe: the embedding time and JAX's own
        driver memory are left out.
      spark: as in [`select_rows`][jobs.api.select_rows].

    Returns:
      A ``jobs.planning.Forecast``: ``text()`` is what ``gio-spark plan`` prints, ``to_dict()``
      the same as data (``stages``, ``inputs``, ``clusters``, ``embedding``, ``driver``,
      ``changed``, ``warnings``).

    Raises:
      InputError: bad input, as [`select_rows`][jobs.api.select_rows] raises it.
    """
    sample_rows = planning.sample_rows_of(sample_rows, "sample_rows")
    extra = {"select.max_rows": max_rows, "select.max_fraction": max_fraction,
             "target.domain_column": domain_column,
             "select.shares": dict(shares) if shares is not None else None}
    with _pipeline_run(pool, target, (text_column, embedding_column, id_column), extra, config,
                       output, run_id, settings, spark) as (cfg, session):
        return planning.forecast(session, cfg, STAGES, sample_rows, measure=measure)


def learn_weights(source: Source | None, b_columns: list[str] | str | None = None, *,
                  a_columns: list[str] | None = None, embedding_column: str | None = None,
                  text_column: str | None = None, id_column: str | None = None,
                  output: str | None = None, config: ConfigLike = None,
                  settings: Mapping[str, object] | None = None, run_id: str | None = None,
                  spark: SparkSession | None = None) -> DataFrame:
    """Learns feature weights with the Differentiable Information Imbalance, as ``gio-spark
    weigh``: the weights of space A's features that make distances in A best predict the
    neighbours in space B.

    Args:
      source: the rows (a DataFrame, a catalog table's name or a path); None: the config's
        ``weigh.source``.
      b_columns: space B: numeric columns, one vector column, or one label column
        (``weigh.b_columns``; ``settings={"weigh.b_type": ...}`` says which when the types do
        not).
      a_columns: space A as numeric columns (``weigh.a_columns``).
      embedding_column: space A as one vector column (``weigh.source.embedding_column``).
      text_column: space A as a text column embedded with ``embed.model``
        (``weigh.source.text_column``).
      id_column: as in [`select_rows`][jobs.api.select_rows].
      output: as in [`select_rows`][jobs.api.select_rows].
      config: as in [`select_rows`][jobs.api.select_rows].
      settings: as in [`select_rows`][jobs.api.select_rows], for example ``{"weigh.num_epochs": 100}``.
      run_id: the weights' id (``weigh.run_id``; default: a fingerprint of the inputs and
        settings).
      spark: as in [`select_rows`][jobs.api.select_rows].

    Returns:
      The weights, one row per feature of A in order: ``feature``, ``name``, ``weight`` (as
      learnt) and ``scaled`` (divided by the largest: what the pipeline multiplies features by),
      and ``weights_id``.

    Raises:
      InputError: bad input, before anything is written.
    """
    sets: dict = {}
    token = None
    try:
        if source is not None:
            found, token = source_settings("weigh.source", source)
            sets.update(found)
        if isinstance(b_columns, str):
            b_columns = [b_columns]
        for key, value in (("weigh.b_columns", b_columns), ("weigh.a_columns", a_columns),
                           ("weigh.source.embedding_column", embedding_column),
                           ("weigh.source.text_column", text_column),
                           ("weigh.source.id_column", id_column), ("weigh.run_id", run_id)):
            if value is not None:
                sets[key] = value
        cfg, session = _run(_base(config), _common(sets, output, None, settings), "weigh",
                            spark, reads=weigh.STAGE.reads, requires=weigh.STAGE.required,
                            classic="learn_weights")
        key = weigh.weigh_command(session, cfg, None)
    finally:
        if token:
            release_frame(token)
    return (tables.read_key(session, cfg.output.path, "feature_weights", key)
            .select("weights_id", "feature", "name", "weight", "scaled").orderBy("feature"))


# The stages run_stage runs, with the plan keys of their output tables.
STAGE_NAMES = ("weigh", "embed", "quantize", "select", "explode", "train", "evaluate")


def _output_keys(spark: SparkSession, cfg: JobConfig, name: str) -> dict[str, str]:
    """The key of each output table of stage ``name`` under this config (as its command
    computes them)."""
    if name == "weigh":
        weights_id = reuse.make_weigh_plan(spark, cfg).weights_id
        return {"feature_weights": weights_id, "weight_runs": weights_id}
    if name == "train":
        pool_plan = reuse.make_plan(spark, cfg) if cfg.train.needs_pool else None
        train_id = reuse.make_train_plan(spark, cfg, pool_plan).train_id
        return {"models": train_id, "train_runs": train_id}
    plan = reuse.make_plan(spark, cfg)
    if name == "evaluate":
        return {"evaluations": reuse.make_evaluate_plan(spark, cfg, plan).eval_id}
    return {"text_embeddings": reuse.text_model_id(cfg),
            "pool_embeddings": plan.embeddings_id["pool"],
            "target_embeddings": plan.embeddings_id["target"],
            "centroids": plan.clustering_id, "pool_assignments": plan.clustering_id,
            "set_aside": plan.clustering_id,
            "selection": plan.run_id, "selection_domains": plan.run_id, "runs": plan.run_id,
            "selected_rows": plan.run_id}


def run_stage(name: str, pool: Source | None = None, target: Source | None = None, *,
              source: Source | None = None, text_column: str | None = None,
              embedding_column: str | None = None, id_column: str | None = None,
              output: str | None = None, config: ConfigLike = None,
              settings: Mapping[str, object] | None = None, run_id: str | None = None,
              spark: SparkSession | None = None) -> dict[str, DataFrame]:
    """Runs one stage alone, as ``gio-spark <name>`` does (reusing what is committed), and
    returns its output tables, each cut to this config's key (quantize's ``set_aside`` only
    where ``decontaminate.threshold`` is set; embed's ``text_embeddings`` where it exists).

    Args:
      name: ``weigh``, ``embed``, ``quantize``, ``select``, ``explode``, ``train`` or
        ``evaluate``. A stage needs what comes before it under ``output`` (``select`` the
        clustering ``quantize`` committed...): run them in order, or use
        [`select_rows`][jobs.api.select_rows].
      pool: as in [`select_rows`][jobs.api.select_rows].
      target: as in [`select_rows`][jobs.api.select_rows].
      source: the weigh stage's rows (its columns go in ``settings``).
      text_column: as in [`select_rows`][jobs.api.select_rows].
      embedding_column: as in [`select_rows`][jobs.api.select_rows].
      id_column: as in [`select_rows`][jobs.api.select_rows].
      output: as in [`select_rows`][jobs.api.select_rows].
      config: as in [`select_rows`][jobs.api.select_rows].
      settings: as in [`select_rows`][jobs.api.select_rows].
      run_id: as in [`select_rows`][jobs.api.select_rows].
      spark: as in [`select_rows`][jobs.api.select_rows].

    Returns:
      ``{table: DataFrame}`` for each table the stage writes, for example
      ``run_stage("embed", pool, target, output=out)["pool_embeddings"]`` (``row_id``,
      ``embedding``; ``text_embeddings`` is the store of every text's vector under the model's
      key).

    Raises:
      InputError: an unknown stage, bad input, or a stage before it not run yet.
    """
    if name not in STAGE_NAMES:
        raise InputError(f"stage {name!r} is not one run_stage runs; choose one of "
                         f"{', '.join(STAGE_NAMES)}.")
    stage = COMMANDS[name]
    sets: dict = {}
    tokens: list = []
    try:
        for side, found in (("pool", pool), ("target", target), ("weigh.source", source)):
            if found is not None:
                more, token = source_settings(side, found)
                sets.update(more)
                tokens += [token] if token else []
        _columns(sets, text_column, embedding_column, id_column)
        cfg, session = _run(_base(config), _common(sets, output, run_id, settings), name, spark,
                            reads=stage.reads, requires=stage.required,
                            classic=None if stage.connect else f"run_stage({name!r})")
        stage.command(session, cfg, REGISTRY)
        keys = _output_keys(session, cfg, name)
    finally:
        for token in tokens:
            release_frame(token)
    return {table: tables.read_key(session, cfg.output.path, table, keys[table])
            for table in stage.outputs if _returned(session, cfg, table)}


def _returned(spark: SparkSession, cfg: JobConfig, table: str) -> bool:
    """Whether run_stage returns ``table``: quantize's ``set_aside`` where the decontaminate
    section is on; select's ``selection_domains`` where the target has domains; embed's store
    where it exists (sides of precomputed vectors, or text sides
    whose embeddings were made before the store, write none)."""
    if table == "set_aside":
        return cfg.decontaminate.enabled
    if table == "selection_domains":
        return cfg.target.domain_column is not None
    if table == "text_embeddings":
        return tables.exists(spark, tables.table_path(cfg.output.path, table))
    return True


def runs(output: str, spark: SparkSession | None = None) -> DataFrame:
    """The runs recorded under ``output``, newest first: ``run_id``, ``started_at``,
    ``finished_at``, ``picks``, ``stop_reason``, the curves, ``params`` (the whole config as
    JSON), ``inputs`` (rows read and dropped per side)...

    Raises:
      InputError: ``output`` holds no runs.
    """
    spark = spark or _active()
    return tables.read_table(spark, output, "runs").orderBy(F.desc("finished_at"), "run_id")


def selection(output: str, run_id: str | None = None,
              spark: SparkSession | None = None) -> DataFrame:
    """The selected rows of run ``run_id`` under ``output`` (default: the run that finished
    last), as [`select_rows`][jobs.api.select_rows] returns them.

    Raises:
      InputError: no such run, or no run at all.
    """
    spark = spark or _active()
    if run_id is None:
        last = runs(output, spark).select("run_id").first()
        if last is None:
            raise InputError(f"{output!r} holds no finished run; run the pipeline first.")
        run_id = last[0]
    elif runs(output, spark).where(F.col("run_id") == run_id).first() is None:
        known = [r[0] for r in runs(output, spark).select("run_id").limit(5).collect()]
        raise InputError(f"run {run_id!r} is not recorded under {output!r}; its runs (newest "
                         f"first): {', '.join(known) or 'none'}.")
    return tables.read_key(spark, output, "selected_rows", run_id)


def _active() -> SparkSession:
    spark = SparkSession.getActiveSession() or SparkSession._instantiatedSession
    if spark is None:
        raise InputError("no active SparkSession: pass spark=, or start one first.")
    return spark
