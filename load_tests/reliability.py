"""Tools for the reliability tests and scripts: watch a `bentoml serve` process tree, and drive load at it.

- process_tree / worker_pids / tree_rss: from outside the server, detect restarted (crashed) workers
  and measure the resident memory of all its processes.
- hammer: many concurrent HTTP clients (asyncio + httpx) on 127.0.0.1, bounded by a request count
  or a duration; every answer is recorded as a Sample (status, latency, Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """The server process and all its descendants (BentoML's arbiter, API and inference workers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def worker_pids(pid: int) -> set[int]:
    """PIDs of the whole tree: a crashed worker that BentoML restarted shows up as a new PID."""
    return {p.pid for p in process_tree(pid)}


def tree_rss(pid: int) -> int:
    """Resident memory of the whole tree in bytes (processes that exit while we look are skipped)."""
    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class Sample:
    """One request's outcome; status None means a transport error (connection refused/reset, timeout)."""

    start: float
    latency: float
    status: int | None
    retry_after: str | None = None
    error: str = ""  # the body of an answer >= 400 (first 300 characters), or the transport error


# a request: (method, path, keyword arguments for httpx.AsyncClient.request)
RequestSpec = tuple[str, str, dict]


def hammer(
    url: str,
    clients: int,
    make_request: Callable[[int], RequestSpec],
    requests_per_client: int | None = None,
    duration: float | None = None,
    timeout: float = 60.0,
    on_sample: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """`clients` concurrent closed-loop clients, each sending requests back to back until it has sent
    `requests_per_client` or `duration` seconds have passed. make_request(k) gives the k-th request."""
    if requests_per_client is None and duration is None:
        raise ValueError("bound the load: give requests_per_client or duration")
    samples: list[Sample] = []
    counter = iter(range(10**12))

    async def client_loop(client: httpx.AsyncClient, stop_at: float) -> None:
        sent = 0
        while (requests_per_client is None or sent < requests_per_client) and time.monotonic() < stop_at:
            method, path, kwargs = make_request(next(counter))
            start = time.monotonic()
            try:
                response = await client.request(method, path, **kwargs)
                sample = Sample(
                    start, time.monotonic() - start, response.status_code, response.headers.get("retry-after")
                )
                if response.status_code >= 400:
                    sample.error = response.text[:300]
            except httpx.HTTPError as exc:
                sample = Sample(start, time.monotonic() - start, None, error=f"{type(exc).__name__}: {exc}")
            samples.append(sample)
            if on_sample:
                on_sample(sample)
            sent += 1

    async def main() -> None:
        stop_at = time.monotonic() + (duration if duration is not None else 10**9)
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(client_loop(client, stop_at) for _ in range(clients)))

    asyncio.run(main())
    return samples


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 99)) -> list[float]:
    """Percentiles in milliseconds of latencies in seconds (nan for an empty list)."""
    if not values:
        return [float("nan")] * len(qs)
    return [float(np.percentile(np.asarray(values) * 1000.0, q)) for q in qs]
