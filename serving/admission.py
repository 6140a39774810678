"""Admission control: each API worker works on at most `max_concurrency` requests at a time.

The rest are answered at once with 429 `overloaded` + Retry-After, so that a burst far beyond
capacity is shed in milliseconds instead of queueing until every client times out.

A request with a body (POST /classify, /classify/raw, /explain, /feedback, /models) counts only once its body is in:
the middleware receives it first, so slow uploaders cannot hold the slots. The upload must start
within `body_timeout_s` and then average `min_upload_rate` bytes/s, else 408 `body_timeout`; all
bodies still arriving share `upload_buffer_bytes` (beyond: 429). A client that hangs up mid-upload
is counted as `client_disconnect` and logged in one INFO line; its answer, 499 (nginx's "client closed
request"), goes nowhere, but ends the request for BentoML (whose timeout would otherwise hold it).

Also here: /readyz from local facts (serving/readiness.py), and graceful shutdown: once the server
drains (`TRAFFIC.draining`, set by serving/bentoml_patches.py `guard_api_server`), new requests get
503 `shutting_down` + Retry-After while those in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import PlainTextResponse, Response

from serving.config import ServingConfig
from serving.errors import ServiceError, error_response
from serving.readiness import Readiness

logger = logging.getLogger("galaxyvit.serving")

# BentoML's and the service's own cheap endpoints, never refused (health checks must answer under load)
BYPASS = frozenset(
    {"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/openapi.json", "/schema.json"}
) | {
    "/v2/health/live",  # the Open Inference Protocol's (serving/oip.py)
    "/v2/health/ready",
}
FEEDBACK_BODY_BYTES = 64 * 1024
CLIENT_CLOSED = 499  # the status of a request whose client hung up (never delivered)


@dataclass
class Traffic:
    """This worker's requests in the middleware (`active`), and whether it is shutting down."""

    active: int = 0
    draining: bool = False


TRAFFIC = Traffic()  # one HTTP server per worker process


class ClientGone(Exception):
    """The client closed the connection before its request body was in."""


@dataclass(frozen=True)
class UploadLimits:
    """How request bodies are received (see the module docstring); `from_config` reads the settings."""

    max_upload_bytes: int = 10 * 1024 * 1024
    body_timeout_s: float = 10.0
    min_upload_rate: float = 1024.0
    upload_buffer_bytes: int = 256 * 1024 * 1024

    @classmethod
    def from_config(cls, config: ServingConfig) -> UploadLimits:
        return cls(config.max_upload_bytes, config.body_timeout_s, config.min_upload_rate, config.upload_buffer_bytes)

    def body_limit(self, path: str) -> int:
        return FEEDBACK_BODY_BYTES if path in ("/feedback", "/models") else self.max_upload_bytes


BODY_PATHS = frozenset({"/classify", "/classify/raw", "/explain", "/feedback", "/models"})


def has_body(path: str) -> bool:
    """A path whose request body the middleware receives first: the endpoints above and the Open Inference
    Protocol's /v2/models/NAME[/versions/V]/infer (serving/oip.py)."""
    return path in BODY_PATHS or (path.startswith("/v2/models/") and path.endswith("/infer"))


class AdmissionMiddleware:
    """ASGI middleware: admit at most `max_concurrency` requests; answer the rest with 429 + Retry-After."""

    def __init__(
        self,
        app: Any,
        max_concurrency: int,
        retry_after: int,
        uploads: UploadLimits | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.app = app
        self.limit = max_concurrency
        self.retry_after = retry_after
        self.uploads = uploads or UploadLimits()
        self.readiness = readiness
        self.inflight = 0
        self.buffered = 0  # bytes of bodies still arriving

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/readyz" and (TRAFFIC.draining or (self.readiness and self.readiness.applies())):
            return await self.ready(scope, receive, send)
        if scope["path"] in BYPASS:
            return await self.app(scope, receive, send)
        if TRAFFIC.draining:
            closing = ServiceError("shutting_down", 503, "the server is shutting down; retry on another instance")
            return await error_response(closing, self.retry_after, close=True)(scope, receive, send)
        TRAFFIC.active += 1
        try:
            await self.admit(scope, receive, send)
        finally:
            TRAFFIC.active -= 1

    async def admit(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.inflight >= self.limit:
            return await self.refuse(scope, receive, send)
        if scope["method"] == "POST" and has_body(scope["path"]):
            try:
                body = await self.receive_body(scope, receive)
            except ServiceError as exc:
                return await error_response(exc, self.retry_after, close=True)(scope, receive, send)
            except ClientGone as gone:
                client_disconnected(scope["path"], str(gone))
                return await Response(status_code=CLIENT_CLOSED)(scope, receive, send)
            if self.inflight >= self.limit:
                return await self.refuse(scope, receive, send)
            receive = replay(body, receive)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    async def refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        busy = ServiceError("overloaded", 429, f"server busy: {self.limit} requests in flight; retry shortly")
        await error_response(busy, self.retry_after)(scope, receive, send)

    async def receive_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        """The whole request body, within the size, time and buffer limits (ServiceError otherwise)."""
        limits, limit = self.uploads, self.uploads.body_limit(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ServiceError("bad_request", 400, f"bad Content-Length {declared.decode('latin-1')!r}")
            if int(declared) > limit:
                raise ServiceError(
                    "too_large", 413, f"request body of {int(declared)} bytes exceeds the limit of {limit}"
                )
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                deadline = start + limits.body_timeout_s + size / limits.min_upload_rate
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise ServiceError(
                        "body_timeout",
                        408,
                        f"request body too slow: {size} bytes in {loop.time() - start:.0f} s (it must start within "
                        f"{limits.body_timeout_s:g} s, then average {limits.min_upload_rate:g} bytes/s)",
                    ) from None
                if message["type"] == "http.disconnect":
                    raise ClientGone(f"after {size} bytes")
                chunk = message.get("body", b"")
                if size + len(chunk) > limit:
                    raise ServiceError("too_large", 413, f"request body exceeds the limit of {limit} bytes")
                if self.buffered + len(chunk) > limits.upload_buffer_bytes:
                    raise ServiceError("overloaded", 429, "too many uploads arriving at once; retry shortly")
                self.buffered += len(chunk)
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.buffered -= size

    async def ready(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        problem = readiness_problem(self.readiness)
        if problem is None:
            return await PlainTextResponse("\n")(scope, receive, send)
        not_ready = ServiceError("not_ready", 503, f"not ready: {problem}")
        await error_response(not_ready, self.retry_after)(scope, receive, send)


def readiness_problem(readiness: Readiness | None) -> str | None:
    """Why this API worker is not ready (None: it is): shutting down, or, under `bentoml serve`, inference
    workers not all up and warmed. What /readyz and the Open Inference Protocol's ready endpoints answer."""
    if TRAFFIC.draining:
        return "shutting down"
    if readiness is not None and readiness.applies():
        return readiness.problem()
    return None


def replay(body: bytes, receive: Any) -> Any:
    """An ASGI receive that gives `body` whole, then passes on to `receive` (which tells of a disconnect)."""
    given = False

    async def receive_again() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


def client_disconnected(path: str, detail: str) -> None:
    """Count and log a client that hung up before its request was answered."""
    from serving.metrics import get_metrics

    get_metrics().errors.labels("client_disconnect").inc()
    logger.info("client disconnected during %s %s", path, detail)
