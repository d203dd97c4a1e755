"""Embedding throughput: the Spark UDF on each ``embed.backend`` against bare
SentenceTransformer.encode, one run.

Same texts (the first N demo docstrings), same model (the bundled all-MiniLM-L6-v2), same cores:
bare ``encode`` in this process with torch's default threads (the baseline), then the
``mapInPandas`` UDF on ``local[C]`` with one thread per task and C partitions for each backend
(``torch``, ``onnx``, ``onnx-int8``), after a warm-up that loads the model (and makes the ONNX
files, once) in each Python worker. Each backend's vectors are compared with torch's on the same
texts (cosine, mean and least). Prints one JSON line per backend and a summary line.

    python bench/embed_throughput.py [--texts 3000] [--cores 2] [--backends torch,onnx,onnx-int8]
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--backends", default="torch,onnx,onnx-int8")
    parser.add_argument("--out")
    args = parser.parse_args()
    from bench._common import emit
    import numpy as np

    from jobs.io.demo_data import demo_rows
    from jobs.io.encoders import embed_frame, load_model
    from jobs.io.session import build_session
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
    import torch
    rows, vectors = [], {}
    for backend in args.backends.split(","):
        warm = embed_frame(df.limit(args.cores * 4).repartition(args.cores), "text",
                           batch_size=args.batch_size, threads=1, backend=backend)
        warm.write.format("noop").mode("overwrite").save()
        start = time.perf_counter()      # collected: 3,000 x 384 floats add little
        got = dict(embed_frame(df, "text", batch_size=args.batch_size, threads=1,
                               backend=backend).collect())
        udf = time.perf_counter() - start
        vectors[backend] = np.array([got[str(i)] for i in range(len(texts))], np.float32)
        row = {"backend": backend, "texts": len(texts), "cores": args.cores,
               "device": model.device.type, "torch_threads_bare": torch.get_num_threads(),
               "bare_torch_texts_per_s": round(len(texts) / bare, 1),
               "udf_texts_per_s": round(len(texts) / udf, 1),
               "udf_over_bare_torch": round(bare / udf, 3)}
        if "torch" in vectors:
            cos = (vectors[backend] * vectors["torch"]).sum(1)
            row.update(cosine_to_torch_mean=round(float(cos.mean()), 5),
                       cosine_to_torch_min=round(float(cos.min()), 5))
        rows.append(row)
        emit(row, args.out)
    spark.stop()
    base = next((r for r in rows if r["backend"] == "torch"), None)
    if base:
        emit({"summary": "udf texts/s over the torch udf's", **{
            r["backend"]: round(r["udf_texts_per_s"] / base["udf_texts_per_s"], 2)
            for r in rows}}, args.out)


if __name__ == "__main__":
    main()
