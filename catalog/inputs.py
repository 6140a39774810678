"""What to classify: image files, folders, globs, or one catalogue (CSV or Parquet), read as a stream of tables.

Every input becomes rows of a *source table*: `id`, `path` (the file to read, resolved) and, for a
catalogue, its other columns (ra, dec, ...) passed through unchanged. The order is fixed (catalogue
order; sorted folder walks and glob matches), so row i is the same input on every run: shards and
`--resume` rely on it. Nothing here holds more than one chunk of the catalogue in memory.
"""

from __future__ import annotations

import glob
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".fits", ".fit", ".fts", ".gif", ".bmp", ".webp"})
CATALOGUE_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CSV_BLOCK_BYTES = 1 << 20  # the streaming CSV reader's block; column types are inferred from the first one
CHUNK_ROWS = 8192  # rows per table handed on (Parquet batches; file lists)


class ArgumentError(ValueError):
    """A problem with the command's arguments or inputs: reported in one line, exit status 2."""


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def is_catalogue(path: str) -> bool:
    return Path(path).suffix.lower() in CATALOGUE_KINDS and not _has_glob(path)


@dataclass
class CatalogueSource:
    """A CSV or Parquet catalogue: one row per galaxy, an id column and a path column (or a path template).

    Picklable (no open files), so the Ray engine ships it to its tasks and calls `to_source` there."""

    path: Path
    id_col: str
    path_col: str | None = None
    path_template: str | None = None
    root: Path | None = None  # base of relative paths; default: the catalogue's folder
    kind: str = field(init=False)
    raw_schema: pa.Schema = field(init=False)  # the catalogue's columns and types (CSV: inferred from block 1)
    schema: pa.Schema = field(init=False)  # id, path, passthrough columns
    total: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).resolve()
        self.kind = CATALOGUE_KINDS[self.path.suffix.lower()]
        self.root = Path(self.root).resolve() if self.root is not None else self.path.parent
        if (self.path_col is None) == (self.path_template is None):
            raise ArgumentError("a catalogue needs exactly one of --path-col and --path-template")
        if not self.path.is_file():
            raise ArgumentError(f"catalogue {self.path} does not exist or is not a file")
        try:
            if self.kind == "parquet":
                parquet = pq.ParquetFile(self.path)
                self.raw_schema, self.total = parquet.schema_arrow, parquet.metadata.num_rows
            else:
                with pacsv.open_csv(self.path, read_options=self._read_options()) as reader:
                    self.raw_schema = reader.schema
                self.total = _count_csv_rows(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise ArgumentError(f"cannot read catalogue {self.path}: {_first_line(exc)}") from None
        names = self.raw_schema.names
        for option, column in (("--id-col", self.id_col), ("--path-col", self.path_col)):
            if column is not None and column not in names:
                raise ArgumentError(f"{option}: no column {column!r} in {self.path.name} (columns: {', '.join(names)})")
        for name in self.template_fields():
            if name not in names:
                raise ArgumentError(
                    f"--path-template names {{{name}}}, not a column of {self.path.name} (columns: {', '.join(names)})"
                )
        passthrough = [f for f in self.raw_schema if f.name not in (self.id_col, self.path_col)]
        clash = [f.name for f in passthrough if f.name in ("id", "path")]
        if clash:
            raise ArgumentError(f"catalogue column {clash[0]!r} would collide with the output's {clash[0]!r} column")
        id_field = self.raw_schema.field(self.id_col)
        self.schema = pa.schema([pa.field("id", id_field.type), pa.field("path", pa.string()), *passthrough])

    def _read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)

    def convert_options(self) -> pacsv.ConvertOptions:
        """Every column with the type inferred from the first block, so later blocks (and Ray) agree."""
        types = {f.name: f.type for f in self.raw_schema}
        if self.path_col is not None:
            types[self.path_col] = pa.string()
        return pacsv.ConvertOptions(column_types=types)

    def template_fields(self) -> list[str]:
        if self.path_template is None:
            return []
        return [name for _, name, _, _ in string.Formatter().parse(self.path_template) if name]

    def raw_tables(self, skip: int = 0) -> Iterator[pa.Table]:
        """The catalogue's own rows in chunks, the first `skip` rows left out."""
        try:
            if self.kind == "parquet":
                batches = pq.ParquetFile(self.path).iter_batches(batch_size=CHUNK_ROWS)
            else:
                batches = pacsv.open_csv(
                    self.path, read_options=self._read_options(), convert_options=self.convert_options()
                )
            for batch in batches:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                yield pa.Table.from_batches([batch.slice(skip)])
                skip = 0
        except (OSError, pa.ArrowException) as exc:
            raise ArgumentError(f"cannot read catalogue {self.path}: {_first_line(exc)}") from None

    def to_source(self, raw: pa.Table) -> pa.Table:
        """Catalogue rows -> source rows: id, resolved path, then the passthrough columns."""
        if self.path_template is not None:
            fields = self.template_fields()
            values = zip(*[raw.column(name).to_pylist() for name in fields]) if fields else [()] * raw.num_rows
            relative = [self.path_template.format(**dict(zip(fields, row))) for row in values]
        else:
            relative = raw.column(self.path_col).to_pylist()
        root = str(self.root)
        paths = [None if p is None or p == "" else os.path.join(root, p) for p in relative]
        columns = [raw.column(self.id_col), pa.array(paths, pa.string())]
        columns += [raw.column(name) for name in self.schema.names[2:]]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def tables(self, skip: int = 0) -> Iterator[pa.Table]:
        for raw in self.raw_tables(skip):
            yield self.to_source(raw)

    def describe(self) -> dict:
        return {
            "catalogue": str(self.path),
            "catalogue_bytes": self.path.stat().st_size,  # a resume must read the same catalogue
            "id_col": self.id_col,
            "path_col": self.path_col,
            "path_template": self.path_template,
            "root": str(self.root),
        }


@dataclass
class FileSource:
    """Image files, folders (walked recursively, sorted, image suffixes only) and glob patterns, in the given order.

    The id of a file is its path relative to the folder it was found in, without the suffix (a file named
    on the command line or matched by a glob: its stem)."""

    inputs: list[str]
    schema: pa.Schema = field(
        init=False, default_factory=lambda: pa.schema([("id", pa.string()), ("path", pa.string())])
    )
    total: int | None = field(init=False)

    def __post_init__(self) -> None:
        for item in self.inputs:
            if not _has_glob(item) and not os.path.exists(item):
                raise ArgumentError(f"no such file or folder: {item}")
            if _has_glob(item) and not os.path.exists(item) and next(glob.iglob(item, recursive=True), None) is None:
                raise ArgumentError(f"no file matches {item!r}")
        self.total = sum(1 for _ in self.entries())

    def entries(self) -> Iterator[tuple[str, str]]:
        for item in self.inputs:
            if os.path.isdir(item):
                yield from _walk(Path(item).resolve())
            elif os.path.exists(item):
                path = Path(item).resolve()
                yield path.stem, str(path)
            else:
                for match in sorted(glob.glob(item, recursive=True)):
                    if os.path.isdir(match):
                        yield from _walk(Path(match).resolve())
                    else:
                        path = Path(match).resolve()
                        yield path.stem, str(path)

    def tables(self, skip: int = 0) -> Iterator[pa.Table]:
        ids: list[str] = []
        paths: list[str] = []
        for index, (name, path) in enumerate(self.entries()):
            if index < skip:
                continue
            ids.append(name)
            paths.append(path)
            if len(ids) == CHUNK_ROWS:
                yield pa.table({"id": ids, "path": paths}, schema=self.schema)
                ids, paths = [], []
        if ids:
            yield pa.table({"id": ids, "path": paths}, schema=self.schema)

    def describe(self) -> dict:
        return {"inputs": [os.path.abspath(item) for item in self.inputs]}


def _walk(folder: Path) -> Iterator[tuple[str, str]]:
    """Image files under `folder`, depth first in sorted order: (relative path without suffix, absolute path)."""
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path.relative_to(folder).with_suffix("").as_posix(), str(path)


def _count_csv_rows(path: Path) -> int:
    """Data rows of a CSV file, by counting line ends (quoted line breaks would be over-counted: the ETA only)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(0, lines + (last != b"\n") - 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def open_source(
    inputs: list[str],
    id_col: str = "id",
    path_col: str | None = None,
    path_template: str | None = None,
    root: str | Path | None = None,
) -> CatalogueSource | FileSource:
    """The source for the command's INPUT arguments: one catalogue, or any mix of files, folders and globs."""
    if not inputs:
        raise ArgumentError("give at least one INPUT: image files, folders, globs or a catalogue")
    catalogues = [item for item in inputs if is_catalogue(item)]
    if catalogues:
        if len(inputs) > 1:
            raise ArgumentError("a catalogue must be the only INPUT (merge catalogues into one file first)")
        if path_col is None and path_template is None:
            path_col = "path"
        return CatalogueSource(Path(catalogues[0]), id_col, path_col, path_template, Path(root) if root else None)
    if path_template is not None or root is not None:
        raise ArgumentError("--path-template and --root apply to a catalogue INPUT only")
    return FileSource(list(inputs))
