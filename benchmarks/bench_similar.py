"""Nearest-neighbour index over catalogue embeddings: build time, query time and recall at 100k and 1M rows.

  nice -n 10 python benchmarks/bench_similar.py --rows 100000 1000000           # the index galaxyvit similar uses
  nice -n 10 python benchmarks/bench_similar.py --rows 100000 --compare         # usearch, faiss-cpu, hnswlib

The embeddings are synthetic: `--clusters` Gaussian clusters in `--dim` dimensions (embeddings of galaxies
cluster by morphology; uniform random vectors would be the hardest case for any graph index). Queries are
other draws from the same clusters. Recall@k is measured against exact cosine search (numpy) on
`--recall-queries` of them; the query time is the median of single queries, one at a time (what
`galaxyvit similar` does), after a warm-up. faiss-cpu and hnswlib are needed only for --compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.similar_index import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH, build_index  # noqa: E402


def embeddings(rows: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """(rows, dim) float32 unit vectors around `clusters` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, rows)] + 0.6 * rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ base.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)


def usearch_candidate(base: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    index = build_index(base, np.arange(len(base)))

    def search(query: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(index.search(query, k).keys)

    return search


def faiss_candidate(base: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    index = faiss.IndexHNSWFlat(base.shape[1], CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EXPANSION_ADD
    index.add(base)
    index.hnsw.efSearch = EXPANSION_SEARCH

    def search(query: np.ndarray, k: int) -> np.ndarray:
        return index.search(query[None], k)[1][0]

    return search


def hnswlib_candidate(base: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=CONNECTIVITY, ef_construction=EXPANSION_ADD)
    index.add_items(base, np.arange(len(base)), num_threads=len(os.sched_getaffinity(0)))
    index.set_ef(EXPANSION_SEARCH)

    def search(query: np.ndarray, k: int) -> np.ndarray:
        return index.knn_query(query[None], k)[0][0]

    return search


CANDIDATES = {"usearch": usearch_candidate, "faiss-cpu HNSW": faiss_candidate, "hnswlib": hnswlib_candidate}


def measure(name: str, make: Callable, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int) -> None:
    t0 = time.perf_counter()
    search = make(base)
    build = time.perf_counter() - t0
    for q in queries[:20]:
        search(q, k)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q, k)
        times.append(time.perf_counter() - t0)
    found = [search(q, k) for q in queries[: len(truth)]]
    recall = np.mean([len(set(map(int, f)) & set(map(int, t))) / k for f, t in zip(found, truth, strict=True)])
    print(
        f"{name:<16} rows {len(base):>9,}  build {build:7.1f} s ({len(base) / build:8,.0f} rows/s)  "
        f"query median {1000 * statistics.median(times):6.3f} ms  p99 {1000 * np.percentile(times, 99):6.3f} ms  "
        f"recall@{k} {recall:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--compare", action="store_true", help="also faiss-cpu (HNSW) and hnswlib")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} dim {args.dim}, {args.clusters} clusters, k {args.k}, "
          f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    for rows in args.rows:
        data = embeddings(rows + args.queries, args.dim, args.clusters, seed=0)
        base, queries = data[:rows], data[rows:]  # queries: new draws around the same centres
        truth = exact(base, queries[: args.recall_queries], args.k)
        for name, make in CANDIDATES.items():
            if name != "usearch" and not args.compare:
                continue
            measure(name, make, base, queries, truth, args.k)
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
