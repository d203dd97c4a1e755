import json

import numpy as np
import pytest

from jobs.config import SourceSection
from jobs.common.errors import InputError
from jobs.io.sources import clean_side, enforce, read_side, scan_side


def checked(df, side, src, warnings=None):
    """Scans a side and applies its policy, as the pipeline does; returns (report, clean frame)."""
    report = scan_side(df, side, src)
    enforce(df, side, src, report, (warnings if warnings is not None else []).append)
    return report, clean_side(df, src, report)

ROWS = [{"id": i, "text": f"row number {i}", "vec": [float(i), 1.0, 2.0]} for i in range(6)]


def write_all(tmp_path):
    """The same rows in every supported format."""
    import pandas as pd
    df = pd.DataFrame(ROWS)
    paths = {}
    paths["parquet"] = str(tmp_path / "rows.parquet")
    df.to_parquet(paths["parquet"])
    paths["csv"] = str(tmp_path / "rows.csv")
    df[["id", "text"]].to_csv(paths["csv"], index=False)
    paths["tsv"] = str(tmp_path / "rows.tsv")
    df[["id", "text"]].to_csv(paths["tsv"], index=False, sep="\t")
    paths["jsonl"] = str(tmp_path / "rows.jsonl")
    with open(paths["jsonl"], "w") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    paths["text"] = str(tmp_path / "rows.txt")
    with open(paths["text"], "w") as f:
        f.write("\n".join(r["text"] for r in ROWS) + "\n")
    paths["gio_csv"] = str(tmp_path / "gio.tsv")
    with open(paths["gio_csv"], "w") as f:
        for r in ROWS:
            f.write(f"{r['id']}\t{r['text']}\t{json.dumps(r['vec'])}\n")
    return paths


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "text", "delta"])
def test_every_format_reads_with_stable_ids(spark, tmp_path, fmt):
    paths = write_all(tmp_path)
    if fmt == "delta":
        paths["delta"] = str(tmp_path / "delta")
        spark.read.parquet(paths["parquet"]).write.format("delta").save(paths["delta"])
    src = SourceSection(format=fmt, path=paths[fmt], text_column="text")
    first = read_side(spark, "pool", src).select("row_id", "text").collect()
    assert checked(read_side(spark, "pool", src), "pool", src)[0]["kept"] == len(ROWS)
    again = read_side(spark, "pool", src).select("row_id", "text").collect()
    assert sorted(r["text"] for r in first) == sorted(r["text"] for r in ROWS)
    assert sorted(map(tuple, first)) == sorted(map(tuple, again))
    assert len({r["row_id"] for r in first}) == len(ROWS)


def test_id_column_and_precomputed_embeddings(spark, tmp_path):
    paths = write_all(tmp_path)
    src = SourceSection(format="parquet", path=paths["parquet"], id_column="id",
                        embedding_column="vec")
    df = read_side(spark, "pool", src)
    rows = {r["row_id"]: r["embedding"] for r in df.collect()}
    assert rows["3"] == pytest.approx([3.0, 1.0, 2.0])
    report, _ = checked(df, "pool", src)
    assert (report["rows"], report["kept"], report["dim_min"], report["dim_max"]) == (6, 6, 3, 3)


def test_gio_source_csv_form(spark, tmp_path):
    paths = write_all(tmp_path)
    df = read_side(spark, "pool", SourceSection(format="gio_csv", path=paths["gio_csv"],
                                                text_column=None))
    assert set(df.columns) >= {"_c0", "_c1", "_c2", "row_id", "embedding"}
    assert sorted(r["embedding"][0] for r in df.collect()) == [0, 1, 2, 3, 4, 5]


def test_missing_column_and_empty_table(spark, tmp_path):
    paths = write_all(tmp_path)
    with pytest.raises(InputError, match=r"pool.text_column 'body' is not a column .* its "
                                         r"columns are: id, text, vec"):
        read_side(spark, "pool", SourceSection(format="parquet", path=paths["parquet"],
                                               text_column="body"))
    empty = str(tmp_path / "empty.parquet")
    spark.read.parquet(paths["parquet"]).limit(0).write.parquet(empty)
    src = SourceSection(format="parquet", path=empty)
    with pytest.raises(InputError, match="has no rows"):
        checked(read_side(spark, "target", src), "target", src)


def test_bad_vectors_are_refused_with_examples(spark, tmp_path):
    import pandas as pd
    bad = str(tmp_path / "bad.parquet")
    pd.DataFrame({"id": ["a", "b", "c"], "vec": [[1.0, 2.0], [np.nan, 1.0], None]}).to_parquet(bad)
    src = SourceSection(format="parquet", path=bad, id_column="id", embedding_column="vec")
    with pytest.raises(InputError) as err:
        checked(read_side(spark, "pool", src), "pool", src)
    assert ("pool has rows it cannot use: 1 with a null vector (rows 'c'); 1 with NaN, inf or "
            "null vector values (rows 'b')") in str(err.value)
    assert "set pool.bad_rows: drop" in str(err.value)
    ragged = str(tmp_path / "ragged.parquet")
    pd.DataFrame({"vec": [[1.0, 2.0], [1.0, 2.0, 3.0]]}).to_parquet(ragged)
    src = SourceSection(format="parquet", path=ragged, embedding_column="vec")
    with pytest.raises(InputError, match="different lengths"):
        checked(read_side(spark, "pool", src), "pool", src)


def test_pool_columns_named_as_the_selected_rows_own_are_kept_as_source_columns(spark,
                                                                                tmp_path):
    """The selected rows add cluster_id, rank and run_id to the pool's columns: a pool column of
    one of those names is kept as source_<name> (the run failed in explode before, with an
    ambiguous reference); the target keeps its columns; an id column of such a name is refused
    before anything runs."""
    import pandas as pd
    path = str(tmp_path / "ranked.parquet")
    pd.DataFrame({"id": [1, 2], "rank": [3, 4], "run_id": ["a", "b"], "cluster_id": [0, 0],
                  "text": ["a", "b"]}).to_parquet(path)
    pool = read_side(spark, "pool", SourceSection(format="parquet", path=path, id_column="id"))
    assert pool.columns == ["id", "source_rank", "source_run_id", "source_cluster_id", "text",
                            "row_id"]
    assert [r["source_rank"] for r in pool.orderBy("id").collect()] == [3, 4]
    target = read_side(spark, "target", SourceSection(format="parquet", path=path,
                                                      id_column="id"))
    assert target.columns[:4] == ["id", "rank", "run_id", "cluster_id"]
    with pytest.raises(InputError, match="pool.id_column 'rank' has the name of a column the "
                                         "selected rows add"):
        read_side(spark, "pool", SourceSection(format="parquet", path=path, id_column="rank"))


def test_reserved_column_names_without_an_id_column(spark, tmp_path):
    """A source with its own row_id and embedding columns: kept as source_*, rows hashed."""
    import pandas as pd
    path = str(tmp_path / "reserved.parquet")
    pd.DataFrame({"row_id": [1, 1, 2], "embedding": ["x", "y", "z"],
                  "text": ["a", "b", "c"]}).to_parquet(path)
    src = SourceSection(format="parquet", path=path)
    df = read_side(spark, "pool", src)
    assert df.columns == ["source_row_id", "source_embedding", "text", "row_id"]
    report, _ = checked(df, "pool", src)
    assert report["kept"] == 3 and len({r["row_id"] for r in df.collect()}) == 3


def write_dirty(tmp_path):
    """Ten rows: two null ids, one blank text, id 'd' three times with different texts."""
    import pandas as pd
    rows = [("a", "alpha"), ("b", "beta"), (None, "no id 1"), (None, "no id 2"), ("c", "  "),
            ("d", "delta 1"), ("d", "delta 2"), ("d", "delta 3"), ("e", "epsilon"), ("f", None)]
    path = str(tmp_path / "dirty.parquet")
    pd.DataFrame(rows, columns=["id", "text"]).to_parquet(path)
    return path, rows


def test_bad_rows_reject_names_counts_and_examples(spark, tmp_path):
    path, _ = write_dirty(tmp_path)
    src = SourceSection(format="parquet", path=path, id_column="id")
    with pytest.raises(InputError) as err:
        checked(read_side(spark, "pool", src), "pool", src)
    message = str(err.value)
    assert message.startswith("pool has rows it cannot use: 2 with a null id")
    assert "2 with an id used by other rows too (e.g. 'd' x3)" in message
    assert "2 with a null or blank text (rows 'c', 'f')" in message
    assert "\n" not in message and "\n" not in repr(message).strip("'")


def test_bad_rows_drop_is_order_independent(spark, tmp_path):
    path, rows = write_dirty(tmp_path)
    src = SourceSection(format="parquet", path=path, id_column="id", bad_rows="drop")
    warnings = []
    report, clean = checked(read_side(spark, "pool", src), "pool", src, warnings)
    kept = sorted((r["row_id"], r["text"]) for r in clean.collect())
    assert [k[0] for k in kept] == ["a", "b", "d", "e"]
    assert report["rows"] - report["kept"] == 6
    assert "dropping 6 of 10 rows" in warnings[0]
    # The same rows in reverse order (and other partitioning) keep the same copy of 'd'.
    import pandas as pd
    reversed_path = str(tmp_path / "reversed.parquet")
    pd.DataFrame(rows[::-1], columns=["id", "text"]).to_parquet(reversed_path)
    src_r = SourceSection(format="parquet", path=reversed_path, id_column="id", bad_rows="drop")
    df_r = read_side(spark, "pool", src_r).repartition(3)
    _, clean_r = checked(df_r, "pool", src_r)
    assert sorted((r["row_id"], r["text"]) for r in clean_r.collect()) == kept
