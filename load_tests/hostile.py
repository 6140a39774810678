"""Hostile clients at the connection level, for the hardening tests and scripts/hardening_probe.py: slow
uploaders, half-sent and oversized headers, idle connections, abandoned uploads; and the peak memory of
the server's processes while they run.

Everything talks raw HTTP/1.1 over sockets to 127.0.0.1 (httpx cannot send a body at 1 byte/s or stop
in the middle of a header), with bounded waits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Answer:
    """What came back on a raw connection: the status (None: closed without an answer), its JSON body
    (when it had one), and the seconds from the first byte sent to the answer or the close."""

    status: int | None
    body: dict | None
    seconds: float


def parse_answer(data: bytes, seconds: float) -> Answer:
    if not data.startswith(b"HTTP/1."):
        return Answer(None, None, seconds)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        body = json.loads(rest) if rest else None
    except ValueError:
        body = None
    return Answer(status, body if isinstance(body, dict) else None, seconds)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection or `timeout` s pass."""
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
    except (TimeoutError, ConnectionError):
        pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def slow_upload(
    port: int, path: str, content_length: int, rate: float, timeout: float, content_type: str = "image/png"
) -> Answer:
    """POST a body of `content_length` bytes at `rate` bytes/s (1 byte at a time) until the server answers,
    the body is sent, or `timeout` s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    headers = {"Content-Type": content_type, "Content-Length": str(content_length)}
    writer.write(request_head("POST", path, headers))
    answer = asyncio.ensure_future(read_answer(reader, timeout))
    try:
        for _ in range(content_length):
            if answer.done() or time.monotonic() - start > timeout:
                break
            writer.write(b"\0")
            await writer.drain()
            await asyncio.wait([answer], timeout=1.0 / rate)
        data = await answer
    except ConnectionError:
        data = answer.result() if answer.done() else b""
    finally:
        answer.cancel()
        writer.close()
    return parse_answer(data, time.monotonic() - start)


async def send_raw(port: int, data: bytes, timeout: float) -> Answer:
    """Send `data` as it is, 64 KiB at a time while listening, and wait for the answer or the close (at most
    `timeout` s). A server that answers early (431) gets no more bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    answer = asyncio.ensure_future(read_answer(reader, timeout))
    try:
        for offset in range(0, len(data), 65536):
            if answer.done():
                break
            writer.write(data[offset : offset + 65536])
            await writer.drain()
        received = await answer
    except ConnectionError:
        received = await answer
    finally:
        writer.close()
    return parse_answer(received, time.monotonic() - start)


def half_header(path: str = "/classify") -> bytes:
    """A request line and one header, without the blank line that ends the headers."""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()


def big_header(size: int, path: str = "/livez") -> bytes:
    """A GET with one `X-Pad` header of `size` bytes."""
    return request_head("GET", path, {"X-Pad": "p" * size})


def abandon_uploads(port: int, count: int, content_length: int = 1_000_000, sent: int = 50_000) -> None:
    """`count` uploads that send their headers and `sent` bytes of a `content_length` body, then hang up."""
    head = request_head("POST", "/classify/raw", {"Content-Type": "image/png", "Content-Length": str(content_length)})
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head + b"\0" * sent)


def open_idle(port: int, count: int, timeout: float = 60) -> list[socket.socket]:
    """`count` connections that send nothing (non-blocking connects, bounded by `timeout` s in all)."""
    sockets, deadline = [], time.monotonic() + timeout
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def still_open(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has not closed (a closed one reads EOF or fails)."""
    return sum(_open(s) for s in sockets)


def _open(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def reset_peak_rss(pids: set[int]) -> None:
    """Reset the kernel's high-water mark of resident memory of these processes (Linux)."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss(pids: set[int]) -> int:
    """Resident memory of these processes now, bytes."""
    return 1024 * sum(_status_kb(pid, "VmRSS") for pid in pids)


def peak_rss(pids: set[int]) -> int:
    """Sum of the processes' resident-memory high-water marks since `reset_peak_rss`, bytes (at least the
    peak of their total)."""
    return 1024 * sum(_status_kb(pid, "VmHWM") for pid in pids)


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` in a /metrics text whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
