import json

import numpy as np
import pytest

from jobs.config import ConfigError, SourceSection
from jobs.sources import check_embeddings, read_side

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
    again = read_side(spark, "pool", src).select("row_id", "text").collect()
    assert sorted(r["text"] for r in first) == sorted(r["text"] for r in ROWS)
    assert sorted(map(tuple, first)) == sorted(map(tuple, again))
    assert len({r["row_id"] for r in first}) == len(ROWS)


def test_id_column_and_precomputed_embeddings(spark, tmp_path):
    paths = write_all(tmp_path)
    df = read_side(spark, "pool", SourceSection(format="parquet", path=paths["parquet"],
                                                id_column="id", embedding_column="vec"))
    rows = {r["row_id"]: r["embedding"] for r in df.collect()}
    assert rows["3"] == pytest.approx([3.0, 1.0, 2.0])
    assert check_embeddings(df, "pool") == 3


def test_gio_source_csv_form(spark, tmp_path):
    paths = write_all(tmp_path)
    df = read_side(spark, "pool", SourceSection(format="gio_csv", path=paths["gio_csv"],
                                                text_column=None))
    assert set(df.columns) >= {"_c0", "_c1", "_c2", "row_id", "embedding"}
    assert sorted(r["embedding"][0] for r in df.collect()) == [0, 1, 2, 3, 4, 5]


def test_missing_path_column_and_empty_table(spark, tmp_path):
    paths = write_all(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_side(spark, "pool", SourceSection(format="parquet", path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match=r"pool.text_column 'body' is not a column .* its "
                                          r"columns are: id, text, vec"):
        read_side(spark, "pool", SourceSection(format="parquet", path=paths["parquet"],
                                               text_column="body"))
    empty = str(tmp_path / "empty.parquet")
    spark.read.parquet(paths["parquet"]).limit(0).write.parquet(empty)
    with pytest.raises(ConfigError, match="has no rows"):
        read_side(spark, "target", SourceSection(format="parquet", path=empty))


def test_bad_embeddings_are_refused(spark, tmp_path):
    import pandas as pd
    bad = str(tmp_path / "bad.parquet")
    pd.DataFrame({"vec": [[1.0, 2.0], [np.nan, 1.0]]}).to_parquet(bad)
    df = read_side(spark, "pool", SourceSection(format="parquet", path=bad, embedding_column="vec"))
    with pytest.raises(ConfigError, match="1 embedding"):
        check_embeddings(df, "pool")
    ragged = str(tmp_path / "ragged.parquet")
    pd.DataFrame({"vec": [[1.0, 2.0], [1.0, 2.0, 3.0]]}).to_parquet(ragged)
    df = read_side(spark, "pool", SourceSection(format="parquet", path=ragged,
                                                embedding_column="vec"))
    with pytest.raises(ConfigError, match="different lengths"):
        check_embeddings(df, "pool")
