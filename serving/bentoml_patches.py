"""Workarounds for BentoML 1.4.40 behaviour that breaks graceful shutdown, bounded metrics or connection limits.

Each patch checks for the BentoML code layout it expects and does nothing otherwise; serving/deployment.py
applies them when `bentoml serve` builds the service. BentoML 1.4.40 has no setting for any of them
(its `traffic` options are a timeout and a concurrency cap, its `http` options host, port and CORS, its
uvicorn settings backlog, keep-alive and TLS; `@bentoml.on_shutdown` runs after uvicorn has stopped
listening, too late for the first and last patch). tests/test_bentoml_patches.py checks that each
patched target still has the shape and the flaw patched here, so an upgrade that changes one fails
there, loudly; pyproject.toml pins BentoML to the versions those tests cover.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

logger = logging.getLogger("galaxyvit.serving")
ORIGINALS: dict[str, Any] = {}  # "Class.method": what each patch replaced (tests/test_bentoml_patches.py reads them)


def _api_workers_alive(entry_service: str) -> bool:
    """Whether a sibling process (same `bentoml serve` parent) is still an API worker of `entry_service`."""
    from serving.readiness import sibling_workers

    return bool(sibling_workers(entry_service))


def hold_sigterm_while_api_workers_run(entry_service: str, limit_s: float) -> None:
    """Graceful shutdown for the inference worker: pass SIGTERM on only once the API workers have exited.

    `bentoml serve` sends SIGTERM to every worker at once. The API workers finish their in-flight
    requests (uvicorn's graceful shutdown), and those still need inference; an inference worker that
    stopped at once would fail them with 503. So uvicorn's handler runs only when no API worker is
    left, or after `limit_s` (the traffic timeout, after which BentoML answers those requests 504).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return

    def wait_then_stop(signum: int, frame: Any) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and _api_workers_alive(entry_service):
            time.sleep(0.2)
        uvicorn_handler(signum, frame)

    def on_sigterm(signum: int, frame: Any) -> None:
        logger.info("SIGTERM: inference keeps serving until the API workers have finished their requests")
        threading.Thread(target=wait_then_stop, args=(signum, frame), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def stop_workers_before_cleanup() -> None:
    """Make `bentoml serve` stop its workers before it removes their unix-socket folder (BentoML 1.4).

    BentoML's arbiter runs its cleanup (which deletes the folder of the sockets its services use to
    call each other) as soon as shutdown starts, while workers are still finishing requests: an API
    worker then cannot open a connection to the inference worker and its in-flight request fails.
    Patched here, in the `bentoml serve` process that imports this module: workers first, then cleanup.
    """
    try:
        from bentoml._internal.utils.circus import Arbiter
        from circus.arbiter import Arbiter as CircusArbiter
        from tornado import gen
    except ImportError:  # another BentoML layout: leave it alone
        return
    if getattr(Arbiter, "_workers_stop_first", False) or not hasattr(Arbiter, "stop"):
        return

    ORIGINALS["Arbiter.stop"] = Arbiter.stop

    @gen.coroutine
    def stop(self: Arbiter) -> Any:  # a tornado coroutine, as circus defines it
        yield CircusArbiter.stop(self)
        self.exit_stack.__exit__(None, None, None)

    setattr(Arbiter, "stop", stop)  # noqa: B010 (patching a method: setattr says so)
    setattr(Arbiter, "_workers_stop_first", True)  # noqa: B010


# paths BentoML's request metrics may label by name; every other path is counted as "/__other__"
METRIC_PATHS = frozenset(
    {
        "/",
        "/classify",
        "/classify/raw",
        "/explain",
        "/models",
        "/feedback",
        "/openapi.json",
        "/docs.json",
        "/schema.json",
    }
    | {"/livez", "/readyz", "/healthz", "/metrics"}
)


class _RestorePath:
    """Gives the app behind BentoML's metrics middleware the request's real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if "galaxyvit.path" in scope:
            scope = {**scope, "path": scope["galaxyvit.path"]}
        await self.app(scope, receive, send)


def bound_metric_labels() -> None:
    """Keep BentoML's request metrics from labelling time series with arbitrary URL paths (BentoML 1.4).

    Its metrics middleware labels every request with the raw path, so a client inventing paths adds
    series without bound: 3,000 random paths grew /metrics to 11 MB and the server's RSS by 225 MB.
    Unknown paths are labelled "/__other__" for the metrics; routing still sees the real path (404).
    """
    try:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Middleware
    except ImportError:  # another BentoML layout: leave it alone
        return
    if getattr(Middleware, "_paths_bounded", False):
        return
    original = ORIGINALS["RunnerTrafficMetricsMiddleware.__call__"] = Middleware.__call__

    async def call(self: Middleware, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") not in METRIC_PATHS:
            if not isinstance(self.app, _RestorePath):
                setattr(self, "app", _RestorePath(self.app))  # noqa: B010
            scope = {**scope, "path": "/__other__", "galaxyvit.path": scope["path"]}
        await original(self, scope, receive, send)

    setattr(Middleware, "__call__", call)  # noqa: B010 (patching a method: setattr says so)
    setattr(Middleware, "_paths_bounded", True)  # noqa: B010


_API_GUARD: dict[str, Any] = {}


def _guarded_worker(entry_service: str) -> bool:
    """Whether this process is an API worker of `entry_service` (BentoML names it before uvicorn starts)."""
    from bentoml._internal.context import server_context

    return server_context.service_name == entry_service


async def _drain(limit_s: float) -> None:
    """Keep accepting while requests are in flight; new ones get 503 `shutting_down` (serving/admission.py)."""
    from serving.admission import TRAFFIC

    TRAFFIC.draining = True
    logger.info("shutting down: %d requests in flight finish, new ones get 503", TRAFFIC.active)
    deadline = time.monotonic() + limit_s
    while TRAFFIC.active > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def guard_api_server(entry_service: str, limits: Any, drain_limit_s: float) -> None:
    """Connection guards and a graceful drain for the API workers' uvicorn (BentoML 1.4 passes uvicorn none of
    the settings this needs: its worker builds `uvicorn.Config` itself).

    In the API workers of `entry_service` only: uvicorn's httptools protocol becomes
    `serving.connections.guarded_protocol(..., limits)` (header timeout and size, connection cap); and on
    SIGTERM the worker keeps accepting connections while its requests finish (at most `drain_limit_s`),
    answering new ones 503 with Retry-After, before uvicorn's own shutdown stops listening.
    """
    try:
        import uvicorn
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # another uvicorn layout, or no httptools: leave it alone
        logger.warning("uvicorn with httptools not found: no header timeout or size limit, no connection cap")
        return
    from serving.connections import guarded_protocol

    _API_GUARD.update(limits=limits, drain_limit_s=drain_limit_s)  # the latest build's settings
    if getattr(uvicorn.Config, "_galaxyvit_patched", False):
        return
    original_load, original_shutdown = uvicorn.Config.load, uvicorn.Server.shutdown
    ORIGINALS.update({"Config.load": original_load, "Server.shutdown": original_shutdown})

    def load(self: uvicorn.Config) -> None:
        original_load(self)
        if _guarded_worker(entry_service) and issubclass(self.http_protocol_class, HttpToolsProtocol):
            self.http_protocol_class = guarded_protocol(self.http_protocol_class, _API_GUARD["limits"])
            setattr(self, "_galaxyvit_drain_s", _API_GUARD["drain_limit_s"])  # noqa: B010

    async def shutdown(self: uvicorn.Server, sockets: Any = None) -> None:
        drain_s = getattr(self.config, "_galaxyvit_drain_s", None)
        if drain_s is not None:
            await _drain(drain_s)
        await original_shutdown(self, sockets)

    setattr(uvicorn.Config, "load", load)  # noqa: B010 (patching a method: setattr says so)
    setattr(uvicorn.Server, "shutdown", shutdown)  # noqa: B010
    setattr(uvicorn.Config, "_galaxyvit_patched", True)  # noqa: B010
