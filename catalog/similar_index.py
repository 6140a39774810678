"""The nearest-neighbour index of a catalogue's embeddings: usearch's HNSW graph, cosine distance, kept beside
the shards and rebuilt only when they change.

  OUT/_similar.usearch   the graph and the vectors; key = the row's number in the catalogue (shards in manifest order)
  OUT/_similar.json      what it was built from: a digest of the manifest and of every shard's name, size and mtime

usearch was chosen over faiss-cpu (HNSW) and hnswlib by a measurement at 100k rows (docs/catalogue.md,
benchmarks/bench_similar.py). The distance is the cosine distance, 1 - cos(a, b): 0 for the same direction.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from usearch.index import Index

from catalog.shards import INDEX_FILES, MANIFEST, write_atomic

INDEX_FILE, INDEX_META = INDEX_FILES
CONNECTIVITY = 16  # HNSW "M": graph edges per node
EXPANSION_ADD = 128  # "efConstruction": candidates kept while inserting (graph quality)
EXPANSION_SEARCH = 64  # "ef": candidates kept while searching (recall against query time)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_index(vectors: np.ndarray, keys: np.ndarray) -> Index:
    """An HNSW index of (N, D) float32 `vectors` under the integer `keys`, on every core."""
    index = Index(
        ndim=vectors.shape[1],
        metric="cos",
        dtype="f32",
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )
    if len(vectors):
        index.add(np.asarray(keys, np.uint64), np.ascontiguousarray(vectors, np.float32), threads=cores())
    return index


def shards_digest(out: Path) -> str:
    """sha256 of the manifest and of each shard it lists (name, size, mtime): any rewrite changes it."""
    manifest_text = (out / MANIFEST).read_text()
    digest = hashlib.sha256(manifest_text.encode())
    for shard in json.loads(manifest_text)["shards"]:
        stat = (out / shard["file"]).stat()
        digest.update(f"{shard['file']}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_or_build(out: Path, embeddings: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[Index, bool]:
    """The saved index of the catalogue at `out` if it was built from the shards as they are, else a new one built
    from `embeddings()` ((N, D) vectors, their row numbers) and saved; (index, whether it was built now)."""
    digest = shards_digest(out)
    meta_path, index_path = out / INDEX_META, out / INDEX_FILE
    if meta_path.is_file() and index_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("shards_digest") == digest:
            index = Index.restore(str(index_path))
            if index is not None and len(index) == meta.get("rows"):
                return index, False
    vectors, keys = embeddings()
    index = build_index(vectors, keys)
    temp = out / f".tmp-{INDEX_FILE}.{os.getpid()}"
    index.save(str(temp))
    os.replace(temp, index_path)
    meta = {"shards_digest": digest, "rows": len(index), "dim": int(vectors.shape[1]), "metric": "cos"}
    meta |= {"connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD, "library": "usearch"}
    write_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    return index, True
