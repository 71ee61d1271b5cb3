"""The vector-index peers of `cargo bench --bench scale`, on the very vectors clinsearch
imported: hnswlib and faiss (both from PyPI), HNSW with the same M, ef_construction and
ef_search, cosine similarity (inner product over unit vectors). Also the exact top-10 of every
query (the ground truth every recall here is measured against).

Prints one JSON object: {"exact": [[row, ...] per query], "hnswlib": {...}, "faiss": {...}}
with build seconds (2 threads, as clinsearch builds), recall@10 and single-thread queries/s.
"""

import importlib.metadata
import argparse
import json
import time

import numpy as np


def recall(found, truth):
    hits = sum(len(set(f[:10]) & set(t[:10])) for f, t in zip(found, truth))
    return hits / (10 * len(truth))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npy", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--efc", type=int, required=True)
    ap.add_argument("--ef", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default="hnswlib,faiss")
    a = ap.parse_args()
    data = np.load(a.npy, mmap_mode="r")
    data = np.ascontiguousarray(data, dtype=np.float32)
    queries = np.load(a.queries).astype(np.float32)
    n, dim = data.shape
    out = {"rows": n, "dim": dim}

    # Exact: blocks of rows against every query.
    best = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 10), dtype=np.int64)
    for start in range(0, n, 65536):
        block = data[start:start + 65536]
        s = queries @ block.T
        ids = np.argpartition(-s, min(10, s.shape[1] - 1), axis=1)[:, :10]
        sc = np.take_along_axis(s, ids, axis=1)
        all_s = np.concatenate([best, sc], axis=1)
        all_i = np.concatenate([best_ids, ids + start], axis=1)
        order = np.argsort(-all_s, axis=1)[:, :10]
        best = np.take_along_axis(all_s, order, axis=1)
        best_ids = np.take_along_axis(all_i, order, axis=1)
    truth = best_ids.tolist()
    out["exact"] = truth

    peers = a.peers.split(",")
    if "hnswlib" in peers:
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=dim)
        idx.init_index(max_elements=n, M=a.m, ef_construction=a.efc, random_seed=1)
        idx.set_num_threads(a.threads)
        t = time.perf_counter()
        idx.add_items(data, np.arange(n))
        build = time.perf_counter() - t
        idx.set_ef(a.ef)
        idx.set_num_threads(1)
        t = time.perf_counter()
        labels, _ = idx.knn_query(queries, k=10)
        q = time.perf_counter() - t
        out["hnswlib"] = {
            "build_s": build,
            "recall": recall(labels.tolist(), truth),
            "qps": len(queries) / q,
            "version": importlib.metadata.version("hnswlib"),
        }
        del idx
    if "faiss" in peers:
        import faiss

        faiss.omp_set_num_threads(a.threads)
        idx = faiss.IndexHNSWFlat(dim, a.m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = a.efc
        t = time.perf_counter()
        idx.add(data)
        build = time.perf_counter() - t
        idx.hnsw.efSearch = a.ef
        faiss.omp_set_num_threads(1)
        t = time.perf_counter()
        _, labels = idx.search(queries, 10)
        q = time.perf_counter() - t
        out["faiss"] = {
            "build_s": build,
            "recall": recall(labels.tolist(), truth),
            "qps": len(queries) / q,
            "version": faiss.__version__,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
