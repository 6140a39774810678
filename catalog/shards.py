"""The output folder: shards written atomically, a job file for `--resume`, a `_SUCCESS` manifest at the end.

  OUT/_job.json             what the job is (inputs, model sha256, shard size, format): a resume must match it
  OUT/part-00000.parquet    rows 0 .. shard_size-1 of the inputs, in input order; part-00001 the next ones, ...
  OUT/_SUCCESS              JSON written last: every shard with its row count, the totals, the errors by kind

A shard is written to a hidden temporary file, flushed to disk and renamed into place, so a shard
file that exists is complete. Row i of the inputs always lands in shard i // shard_size: a resumed
job skips the inputs of the shards that exist and writes the others.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from catalog.inputs import ArgumentError

JOB_FILE = "_job.json"
MANIFEST = "_SUCCESS"
SHARD = re.compile(
    r"^part-(\d{5,})(-[0-9a-f]+)*\.(parquet|csv)$"
)  # local: part-00000.parquet; Ray: part-00000-<uuid>-0.parquet
TEMP_PREFIX = ".tmp-"
INDEX_FILES = ("_similar.usearch", "_similar.json")  # catalog/similar_index.py: rebuilt when the shards change
GROUP_ROWS = 8192  # rows per Parquet row group (and per CSV write): what the writer holds in memory


def shard_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{fmt}"


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    with pacsv.open_csv(path) as reader:
        return sum(batch.num_rows for batch in reader)


def _ours(name: str) -> bool:
    """A file a classify output holds: the job, the manifest, shards, temporary files, the similarity index."""
    ours = name in (JOB_FILE, MANIFEST, *INDEX_FILES) or name.startswith(TEMP_PREFIX)
    return ours or SHARD.match(name) is not None


def prepare_output(out: Path, job: dict, resume: bool, force: bool) -> list[tuple[str, int]]:
    """Make `out` ready for `job`; returns the finished shards [(file, rows)] a resume keeps (else []).

    An existing output is an error unless --resume (same job: keep its finished shards) or --force
    (delete the previous output's files; a folder holding anything else is never emptied)."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} exists and is not a folder")
    existing = sorted(os.listdir(out)) if out.is_dir() else []
    if existing and not (resume or force):
        raise ArgumentError(
            f"--out {out} exists and is not empty: add --resume to continue it or --force to replace it"
        )
    foreign = [name for name in existing if not _ours(name)]
    if foreign:
        raise ArgumentError(f"--out {out} holds files that are not a classify output (e.g. {foreign[0]}); refusing")
    out.mkdir(parents=True, exist_ok=True)
    if existing and force and not resume:
        for name in existing:
            (out / name).unlink()
        existing = []
    for name in existing:
        if name.startswith(TEMP_PREFIX):  # a shard being written when the previous run died
            (out / name).unlink()
    done: list[tuple[str, int]] = []
    if existing and (out / JOB_FILE).is_file():
        previous = json.loads((out / JOB_FILE).read_text())
        if previous != job:
            changed = sorted(k for k in set(previous) | set(job) if previous.get(k) != job.get(k))
            raise ArgumentError(
                f"--resume: {out} was written by another job ({', '.join(changed)} differ); --force replaces it"
            )
        complete = MANIFEST in existing  # then the last shard may be short
        names = sorted(n for n in existing if SHARD.match(n))
        for index, name in enumerate(names):
            expected = shard_name(index, job["format"])
            if name != expected:
                raise ArgumentError(f"--resume: {out} lacks {expected} but holds {name}; use --force to start again")
            rows = count_rows(out / name)
            if rows != job["shard_size"] and not (complete and index == len(names) - 1):
                raise ArgumentError(f"--resume: {out / name} has {rows} rows, not {job['shard_size']}")
            done.append((name, rows))
    elif existing and resume:
        raise ArgumentError(f"--resume: {out} has no {JOB_FILE}: not a classify output")
    (out / MANIFEST).unlink(missing_ok=True)
    write_atomic(out / JOB_FILE, (json.dumps(job, indent=2) + "\n").encode())
    return done


def temp_path(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")


def publish(temp: Path, path: Path) -> None:
    """Flush a finished temporary file to disk, rename it into place and sync the folder: `path` is whole or absent."""
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomic(path: Path, data: bytes) -> None:
    temp = temp_path(path)
    temp.write_bytes(data)
    publish(temp, path)


class ShardWriter:
    """Streams prediction tables, in input order, into shards of `shard_size` rows.

    The open shard is written to its temporary file a row group (`group_rows` rows) at a time, so
    memory holds at most one row group whatever the shard size; at `shard_size` rows the file is
    closed and published under its shard name."""

    def __init__(
        self,
        out: Path,
        fmt: str,
        schema: pa.Schema,
        shard_size: int,
        done: list[tuple[str, int]],
        group_rows: int = GROUP_ROWS,
    ) -> None:
        self.out, self.fmt, self.schema, self.shard_size = out, fmt, schema, shard_size
        self.group_rows = min(group_rows, shard_size)
        self.shards: list[tuple[str, int]] = list(done)
        self.group: list[pa.Table] = []  # rows of the open shard not yet written
        self.group_size = 0
        self.shard_rows = 0  # rows of the open shard, written or in `group`
        self.file = None  # writer of the open shard's temporary file
        self.errors: Counter[str] = Counter()

    def add(self, table: pa.Table) -> None:
        kinds = table.column("error_kind")
        if kinds.null_count < table.num_rows:
            self.errors.update(k for k in kinds.to_pylist() if k is not None)
        while table.num_rows:
            take = min(table.num_rows, self.shard_size - self.shard_rows)
            self.group.append(table.slice(0, take))
            self.group_size += take
            self.shard_rows += take
            table = table.slice(take)
            if self.group_size >= self.group_rows or self.shard_rows == self.shard_size:
                self._write_group()
            if self.shard_rows == self.shard_size:
                self._close_shard()

    def _write_group(self) -> None:
        if self.file is None:
            temp = temp_path(self.out / shard_name(len(self.shards), self.fmt))
            if self.fmt == "parquet":
                self.file = pq.ParquetWriter(temp, self.schema, compression="zstd")
            else:
                self.file = pacsv.CSVWriter(temp, self.schema)
        if self.group:
            table = pa.concat_tables(self.group).combine_chunks()
            if self.fmt == "parquet":
                self.file.write_table(table, row_group_size=self.group_rows)
            else:
                self.file.write_table(table)
        self.group, self.group_size = [], 0

    def _close_shard(self) -> None:
        self.file.close()
        self.file = None
        name = shard_name(len(self.shards), self.fmt)
        publish(temp_path(self.out / name), self.out / name)
        self.shards.append((name, self.shard_rows))
        self.shard_rows = 0

    def finish(self, summary: dict) -> dict:
        if self.shard_rows:
            self._write_group()
            self._close_shard()
        return write_manifest(self.out, self.shards, summary)


def errors_by_kind(out: Path, shards: list[tuple[str, int]]) -> dict[str, int]:
    """Error rows per error_kind over the written shards (one column read from each)."""
    counts: Counter[str] = Counter()
    for name, _ in shards:
        path = out / name
        if path.suffix == ".parquet":
            column = pq.read_table(path, columns=["error_kind"]).column("error_kind")
        else:
            options = pacsv.ConvertOptions(include_columns=["error_kind"], column_types={"error_kind": pa.string()})
            column = pacsv.read_csv(path, convert_options=options).column("error_kind")
        counts.update(kind for kind in column.to_pylist() if kind)
    return dict(sorted(counts.items()))


def write_manifest(out: Path, shards: list[tuple[str, int]], summary: dict) -> dict:
    """`_SUCCESS`: the shards and their row counts, the totals, the errors by kind, and `summary` (model, speed)."""
    manifest = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": sum(rows for _, rows in shards),
        "errors": errors_by_kind(out, shards),
        "shards": [{"file": name, "rows": rows} for name, rows in shards],
        "run": summary,  # the last run (a resumed job: the rows it added)
    }
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
