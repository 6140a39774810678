"""The local engine: decode in a pool of processes, batched ONNX Runtime inference in this one, overlapped.

  catalogue chunks -> batches of `batch_size` rows -> decode processes (read, decode, crop; uint8)
                   -> this process: normalise into one float32 batch, one ORT call, rows -> shard writer

At most `window` batches are in flight (submitted, decoding or decoded and waiting), and results are
taken in submission order, so memory stays bounded however long the catalogue is, and rows come out in
input order. While ONNX Runtime runs a batch (its threads release the GIL) the decode processes
work on the next ones.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from catalog.decode import DecodedBatch, decode_files
from catalog.shards import ShardWriter
from catalog.table import ModelInfo, prediction_table
from galaxyvit.preprocess import Preprocessing, normalize


@dataclass
class LocalStats:
    """Where the time went: wall seconds of this process's loop and CPU seconds per process role."""

    provider: str = ""  # the ONNX Runtime provider the session really runs on, and its intra-op threads
    threads: int = 0
    rows: int = 0
    wall_s: float = 0.0
    first_batch_s: float = 0.0  # start-up: decode processes and session started, first batch classified
    wait_decode_s: float = 0.0  # this process idle, waiting for the oldest batch's decoding
    infer_s: float = 0.0  # inside ONNX Runtime
    write_s: float = 0.0  # building rows and writing shards
    main_cpu_s: float = 0.0  # this process: inference threads, normalisation, rows, shards
    decode_cpu: dict[int, float] = field(default_factory=dict)  # decode process pid -> CPU seconds

    def to_dict(self) -> dict:
        return {
            "provider": self.provider,
            "threads": self.threads,
            "rows_classified": self.rows,
            "wall_s": round(self.wall_s, 3),
            "first_batch_s": round(self.first_batch_s, 3),
            "wait_decode_s": round(self.wait_decode_s, 3),
            "infer_s": round(self.infer_s, 3),
            "write_s": round(self.write_s, 3),
            "main_cpu_s": round(self.main_cpu_s, 3),
            "decode_cpu_s": round(sum(self.decode_cpu.values()), 3),
            "decode_processes": len(self.decode_cpu),
        }


def batches(tables: Iterator[pa.Table], batch_size: int) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly `batch_size` rows (the last one shorter)."""
    pending: list[pa.Table] = []
    rows = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        while rows >= batch_size:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, batch_size)
            rest = merged.slice(batch_size)
            pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        yield pa.concat_tables(pending)


class _Inline:
    """Runs the decoding in this process (decode_workers=0): no overlap, no child processes."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def run_local(
    tables: Iterator[pa.Table],
    open_session: Callable[[], Any],
    prep: Preprocessing,
    info: ModelInfo,
    schema: pa.Schema,
    writer: ShardWriter,
    batch_size: int,
    decode_workers: int,
    max_pixels: int,
    progress=None,
) -> LocalStats:
    """Classify every row of `tables` into `writer` with the session `open_session()` returns
    (serving.runtime.LoadedModel); it is opened while the decode processes start and decode the first batches."""
    stats = LocalStats()
    start, cpu_start = time.perf_counter(), time.process_time()
    if decode_workers > 0:
        # spawn: the workers start clean (no copy of ONNX Runtime's threads or of a parent's locks)
        pool = ProcessPoolExecutor(decode_workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = _Inline()
    window = 2 * max(1, decode_workers) + 1
    buffer = np.empty((batch_size, 3, prep.size, prep.size), np.float32)
    work = batches(tables, batch_size)
    in_flight: deque[tuple[pa.Table, Future]] = deque()

    def submit() -> None:
        table = next(work, None)
        if table is not None:
            paths = table.column("path").to_pylist()
            in_flight.append((table, pool.submit(decode_files, paths, prep, max_pixels)))

    try:
        for _ in range(window):
            submit()
        session = open_session()
        stats.provider = session.provider
        stats.threads = session.session.get_session_options().intra_op_num_threads
        while in_flight:
            table, future = in_flight.popleft()
            t0 = time.perf_counter()
            decoded: DecodedBatch = future.result()
            stats.wait_decode_s += time.perf_counter() - t0
            submit()
            stats.decode_cpu[decoded.pid] = decoded.cpu_s
            t0 = time.perf_counter()
            k = len(decoded.crops)
            probs = np.zeros((0, len(info.class_names)), np.float32)
            if k:
                normalize(decoded.crops, prep, out=buffer[:k])
                probs = session.predict(buffer[:k])
            t1 = time.perf_counter()
            writer.add(prediction_table(table, probs, decoded.ok, decoded.errors, info, schema))
            stats.infer_s += t1 - t0
            stats.write_s += time.perf_counter() - t1
            if not stats.rows:
                stats.first_batch_s = time.perf_counter() - start
            stats.rows += table.num_rows
            if progress is not None:
                progress.update(table.num_rows)
    finally:
        pool.shutdown(cancel_futures=True)
    stats.wall_s = time.perf_counter() - start
    stats.main_cpu_s = time.process_time() - cpu_start
    return stats
