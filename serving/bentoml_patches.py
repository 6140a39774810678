"""Workarounds for BentoML 1.4.40 behaviour that breaks graceful shutdown or bounded metrics.

Each patch checks for the BentoML code layout it expects and does nothing otherwise; recheck them
on a BentoML upgrade. serving/deployment.py applies them when `bentoml serve` builds the service.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

logger = logging.getLogger("galaxyvit.serving")


def _api_workers_alive(entry_service: str) -> bool:
    """Whether a sibling process (same `bentoml serve` parent) is still an API worker of `entry_service`."""
    import psutil

    for process in psutil.Process(os.getppid()).children():
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if process.pid != os.getpid() and "--service-name" in command:
            if command[command.index("--service-name") + 1 :][:1] == [entry_service]:
                return True
    return False


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

    @gen.coroutine
    def stop(self: Arbiter) -> Any:  # a tornado coroutine, as circus defines it
        yield CircusArbiter.stop(self)
        self.exit_stack.__exit__(None, None, None)

    setattr(Arbiter, "stop", stop)  # noqa: B010 (patching a method: setattr says so)
    setattr(Arbiter, "_workers_stop_first", True)  # noqa: B010


# paths BentoML's request metrics may label by name; every other path is counted as "/__other__"
METRIC_PATHS = frozenset(
    {"/", "/classify", "/classify/raw", "/models", "/feedback", "/openapi.json", "/docs.json"}
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
    original = Middleware.__call__

    async def call(self: Middleware, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") not in METRIC_PATHS:
            if not isinstance(self.app, _RestorePath):
                setattr(self, "app", _RestorePath(self.app))  # noqa: B010
            scope = {**scope, "path": "/__other__", "galaxyvit.path": scope["path"]}
        await original(self, scope, receive, send)

    setattr(Middleware, "__call__", call)  # noqa: B010 (patching a method: setattr says so)
    setattr(Middleware, "_paths_bounded", True)  # noqa: B010
