"""Embedding throughput: the Spark UDF against bare SentenceTransformer.encode, one run.

Same texts (the first N demo docstrings), same model (the bundled all-MiniLM-L6-v2), same cores:
bare ``encode`` in this process with torch's default threads, then the ``mapInPandas`` UDF on
``local[C]`` with one torch thread per task and C partitions, after a warm-up that loads the model
in each Python worker. Prints one JSON line with texts/s for both and their ratio.

    python bench/embed_throughput.py [--texts 3000] [--cores 2]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from jobs.demo_data import demo_rows
    from jobs.embed import embed_frame, load_model
    from jobs.session import build_session
    texts = [r["text"] for r in demo_rows("pool")][: args.texts]

    model = load_model("bundled", "auto")
    model.encode(texts[:64], batch_size=args.batch_size)                # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
    bare = time.perf_counter() - start

    spark = build_session("embed-bench", f"local[{args.cores}]",
                          {"spark.sql.shuffle.partitions": str(args.cores)})
    df = spark.createDataFrame([(str(i), t) for i, t in enumerate(texts)],
                               "row_id string, text string").repartition(args.cores).cache()
    df.count()
    warm = embed_frame(df.limit(args.cores * 4).repartition(args.cores), "text",
                       batch_size=args.batch_size, threads=1)
    warm.write.format("noop").mode("overwrite").save()
    start = time.perf_counter()
    embed_frame(df, "text", batch_size=args.batch_size, threads=1).write.format("noop") \
        .mode("overwrite").save()
    udf = time.perf_counter() - start
    spark.stop()
    import torch
    print(json.dumps({"texts": len(texts), "cores": args.cores, "device": model.device.type,
                      "torch_threads_bare": torch.get_num_threads(),
                      "bare_texts_per_s": round(len(texts) / bare, 1),
                      "udf_texts_per_s": round(len(texts) / udf, 1),
                      "udf_over_bare": round(bare / udf, 3)}))


if __name__ == "__main__":
    main()
