"""Find galaxies like this one in a classified catalogue, and the least galaxy-like rows.

`similar(catalogue, query, k)`: the k rows whose embeddings (`galaxyvit classify --embeddings`) are nearest
to the query's by cosine distance. The query is a row id of the catalogue (that row itself is left out of
its answer) or an image file, which is embedded by the catalogue's own model (the model folder and sha256
that `_job.json` records; another model's embeddings would not be comparable). `odd(catalogue, k)`: the k
rows with the lowest `ood_score`, the least like the galaxies the model was trained on.
Both return a pyarrow table: rank, id, path, distance (similar only), class_name, p_max, ood_score,
in_distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from catalog.inputs import ArgumentError
from catalog.shards import JOB_FILE, MANIFEST

SHOWN = ["id", "path", "class_name", "p_max", "ood_score", "in_distribution"]


class Catalogue:
    """A finished `galaxyvit classify` output folder: its job, its manifest and its shards in row order."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).resolve()
        if not (self.out / MANIFEST).is_file() or not (self.out / JOB_FILE).is_file():
            raise ArgumentError(f"--catalogue {self.out}: not a finished `galaxyvit classify` output (no {MANIFEST})")
        self.job = json.loads((self.out / JOB_FILE).read_text())
        manifest = json.loads((self.out / MANIFEST).read_text())
        self.files = [str(self.out / shard["file"]) for shard in manifest["shards"]]
        self.rows = int(manifest["rows"])

    def read(self, columns: list[str]) -> pa.Table:
        """`columns` of every row, in row order (shards in manifest order)."""
        missing = [c for c in columns if c not in self.job["columns"]]
        if missing:
            hint = " (classify with --embeddings)" if "embedding" in missing else ""
            raise ArgumentError(f"--catalogue {self.out} has no column {missing[0]!r}{hint}")
        if not self.files:
            return pa.table({c: pa.array([]) for c in columns})
        dataset = pads.dataset(self.files, format=self.job["format"])
        return dataset.to_table(columns=columns)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) float32 embeddings of the rows that have one, and their row numbers."""
        column = self.read(["embedding"]).column("embedding").combine_chunks()
        rows = np.flatnonzero(np.asarray(column.is_valid()))
        dim = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)  # nulls drop their values
        return np.ascontiguousarray(values, np.float32), rows.astype(np.uint64)

    def rows_table(self, rows: np.ndarray) -> pa.Table:
        """SHOWN columns of the given row numbers, in that order."""
        return self.read(SHOWN).take(pa.array(np.asarray(rows, np.int64)))

    def row_of(self, row_id: str) -> int | None:
        """The row number whose id reads `row_id`, or None."""
        ids = self.read(["id"]).column("id")
        found = np.flatnonzero(np.asarray(pc.equal(pc.cast(ids, pa.string()), row_id).fill_null(False)))
        return int(found[0]) if len(found) else None


def query_embedding(catalogue: Catalogue, image: Path) -> np.ndarray:
    """The embedding of an image file by the catalogue's model, as `galaxyvit classify --embeddings` makes it."""
    from catalog.decode import read_crop
    from catalog.predict import view_mean, views_of
    from galaxyvit.card import load_verified
    from galaxyvit.preprocess import normalize
    from inference.runtime import load_model

    job = catalogue.job
    model_dir = Path(job.get("model_dir", ""))
    try:
        _, card = load_verified(model_dir, job["variant"])
    except Exception as exc:
        raise ArgumentError(f"the catalogue's model ({model_dir}) cannot be used to embed {image}: {exc}") from None
    if card.sha256 != job["sha256"]:
        raise ArgumentError(f"{model_dir} is no longer the model that made the catalogue (sha256 differs)")
    model = load_model(job["model"], model_dir, job["variant"], "auto")
    try:
        crop = read_crop(str(image), card.prep, int(job["max_pixels"]))
    except Exception as exc:
        raise ArgumentError(f"cannot read the query image {image}: {exc}") from None
    views = int(job.get("tta", 1))  # with --tta 8 the catalogue's embeddings are 8-view means
    _, embeddings = model.outputs(views_of(normalize(crop, card.prep)[None], views))
    if embeddings is None:
        raise ArgumentError(f"{model_dir} has no embedding output")
    return view_mean(embeddings, views)[0]


def similar(catalogue: str | Path | Catalogue, query: str | Path, k: int = 20) -> pa.Table:
    """The k rows nearest to `query` (a row id of the catalogue, or an image file) by cosine distance, nearest first.

    Builds the index beside the shards on first use, and again only when the shards change."""
    from catalog.similar_index import load_or_build

    cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue(catalogue)
    if k < 1:
        raise ArgumentError("--k must be at least 1")
    if "embedding" not in cat.job["columns"]:
        raise ArgumentError(f"--catalogue {cat.out} has no embeddings: classify it with --embeddings")
    index, _ = load_or_build(cat.out, cat.embeddings)
    row = cat.row_of(str(query))
    if row is not None:
        vector = index.get(row)
        if vector is None:
            raise ArgumentError(f"row {query} of {cat.out} has no embedding (its image could not be classified)")
    elif Path(query).is_file():
        vector = query_embedding(cat, Path(query))
    else:
        raise ArgumentError(f"{query} is neither a row id of {cat.out} nor an image file")
    matches = index.search(np.asarray(vector, np.float32), k + (row is not None))
    keys, distances = np.asarray(matches.keys, np.int64), np.asarray(matches.distances, np.float64)
    keep = keys != (-1 if row is None else row)
    keys, distances = keys[keep][:k], distances[keep][:k]
    table = cat.rows_table(keys)
    table = table.add_column(2, "distance", pa.array(distances, pa.float64()))
    return table.add_column(0, "rank", pa.array(np.arange(1, len(keys) + 1), pa.int32()))


def odd(catalogue: str | Path | Catalogue, k: int = 20) -> pa.Table:
    """The k rows with the lowest ood_score (the least galaxy-like first); rows without a score are left out."""
    cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue(catalogue)
    scores = cat.read(["ood_score"]).column("ood_score").to_numpy(zero_copy_only=False).astype(np.float64)
    rows = np.flatnonzero(~np.isnan(scores))
    if not len(rows) and cat.rows:
        raise ArgumentError(f"--catalogue {cat.out} has no ood_score: its model has no OOD rule (export --valid-data)")
    order = rows[np.argsort(scores[rows], kind="stable")][:k]
    table = cat.rows_table(order)
    return table.add_column(0, "rank", pa.array(np.arange(1, len(order) + 1), pa.int32()))


def neighbour_agreement(catalogue: str | Path | Catalogue, labels: dict[str, int], k: int = 10) -> float:
    """How well the embeddings group galaxies by class: over the rows of `labels` (id -> true class index), the
    share of each row's k nearest neighbours (among the rows of `labels`) whose true class is the row's.
    Meant for a labelled test catalogue: each search asks for as many rows as the catalogue has unlabelled."""
    from catalog.similar_index import load_or_build

    cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue(catalogue)
    index, _ = load_or_build(cat.out, cat.embeddings)
    ids = [str(i) for i in cat.read(["id"]).column("id").to_pylist()]
    rows = [row for row, i in enumerate(ids) if i in labels and index.contains(row)]
    if len(rows) <= k:
        raise ArgumentError(f"need more than {k} labelled rows with an embedding, not {len(rows)}")
    truth = {row: labels[ids[row]] for row in rows}
    matches = index.search(np.stack([index.get(row) for row in rows]), k + 1 + len(ids) - len(rows))
    shared = []
    for row, keys in zip(rows, np.asarray(matches.keys, np.int64), strict=True):
        neighbours = [int(key) for key in keys if int(key) != row and int(key) in truth][:k]
        shared += [truth[key] == truth[row] for key in neighbours]
    return float(np.mean(shared))
