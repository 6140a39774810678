"""Admission control: each API worker takes at most `max_concurrency` requests at a time.

The rest are answered at once with 429 `overloaded` + Retry-After, so that a burst far beyond
capacity is shed in milliseconds instead of queueing until every client times out.
"""

from __future__ import annotations

from typing import Any

from serving.errors import ServiceError, error_response

# BentoML's and the service's own cheap endpoints, never refused (health checks must answer under load)
BYPASS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/openapi.json"})


class AdmissionMiddleware:
    """ASGI middleware: admit at most `max_concurrency` requests; answer the rest with 429 + Retry-After."""

    def __init__(self, app: Any, max_concurrency: int, retry_after: int) -> None:
        self.app = app
        self.limit = max_concurrency
        self.retry_after = retry_after
        self.inflight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in BYPASS:
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            busy = ServiceError("overloaded", 429, f"server busy: {self.limit} requests in flight; retry shortly")
            return await error_response(busy, self.retry_after)(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
