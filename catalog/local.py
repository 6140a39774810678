"""The local engine: decode in a pool of processes, batched ONNX Runtime inference in this one, overlapped.

  catalogue chunks -> batches of `batch_size` rows -> decode processes (read, decode, crop, normalise)
                   -> float32 batches in shared memory -> this process: ORT on the batch in place, scored as
                      the service scores (catalog.predict), rows -> shard writer

At most `window` batches are in flight (submitted, decoding or decoded and waiting), and results are
taken in submission order, so memory stays bounded however long the catalogue is, and rows come out in
input order. While ONNX Runtime runs a batch (its threads release the GIL) the decode processes
work on the next ones. The pixels never pass through a pipe: each batch is written by a decode
process into one of `window + 1` shared-memory blocks and read there by ONNX Runtime, so this process
(whose ONNX Runtime threads are the bottleneck on a small machine) neither unpickles nor normalises.
Where shared memory is short (a container's small /dev/shm) the uint8 crops travel pickled instead.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import pyarrow as pa

from catalog.decode import DecodedBatch, DecodedInto, decode_files, decode_into, decode_into_shared, open_blocks
from catalog.predict import Predictor, Scored
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


def shared_memory_free() -> int:
    """Bytes free for shared memory (POSIX shared memory lives in /dev/shm on Linux; elsewhere no such limit)."""
    return shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 1 << 62


class Batches:
    """`count` float32 input batches of `shape`, in shared memory when `shared` (written by the decode processes,
    read in place by ONNX Runtime), else in this process."""

    def __init__(self, count: int, shape: tuple[int, ...], shared: bool) -> None:
        nbytes = int(np.prod(shape)) * 4
        self.memory = [SharedMemory(create=True, size=nbytes) for _ in range(count)] if shared else []
        buffers = [memory.buf for memory in self.memory] or [None] * count
        self.arrays = [np.ndarray(shape, np.float32, buffer=buffer) for buffer in buffers]
        self.names = [memory.name for memory in self.memory]
        self.linked = bool(self.memory)

    def unlink(self) -> None:
        """Remove the names (every process that maps the blocks keeps them until it exits)."""
        if self.linked:
            for memory in self.memory:
                memory.unlink()
            self.linked = False

    def close(self) -> None:
        self.unlink()
        self.arrays.clear()
        for memory in self.memory:
            try:
                memory.close()
            except BufferError:  # a view of it is still alive: the mapping goes when that does
                pass


def run_local(
    tables: Iterator[pa.Table],
    open_predictor: Callable[[], Predictor],
    prep: Preprocessing,
    info: ModelInfo,
    schema: pa.Schema,
    writer: ShardWriter,
    batch_size: int,
    decode_workers: int,
    max_pixels: int,
    progress=None,
) -> LocalStats:
    """Classify every row of `tables` into `writer` with the predictor `open_predictor()` returns
    (catalog.predict.Predictor); it is opened while the decode processes start and decode the first batches."""
    stats = LocalStats()
    start, cpu_start = time.perf_counter(), time.process_time()
    window = 2 * max(1, decode_workers) + 1
    shape = (batch_size, 3, prep.size, prep.size)
    # one block more than the window: the batch being classified keeps its block while the next is decoded
    shared = decode_workers > 0 and shared_memory_free() > 2 * (window + 1) * int(np.prod(shape)) * 4
    blocks = Batches(window + 1, shape, shared)
    # spawn: the workers start clean (no copy of ONNX Runtime's threads or of a parent's locks)
    context = multiprocessing.get_context("spawn")
    attached, ready = 0, context.SimpleQueue()  # decode processes that have mapped the blocks
    if shared:
        initializer = dict(initializer=open_blocks, initargs=(blocks.names, shape, ready))
        pool: Any = ProcessPoolExecutor(decode_workers, mp_context=context, **initializer)
    elif decode_workers > 0:
        pool = ProcessPoolExecutor(decode_workers, mp_context=context)
    else:
        pool = _Inline()
    work = batches(tables, batch_size)
    in_flight: deque[tuple[pa.Table, np.ndarray, Future]] = deque()
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        table = next(work, None)
        if table is None:
            return
        paths = table.column("path").to_pylist()
        block = submitted % len(blocks.arrays)
        if shared:
            future = pool.submit(decode_into_shared, blocks.names[block], paths, prep, max_pixels)
        elif decode_workers > 0:  # shared memory is short: the uint8 crops come back pickled
            future = pool.submit(decode_files, paths, prep, max_pixels)
        else:
            future = pool.submit(decode_into, paths, prep, max_pixels, blocks.arrays[block])
        in_flight.append((table, blocks.arrays[block], future))
        submitted += 1

    try:
        # the first batch is decoded here while the decode processes start (imports: most of a second)
        first = next(work, None) if decode_workers > 0 else None
        for _ in range(window):
            submit()
        predictor = open_predictor()
        own = np.empty(shape if first is not None else (0,), np.float32)  # the first batch's, not a block
        if first is not None:
            paths = first.column("path").to_pylist()
            in_flight.appendleft((first, own, _Inline().submit(decode_into, paths, prep, max_pixels, own)))
        stats.provider = predictor.provider
        stats.threads = predictor.model.session.get_session_options().intra_op_num_threads
        batch: np.ndarray | None = None
        while in_flight:
            table, batch, future = in_flight.popleft()
            t0 = time.perf_counter()
            decoded: DecodedInto | DecodedBatch = future.result()
            stats.wait_decode_s += time.perf_counter() - t0
            while blocks.linked and not ready.empty():
                ready.get()
                attached += 1
                if attached == decode_workers:
                    blocks.unlink()
            # the next batch takes the block freed last turn; the first batch holds none, so its turn submits
            # nothing (else the block of the batch classified next would be decoded into while it is read)
            if batch is not own:
                submit()
            if decoded.pid != os.getpid():  # not the first batch, decoded here
                stats.decode_cpu[decoded.pid] = decoded.cpu_s
            t0 = time.perf_counter()
            k = int(decoded.ok.sum())
            if k and isinstance(decoded, DecodedBatch):
                normalize(decoded.crops, prep, out=batch[:k])
            scored: Scored = predictor.predict(batch[:k])
            t1 = time.perf_counter()
            writer.add(prediction_table(table, scored, decoded.ok, decoded.errors, info, schema))
            stats.infer_s += t1 - t0
            stats.write_s += time.perf_counter() - t1
            if not stats.rows:
                stats.first_batch_s = time.perf_counter() - start
            stats.rows += table.num_rows
            if progress is not None:
                progress.update(table.num_rows)
    finally:
        pool.shutdown(cancel_futures=True)  # waits for the running decodes: nothing writes the blocks after it
        in_flight.clear()
        batch = None  # the last view of a block, so that it can be unmapped
        blocks.close()
    stats.wall_s = time.perf_counter() - start
    stats.main_cpu_s = time.process_time() - cpu_start
    return stats
