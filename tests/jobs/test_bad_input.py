"""Bad input, as a new user meets it: every row of the README's bad-input table is a case here.

Each case runs the real command (``gio-spark run``, or the stage named) in this process and
checks: exit code 2, exactly one line on stderr that starts with ``gio-spark: error:`` and says
what the README's row says, and nothing written under ``output.path`` (no folder created, or the
existing one unchanged to the byte and the timestamp).
"""
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from jobs.cli import main
from tests.jobs.test_pipeline import ROOT

DEMO = os.path.join(ROOT, "conf", "demo.yaml")
SMALL_SCHEMA = T.StructType([T.StructField("stage", T.StringType()),
                             T.StructField("key", T.StringType())])
README = os.path.join(ROOT, "docs", "pipeline.md")   # its bad-input table


@dataclass
class Case:
    kind: str                   # the README row's first cell
    says: str                   # a fragment of the message (the README row's second cell has it)
    make: Callable              # make(tmp, base_sets) -> (argv after the command, output path)
    command: str = "run"


def vectors(tmp, name, rows=60, dim=8, seed=0, **columns):
    rng = np.random.default_rng(seed)
    data = {"id": np.arange(rows), "vec": list(rng.normal(0, 1, (rows, dim)).astype(np.float32))}
    data.update(columns)
    path = str(tmp / f"{name}.parquet")
    pd.DataFrame(data).to_parquet(path)
    return path


def base(tmp, pool=None, target=None, out=None, text=False, *extra):
    """Overrides for a small valid run; ``pool``/``target`` replace a side's path."""
    sets = []
    for side, path in (("pool", pool), ("target", target)):
        if path is None:
            path = (texts(tmp, side) if text else vectors(tmp, side, seed=side == "target"))
        sets += [f"{side}.path={path}", f"{side}.format=parquet", f"{side}.id_column=id"]
        sets += [f"{side}.text_column=text"] if text else [f"{side}.embedding_column=vec"]
    out = out or str(tmp / "out")
    sets += ["quantize.pool_k=5", "quantize.target_k=5", "select.k=2", f"output.path={out}",
             "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=2"]
    return sets + list(extra), out


def texts(tmp, name, values=None):
    values = values or [f"sentence number {i} about {name}" for i in range(20)]
    path = str(tmp / f"{name}_text.parquet")
    pd.DataFrame({"id": range(len(values)), "text": values}).to_parquet(path)
    return path


def argv(sets, config=DEMO):
    out = ["--config", config]
    for item in sets:
        out += ["--set", item]
    return out


def with_sets(*extra, **kw):
    """A case maker: the base run plus ``extra`` overrides."""
    def make(tmp):
        sets, out = base(tmp, **kw)
        return argv(sets + list(extra)), out
    return make


def config_file(content: bytes):
    def make(tmp):
        path = tmp / "job.yaml"
        path.write_bytes(content)
        sets, out = base(tmp)
        return ["--config", str(path)] + argv(sets)[2:], out
    return make


def config_dir(tmp):
    sets, out = base(tmp)
    return ["--config", str(tmp)] + argv(sets)[2:], out


def no_equals(tmp):
    sets, out = base(tmp)
    return argv(sets) + ["--set", "select.k"], out


def output_is_file(tmp):
    path = tmp / "out.txt"
    path.write_text("not a folder\n")
    return argv(base(tmp, out=str(path))[0]), str(path)


def output_is_delta(tmp, spark):
    out = str(tmp / "user_table")
    spark.range(3).write.format("delta").save(out)
    return argv(base(tmp, out=out)[0]), out


def output_inside_input(tmp, spark):
    folder = tmp / "pool_dir"
    folder.mkdir()
    vectors(folder, "part")
    sets, _ = base(tmp, pool=str(folder), out=str(folder / "gio"))
    return argv(sets), str(folder / "gio")


def not_delta(tmp):
    sets, out = base(tmp)
    return argv(sets + ["pool.format=delta"]), out


def delta_missing_file(tmp, spark):
    path = str(tmp / "pool_delta")
    spark.read.parquet(vectors(tmp, "p")).repartition(2).write.format("delta").save(path)
    os.remove(next(os.path.join(path, f) for f in sorted(os.listdir(path))
                   if f.endswith(".parquet")))
    sets, out = base(tmp, pool=path)
    return argv(sets + ["pool.format=delta"]), out


def not_parquet(tmp):
    path = tmp / "pool.csv"
    path.write_text("id,vec\n1,2\n")
    sets, out = base(tmp, pool=str(path))
    return argv(sets), out


def empty_parquet(tmp):
    path = str(tmp / "nothing.parquet")
    pd.DataFrame().to_parquet(path)
    return argv(base(tmp, target=path)[0]), str(tmp / "out")


def no_rows(tmp):
    path = str(tmp / "empty.parquet")
    pd.DataFrame({"id": pd.Series([], dtype="int64"),
                  "vec": pd.Series([], dtype="object")}).to_parquet(path)
    return argv(base(tmp, target=path)[0]), str(tmp / "out")


def string_vectors(tmp):
    path = str(tmp / "strings.parquet")
    pd.DataFrame({"id": range(30), "vec": [f"row {i}" for i in range(30)]}).to_parquet(path)
    return argv(base(tmp, pool=path)[0]), str(tmp / "out")


def list_ids(tmp):
    path = str(tmp / "list_ids.parquet")
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": [[i, i + 1] for i in range(30)],
                  "vec": list(rng.normal(0, 1, (30, 8)).astype(np.float32))}).to_parquet(path)
    return argv(base(tmp, pool=path)[0]), str(tmp / "out")


def unterminated_quote(tmp):
    path = tmp / "pool.tsv"
    rows = [f'{i}\tline {i}\t[{i}.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]' for i in range(20)]
    rows[4] = '4\t"an unterminated quote\t[4.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]'
    path.write_text("\n".join(rows) + "\n")
    sets, out = base(tmp, pool=str(path))
    return argv(sets + ["pool.format=gio_csv", "pool.embedding_column=null",
                        "pool.id_column=_c0"]), out


def nan_vectors(tmp):
    rng = np.random.default_rng(1)
    vecs = list(rng.normal(0, 1, (40, 8)).astype(np.float32))
    vecs[7][3] = np.nan
    path = str(tmp / "nan.parquet")
    pd.DataFrame({"id": range(40), "vec": vecs}).to_parquet(path)
    return argv(base(tmp, pool=path)[0]), str(tmp / "out")


def ragged(tmp):
    vecs = [np.ones(8, np.float32)] * 20 + [np.ones(5, np.float32)] * 3
    path = str(tmp / "ragged.parquet")
    pd.DataFrame({"id": range(23), "vec": vecs}).to_parquet(path)
    return argv(base(tmp, pool=path)[0]), str(tmp / "out")


def dims(tmp):
    return argv(base(tmp, target=vectors(tmp, "t5", dim=5))[0]), str(tmp / "out")


def bad_ids(tmp):
    rng = np.random.default_rng(2)
    ids = [None, None, 3, 3, 3] + list(range(10, 45))
    path = str(tmp / "ids.parquet")
    pd.DataFrame({"id": pd.array(ids, dtype="Int64"),
                  "vec": list(rng.normal(0, 1, (40, 8)).astype(np.float32))}).to_parquet(path)
    return argv(base(tmp, pool=path)[0]), str(tmp / "out")


def blank_text(tmp):
    values = [f"text {i}" for i in range(20)]
    values[3], values[9] = "   ", None
    sets, out = base(tmp, pool=texts(tmp, "blank", values), text=True)
    return argv(sets), out


def latin1_text(tmp):
    path = tmp / "pool.txt"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(20)) + b"caf\xe9 au lait\n")
    sets, out = base(tmp, text=True)
    return argv(sets + [f"pool.path={path}", "pool.format=text", "pool.id_column=null"]), out


def small_target(tmp):
    return argv(base(tmp, target=vectors(tmp, "t2", rows=2))[0]), str(tmp / "out")


def identical_target(tmp):
    same = str(tmp / "same.parquet")
    pd.DataFrame({"id": np.arange(30), "vec": [np.ones(8, np.float32)] * 30}).to_parquet(same)
    return argv(base(tmp, target=same)[0]), str(tmp / "out")


def domain_target(values, *extra):
    """A case maker: the base run on a target with a ``dom`` column of ``values``."""
    def make(tmp):
        path = vectors(tmp, "domains", seed=1, dom=values)
        sets, out = base(tmp, target=path)
        return argv(sets + ["target.domain_column=dom", "select.max_rows=10", *extra]), out
    return make


def foreign_table(name):
    def make(tmp, spark):
        sets, out = base(tmp)
        spark.range(3).write.format("delta").save(os.path.join(out, name))
        return argv(sets), out
    return make


def plain_folder(tmp):
    sets, out = base(tmp)
    os.makedirs(os.path.join(out, "centroids"))
    open(os.path.join(out, "centroids", "notes.txt"), "w").write("mine\n")
    return argv(sets), out


def old_version_stages(tmp, spark):
    from delta.tables import DeltaTable

    from jobs.io import tables
    sets, out = base(tmp)
    (DeltaTable.create(spark).location(os.path.join(out, "stages"))
     .addColumns(SMALL_SCHEMA).property(tables.TABLE_PROPERTY, "stages")
     .property(tables.SCHEMA_PROPERTY, "1").execute())
    return argv(sets), out


def other_columns_stages(tmp, spark):
    from delta.tables import DeltaTable

    from jobs.io import tables
    sets, out = base(tmp)
    (DeltaTable.create(spark).location(os.path.join(out, "stages"))
     .addColumns(SMALL_SCHEMA).property(tables.TABLE_PROPERTY, "stages")
     .property(tables.SCHEMA_PROPERTY, tables.SCHEMA_VERSION).execute())
    return argv(sets), out


def weigh_source(tmp, rows=60, **changes):
    """A weigh source: the pool's vectors plus numeric columns a0..a2 and a label."""
    rng = np.random.default_rng(4)
    data = {"id": np.arange(rows), "vec": list(rng.normal(0, 1, (rows, 8)).astype(np.float32)),
            "label": rng.integers(0, 3, rows), "name": [f"row {i}" for i in range(rows)]}
    data.update({f"a{i}": rng.normal(0, 1, rows) for i in range(3)})
    data.update(changes)
    path = str(tmp / "weigh.parquet")
    pd.DataFrame(data).to_parquet(path)
    return path


def weigh_sets(*extra, **source):
    """A case maker: the base run plus a weigh section over :func:`weigh_source`."""
    def make(tmp):
        sets, out = base(tmp)
        sets += [f"weigh.source.path={weigh_source(tmp, **source)}", "weigh.source.id_column=id",
                 "weigh.source.embedding_column=vec", "weigh.b_columns=[label]",
                 "weigh.num_points=40"]
        return argv(sets + list(extra)), out
    return make


def nan_feature(tmp):
    values = np.random.default_rng(1).normal(0, 1, 60)
    values[9] = np.nan
    return weigh_sets("weigh.a_columns=[a0, a9]", a9=values)(tmp)


def scored_sets(key, name, column, pool_values, scored_values, extra, columns, last_set):
    """A case maker: the base run, its pool with ``column`` (``pool_values``), plus the section
    source ``key`` (train.validation, evaluate.heldout): 30 vector rows in ``<name>.parquet``
    with ``column``
    (``scored_values``; ``columns`` override or add columns, ``dim`` their vectors' length)."""
    def make(tmp):
        pool = vectors(tmp, "pool", **{column: pool_values})
        cols = {column: scored_values}
        cols.update(columns)
        scored = vectors(tmp, name, rows=30, dim=cols.pop("dim", 8), **cols)
        sets, out = base(tmp, pool=pool)
        sets += [f"{key}.path={scored}", f"{key}.format=parquet", f"{key}.id_column=id",
                 f"{key}.embedding_column=vec", last_set]
        return argv(sets + list(extra)), out
    return make


def train_sets(*extra, **validation):
    """The base run (its pool labelled) plus a train section scored on a labelled validation
    set."""
    rng = np.random.default_rng(5)
    return scored_sets("train.validation", "val", "label", rng.choice(["x", "y"], 60),
                       rng.choice(["x", "y"], 30), extra, validation, "train.label_column=label")


def evaluate_sets(*extra, **heldout):
    """The base run (its pool with a domain column) plus an evaluate section scored on
    held-out rows."""
    rng = np.random.default_rng(5)
    return scored_sets("evaluate.heldout", "held", "domain", rng.choice(["x", "y"], 60),
                       rng.choice(["x"], 30), extra, heldout, "evaluate.domain_column=domain")


def floats(rows=30):
    return np.random.default_rng(6).normal(0, 1, rows)


def simulations(spark, tmp, n=40, kind="fiducial", same=False, nan=False, fmt="delta"):
    """A small simulations table (n training and n validation Gaussian simulations)."""
    from jobs.stages.imnn import SIMULATIONS
    rng = np.random.default_rng(7)
    rows = []
    for split in ("train", "validation"):
        values = np.ones((n, 10)) if same else rng.normal(0, 1, (n, 10))
        if nan and split == "train":
            values[5, 2] = np.nan
        for i in range(n):
            der = np.stack([np.ones(10), (values[i] / 2)], -1)
            rows.append((split, kind, i, values[i].astype(np.float32).tolist(),
                         der.reshape(-1).astype(np.float32).tolist()))
    path = str(tmp / "sims")
    spark.createDataFrame(rows, SIMULATIONS).write.format(fmt).save(path)
    return path


def imnn_sets(*extra, **table):
    """A case maker: the imnn command on a small simulations table (``table``: how to make it;
    ``table=None``: no table)."""
    def make(tmp, spark):
        out = str(tmp / "out")
        sets = [f"output.path={out}", "spark.master=local[2]", "imnn.theta_fid=[0.0, 1.0]",
                "imnn.hidden=[8]", "imnn.max_iterations=2", "imnn.batch_size=16"]
        if table.get("path", True):
            sets.append(f"imnn.simulations={simulations(spark, tmp, **table)}")
        return argv(sets + list(extra)), out
    return make


def imnn_no_table(*extra):
    def make(tmp):
        out = str(tmp / "out")
        return argv([f"output.path={out}", "spark.master=local[2]"] + list(extra)), out
    return make


DATAMODELS = os.path.join(ROOT, "conf", "datamodels.yaml")
DM_SPEC = "datamodels.schema={masks: {shape: [4], dtype: bool_}, margins: {shape: [2], dtype: float32}}"


def dm_sets(action, *extra, config=DATAMODELS, store=False, then=(), spec=True):
    """A case maker: ``gio-spark datamodels <action>`` (``store``: an empty store of the config's
    spec made first, as an earlier init leaves it; ``then``: overrides for the command only)."""
    def make(tmp, spark):
        out = str(tmp / "out")
        sets = [f"output.path={out}", "spark.master=local[2]", *extra]
        if spec:
            sets[2:2] = ["datamodels.num_models=5", DM_SPEC]
        if store:
            from jobs.config import datamodels_spec, load_config
            from jobs.datamodels.actions import create_store
            base = load_config(DATAMODELS, [s for s in sets if s.startswith(("datamodels.num",
                                                                             "datamodels.schema"))])
            create_store(spark, os.path.join(out, "datamodels_store"), datamodels_spec(base))
        return [action] + argv(sets + list(then), config), out
    return make


def dm_spec_file(text):
    def make(tmp):
        path = tmp / "spec.json"
        path.write_text(text)
        out = str(tmp / "out")
        return ["init"] + argv([f"output.path={out}", f"datamodels.spec={path}",
                                "datamodels.num_models=null", "datamodels.schema=null"],
                               DATAMODELS), out
    return make


CASES = [
    Case("config file missing", "does not exist", lambda t: (
        ["--config", str(t / "nope.yaml")], str(t / "out"))),
    Case("config path is a folder", "is a directory; give the path of a YAML file", config_dir),
    Case("config file not UTF-8", "is not UTF-8 text",
         config_file("output:\n  path: caf\xe9\n".encode("latin-1"))),
    Case("config file not YAML", "is not valid YAML", config_file(b"select: {k: [\n")),
    Case("config top level not a mapping", "must hold a mapping of sections",
         config_file(b"- pool\n- target\n")),
    Case("unknown key", "unknown key(s) 'select.kk'", with_sets("select.kk=3")),
    Case("--set without a value", "expected key=value", no_equals),
    Case("a path given as a number", "pool.path must be a path or URL written as text",
         with_sets("pool.path=123")),
    Case("spark.conf not a mapping", "spark.conf must be a mapping", with_sets("spark.conf=3")),
    Case("a seed too large", "quantize.seed must be an integer between",
         with_sets("quantize.seed=99999999999999999999")),
    Case("an option out of range", "select.k must be a positive integer", with_sets("select.k=-1")),
    Case("a copy threshold above 1", "decontaminate.threshold must be null (off) or a cosine "
         "similarity in (0, 1]", with_sets("decontaminate.threshold=1.5")),
    Case("no target cluster to probe", "decontaminate.probes must be an integer >= 1",
         with_sets("decontaminate.threshold=0.95", "decontaminate.probes=0")),
    Case("a duplicates threshold of 0", "decontaminate.duplicates must be null (off) or a "
         "cosine similarity in (0, 1]", with_sets("decontaminate.duplicates=0")),
    Case("an update with MLlib's K-means", "quantize.update: assign needs quantize.algorithm: "
         "lloyd", with_sets("quantize.update=assign", "quantize.algorithm=mllib")),
    Case("embedding commits of no texts", "embed.commit_rows must be an integer >= 1",
         with_sets("embed.commit_rows=0")),
    Case("a size by density with whole clusters", "select.own_size: density sizes the "
         "selection in the row step", with_sets("select.own_size=density",
                                                "select.refine=clusters")),
    Case("shares without a domain column", "select.shares needs target.domain_column",
         with_sets("select.shares={a: 0.5, b: 0.5}", "select.max_rows=10")),
    Case("shares that do not add up to 1", "select.shares add up to 0.9, not 1",
         with_sets("select.shares={a: 0.5, b: 0.4}", "select.max_rows=10",
                   "target.domain_column=dom")),
    Case("shares without a row budget", "select.shares divide a row budget, but there is none",
         with_sets("select.shares={a: 0.5, b: 0.5}", "target.domain_column=dom")),
    Case("a domain YAML reads as a boolean", "select.shares has the key False: YAML reads an "
         "unquoted yes, no, on, off, true or false as a boolean",
         with_sets("select.shares={en: 0.5, no: 0.5}", "select.max_rows=10",
                   "target.domain_column=dom")),
    Case("a domain column that is not there", "target.domain_column 'dom' is not a column of",
         with_sets("target.domain_column=dom")),
    Case("a null domain", "target has rows it cannot use: 1 with a null domain",
         domain_target(["a"] * 30 + ["b"] * 29 + [None])),
    Case("a target domain too small", "the target's domain 'b' (target.domain_column 'dom') "
         "has 2 usable distinct rows; select.k=2 needs more than 2",
         domain_target(["a"] * 58 + ["b"] * 2)),
    Case("a share for a domain the target lacks", "select.shares names 'c', which "
         "target.domain_column 'dom' does not hold",
         domain_target(["a"] * 30 + ["b"] * 30, "select.shares={a: 0.5, b: 0.25, c: 0.25}")),
    Case("select.k not below quantize.target_k", "needs more than 5 target clusters",
         with_sets("select.k=5")),
    Case("more clusters than select.max_centroids", "select.max_centroids=4",
         with_sets("select.max_centroids=4", "quantize.target_k=4")),
    Case("unknown source format", "pool.format='xlsx' is not one of", with_sets("pool.format=xlsx")),
    Case("run_id with a slash", "run_id must be null or 1-128 letters", with_sets("run_id=a/b")),
    Case("input path missing", "does not exist. Check the path",
         with_sets("pool.path=/no/such/pool.parquet")),
    Case("object store without its connector", "pool.path 's3a://bucket/pool.parquet' is on "
         "s3a://, which this Spark cannot read or write",
         with_sets("pool.path=s3a://bucket/pool.parquet")),
    Case("output path is a file", "is a file; name a folder", output_is_file),
    Case("output path not writable", "is not writable", with_sets("output.path=/proc/gio-out")),
    Case("output path is itself a Delta table", "is itself a Delta table", output_is_delta),
    Case("output path inside an input", "is inside pool.path", output_inside_input),
    Case("column missing", "pool.embedding_column 'embedding' is not a column",
         with_sets("pool.embedding_column=embedding")),
    Case("text column not text", "pool.text_column 'id' has type bigint",
         with_sets("pool.embedding_column=null", "pool.text_column=id")),
    Case("vector column of another type", "pool.embedding_column 'id' has type bigint",
         with_sets("pool.embedding_column=id")),
    Case("not a Delta table", "is not a Delta table", not_delta),
    Case("Delta input missing a data file", "that its Delta log references is missing",
         delta_missing_file),
    Case("file of another format", "is not a Parquet file", not_parquet),
    Case("Parquet file without columns", "has no columns (a file written from an empty table?)",
         empty_parquet),
    Case("no rows", "has no rows; give it at least one", no_rows),
    Case("vector strings that are not vectors", "30 with a value that is not a vector",
         string_vectors),
    Case("an id column of lists", "pool.id_column 'id' holds array<bigint> values; an id is one "
         "text or number per row", list_ids),
    Case("CSV with an unterminated quote", "an unterminated quote shifts the fields",
         unterminated_quote),
    Case("NaN in a vector", "1 with NaN, inf or null vector values (rows '7')", nan_vectors),
    Case("vectors of different lengths", "vectors have different lengths (5 to 8)", ragged),
    Case("pool and target of other dimensions", "embedding dimension mismatch: pool 8, target 5",
         dims),
    Case("null and duplicate ids", "2 with a null id", bad_ids),
    Case("blank texts", "2 with a null or blank text", blank_text),
    Case("text that is not UTF-8", "1 with text that is not valid UTF-8", latin1_text),
    Case("target no larger than select.k", "the target has 2 usable rows; select.k=2 needs",
         small_target),
    Case("target of identical vectors", "hold 1 distinct vectors, so K-means can make at most 1",
         identical_target),
    Case("model that cannot be loaded", "embed.model '/no/such/model' cannot be loaded",
         with_sets("embed.model=/no/such/model", text=True)),
    Case("a user's Delta table under a gio-spark name", "was not created by gio-spark",
         foreign_table("centroids")),
    Case("a plain folder under a gio-spark name", "which is not a Delta table written by gio-spark",
         plain_folder),
    Case("a table of an older gio-spark", "was written by another version of gio-spark",
         old_version_stages),
    Case("a gio-spark table with other columns", "has the columns", other_columns_stages),
    Case("a stage run before its inputs exist", "run quantize (or the whole pipeline) first",
         with_sets(), command="select"),
    Case("weigh without space B", "weigh.b_columns is missing",
         weigh_sets("weigh.b_columns=null")),
    Case("weigh with an unknown option value", "weigh.optimizer_name must be one of",
         weigh_sets("weigh.optimizer_name=lbfgs")),
    Case("weigh column missing", "weigh.b_columns 'nope' is not a column",
         weigh_sets("weigh.b_columns=[nope]")),
    Case("weigh column not numeric", "weigh.a_columns must be numeric columns; name (string)",
         weigh_sets("weigh.a_columns=[a0, name]")),
    Case("weigh NaN in a feature column", "1 with a null, NaN or inf value in space A's columns",
         nan_feature),
    Case("weigh labels that are all the same", "holds a single label in every usable row",
         weigh_sets(label=np.zeros(60, int))),
    Case("weigh too few rows for k", "weigh.k_init=60 needs more than 60",
         weigh_sets("weigh.k_init=60", "weigh.num_points=1000")),
    Case("weights of another dimension", "have 3 features, but the embeddings have 8 dimensions",
         weigh_sets("weigh.a_columns=[a0, a1, a2]")),
    Case("periodic weights used for clustering", "K-means has no periodic distance",
         weigh_sets("weigh.a_columns=[a0, a1, a2]", "weigh.periods_A=[1, 0, 0]")),
    Case("weights that were never learnt", "there are no learnt weights under",
         with_sets("weights.run_id=weights-nope")),
    Case("weigh command without a weigh section", "the config has no weigh stage",
         with_sets(), command="weigh"),
    Case("train without a label column", "train.label_column is missing",
         train_sets("train.label_column=null")),
    Case("train label column missing", "train.label_column 'nope' is not a column of "
         "train.validation", train_sets("train.label_column=nope")),
    Case("train labels that are not classes", "class labels are text, integers or booleans",
         train_sets(label=floats())),
    Case("train null labels", "1 with a null label in train.label_column",
         train_sets(label=np.array(["x"] * 29 + [None], dtype=object))),
    Case("train threshold out of range", "train.cos_distance_thresh is a cosine distance",
         train_sets("train.cos_distance_thresh=3")),
    Case("train GAF with one micro-batch", "train.microbatches must be an integer >= 2",
         train_sets("train.microbatches=1")),
    Case("train features of another dimension", "have 8 features but train.validation has 4",
         train_sets(dim=4)),
    Case("train on a run that has not run", "has no selected rows under",
         train_sets(), command="train"),
    Case("train command without a train section", "the config has no train stage",
         with_sets(), command="train"),
    Case("evaluate domain column missing", "evaluate.domain_column 'nope' is not a column of "
         "the pool", evaluate_sets("evaluate.domain_column=nope")),
    Case("evaluate DSIR on vectors", "evaluate.methods has dsir, which resamples by the texts'",
         evaluate_sets("evaluate.methods=[random, dsir]")),
    Case("evaluate held-out rows of another dimension", "evaluate.heldout has 4 features but "
         "the pool's embeddings have 8", evaluate_sets(dim=4)),
    Case("evaluate a run that has not run", "has no selected rows under",
         evaluate_sets(), command="evaluate"),
    Case("evaluate command without an evaluate section", "the config has no evaluate stage",
         with_sets(), command="evaluate"),
    Case("imnn command without an imnn section", "the config has no imnn stage",
         imnn_no_table(), command="imnn"),
    Case("imnn coupling out of range", "imnn.coupling (the reference's λ) must be a number > 1",
         imnn_no_table("imnn.simulations=sims", "imnn.theta_fid=[0, 1]", "imnn.coupling=1"),
         command="imnn"),
    Case("imnn simulations not in Delta", "is not a Delta table", imnn_sets(fmt="parquet"),
         command="imnn"),
    Case("imnn non-finite simulation", "1 simulation(s) hold non-finite or null numbers",
         imnn_sets(nan=True), command="imnn"),
    Case("imnn derivatives of another length", "derivatives have 20 values; with 3 parameter",
         imnn_sets("imnn.theta_fid=[0, 1, 2]"), command="imnn"),
    Case("imnn unknown kind of simulation", "with split 'train' and kind 'perturbed'",
         imnn_sets(kind="perturbed"), command="imnn"),
    Case("imnn simulations that are all the same", "summaries of the training simulations at "
         "the initial weights is singular", imnn_sets(same=True), command="imnn"),
    Case("datamodels work without a spec", "the config has no datamodels spec",
         dm_sets("work", "datamodels.main_import=jobs.datamodels.example", config=DEMO,
                 spec=False),
         command="datamodels"),
    Case("datamodels spec file that is not JSON", "is not valid JSON: Expecting",
         dm_spec_file('{"num_models": 4, "schema": {'), command="datamodels"),
    Case("datamodels spec with an unknown dtype", "schema.margins.dtype 'complex64' is not one of",
         dm_sets("init", "datamodels.schema.margins.dtype=complex64"), command="datamodels"),
    Case("datamodels main that cannot be imported", "datamodels.main_import 'no_such_trainer' "
         "cannot be imported: ModuleNotFoundError", dm_sets(
             "work", "datamodels.main_import=no_such_trainer"), command="datamodels"),
    Case("datamodels main without index and logdir", "main cannot be called as main(index=..., "
         "logdir=...", dm_sets("work", "datamodels.main_import=jobs.cli", "datamodels.args={}"),
         command="datamodels"),
    Case("datamodels argv not a list of words", "datamodels.argv must be a list of "
         "command-line words", dm_sets("work", "datamodels.main_import=jobs.datamodels.example",
                                       "datamodels.argv=--trainer.multiple=2"),
         command="datamodels"),
    Case("datamodels store of another spec", "was created for another spec", dm_sets(
        "work", "datamodels.main_import=jobs.datamodels.example", store=True,
        then=["datamodels.num_models=6"]), command="datamodels"),
    Case("datamodels regress on a key the spec lacks", "datamodels.x_name 'pixels' is not a key "
         "of the store's spec", dm_sets("regress", "datamodels.x_name=pixels", store=True),
         command="datamodels"),
    Case("datamodels regress before any model completed", "has no completed models; run "
         "gio-spark datamodels work first", dm_sets("regress", store=True), command="datamodels"),
    Case("datamodels select without a budget", "datamodels select needs one budget",
         dm_sets("select", "datamodels.budget=null"), command="datamodels"),

]


def snapshot(path):
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        st = os.stat(path)
        return {".": (st.st_size, st.st_mtime_ns)}
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(spark, tmp_path, capsys, case):
    needs_spark = "spark" in case.make.__code__.co_varnames[:case.make.__code__.co_argcount]
    args, out = case.make(tmp_path, spark) if needs_spark else case.make(tmp_path)
    before = snapshot(out)
    capsys.readouterr()
    code = main([case.command] + args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("gio-spark: error: "), lines
    if os.environ.get("GIO_SPARK_DUMP_MESSAGES"):          # to write the README's table
        with open(os.environ["GIO_SPARK_DUMP_MESSAGES"], "a") as f:
            f.write(f"| {case.kind} | {lines[0].removeprefix('gio-spark: error: ')} |\n")
    assert case.says in lines[0], lines[0]
    assert snapshot(out) == before
    if before is None:
        assert not os.path.exists(out)
    if os.path.isdir(tmp_path / "out") and out != str(tmp_path / "out"):
        shutil.rmtree(tmp_path / "out")


def readme_rows():
    text = open(README, encoding="utf-8").read()
    table = text.split("<!-- bad-input-table -->")[1]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", table, re.M)
    return [(kind, says) for kind, says in rows if kind not in ("what is wrong", "---")]


def test_readme_table_is_the_cases():
    rows = readme_rows()
    assert [kind for kind, _ in rows] == [c.kind for c in CASES]
    for (kind, says), case in zip(rows, CASES, strict=True):
        assert case.says.replace("|", "\\|") in says.replace("`", ""), (kind, says, case.says)
