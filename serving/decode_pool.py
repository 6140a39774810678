"""The API worker's decoding threads: a fixed number, so concurrent heavy uploads wait in line instead of
multiplying the memory they take.

Each image is one job. A request whose task is cancelled (BentoML's `timeout_s` answering 504, or the
client gone) cancels its jobs that have not started: asyncio cancels the thread pool's futures it awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DecodePool:
    """`threads` decoding threads; `run` waits for a free one."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("a decode pool needs at least one thread")
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="galaxyvit-decode")

    async def run(self, job: Callable[[], T]) -> T:
        """`job()` on a decoding thread; if the caller is cancelled before the job starts, it never runs."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, job)

    async def map(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Every job on the decoding threads, results in order; the first error is raised and the jobs
        that have not started are dropped."""
        tasks = [asyncio.ensure_future(self.run(job)) for job in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished ones; drops waiting ones after an error or a cancellation

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
