"""Connection guards in the API workers' HTTP server (uvicorn's httptools protocol), for what uvicorn and
BentoML have no setting for:

- a request's line and headers must arrive within `header_timeout_s` of the connection opening (or of
  their first byte on a kept-alive connection), else the connection is closed (408 when part of a
  request had come);
- they must fit in `max_header_bytes`, else 431 `header_too_large` (counted while they arrive, so a
  128 MB header is refused after 16 KiB instead of being parsed into memory);
- at most `max_connections` connections are open per worker: a new one closes the longest-idle
  connection (nothing sent yet, or kept alive between requests), or is itself closed at once when all
  are busy, so idle connections cannot take every file descriptor and shut health checks out.

serving/bentoml_patches.py `guard_api_server` makes uvicorn use `guarded_protocol(...)` in the API workers.
Idle keep-alive connections are closed by uvicorn after BentoML's `--timeout-keep-alive` (5 s).
"""

from __future__ import annotations

import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from serving.config import ServingConfig

logger = logging.getLogger("galaxyvit.serving")

LINGER_S = 5.0  # how long a connection answered early (431) drops further bytes before it is closed
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
FD_RESERVE = 100  # file descriptors left for everything else of a worker (sqlite, sockets to inference, logs)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_config(cls, config: ServingConfig) -> ConnectionLimits:
        """The settings' limits; `max_connections` at most the open-file limit less FD_RESERVE."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        connections = config.max_connections
        if soft != resource.RLIM_INFINITY:
            connections = max(1, min(connections, soft - FD_RESERVE))
        return cls(float(config.header_timeout_s), config.max_header_bytes, connections)


def _count_error(kind: str) -> None:
    from serving.metrics import get_metrics

    get_metrics().errors.labels(kind).inc()


def raw_error(status: int, kind: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer in the service's JSON shape, closing the connection."""
    body = json.dumps({"error": message, "kind": kind, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} ".encode()
        + REASONS[status]
        + f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
    )
    return head + body


def guarded_protocol(base: type, limits: ConnectionLimits) -> type:
    """A subclass of uvicorn's HttpToolsProtocol `base` enforcing `limits` (see the module docstring)."""

    class GuardedProtocol(base):
        idle: dict[Any, None] = {}  # this worker's idle connections, longest idle first
        guard_limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.awaiting_headers = True  # the next bytes are a request's line and headers
            self.header_bytes = 0
            self.headers_done = 0  # requests whose headers were complete, on this connection
            self.header_timer: Any = None
            self.lingering = False  # answered early: what still arrives is dropped until the close

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.start_header_timer()
            self.idle[self] = None
            if len(self.connections) > limits.max_connections:
                self.make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_header_timer()
            self.idle.pop(self, None)
            super().connection_lost(exc)

        def make_room(self) -> None:
            """Close the longest-idle other connection; this one if every other is busy."""
            victim = next((c for c in self.idle if c is not self and not c.transport.is_closing()), self)
            self.idle.pop(victim, None)
            victim.transport.close()
            logger.debug(
                "%d connections open (limit %d): closed an idle one", len(self.connections), limits.max_connections
            )

        def start_header_timer(self) -> None:
            self.stop_header_timer()
            self.header_timer = self.loop.call_later(limits.header_timeout_s, self.header_timeout)

        def stop_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def header_timeout(self) -> None:
            self.header_timer = None
            if not self.awaiting_headers or self.transport.is_closing():
                return
            if self.header_bytes:  # part of a request came: say why it ends
                _count_error("header_timeout")
                message = f"request headers not received within {limits.header_timeout_s:g} s"
                self.transport.write(raw_error(408, "header_timeout", message))
            self.transport.close()

        def linger(self) -> None:
            """Close after an early answer without losing it: closing a socket that holds unread bytes makes
            the kernel reset the connection, and the client then never reads the answer. So send the answer
            and a FIN, drop what the client still sends, and close after LINGER_S at the latest."""
            self.lingering = True
            self.stop_header_timer()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return
            if not self.awaiting_headers:
                return super().data_received(data)
            if self.header_timer is None:  # the first bytes of a request on a kept-alive connection
                self.start_header_timer()
            room = limits.max_header_bytes - self.header_bytes
            if len(data) <= room:
                self.header_bytes += len(data)
                return super().data_received(data)
            done = self.headers_done
            if room > 0:  # feed what may still be headers; the rest only if they ended within it
                self.header_bytes += room
                super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self.headers_done == done:
                _count_error("header_too_large")
                message = f"request line and headers exceed {limits.max_header_bytes} bytes"
                self.transport.write(raw_error(431, "header_too_large", message))
                self.linger()
                return
            super().data_received(data[room:])

        def on_headers_complete(self) -> None:
            self.awaiting_headers = False
            self.headers_done += 1
            self.stop_header_timer()
            self.idle.pop(self, None)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.awaiting_headers, self.header_bytes = True, 0  # what comes next is the next request

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.idle[self] = None  # idle again, newest

    return GuardedProtocol
