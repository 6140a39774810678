"""serving/bentoml_patches.py changes BentoML and uvicorn internals; these tests fail when a target changes.

Each test checks that the code a patch replaces (or relies on) still has the shape and the flaw it
works around. When one fails after an upgrade: see whether BentoML now does the right thing itself
(then remove the patch), else adapt the patch, then widen the BentoML pin in pyproject.toml.
The behaviour the patches give is tested through real servers (test_shutdown.py, test_hardening.py).
"""

from __future__ import annotations

import inspect
import signal
from importlib.metadata import version

import bentoml
import uvicorn

from serving.bentoml_patches import (
    METRIC_PATHS,
    ORIGINALS,
    bound_metric_labels,
    guard_api_server,
    stop_workers_before_cleanup,
)
from serving.config import ServingConfig
from serving.connections import ConnectionLimits
from serving.endpoints import API_PATHS


def test_bentoml_is_the_version_the_patches_were_written_for():
    assert bentoml.__version__ == version("bentoml") == "1.4.40"  # pyproject.toml: bentoml>=1.4.40,<1.4.41


def test_arbiter_still_cleans_up_before_its_workers_stop():
    from bentoml._internal.utils.circus import Arbiter
    from circus.arbiter import Arbiter as CircusArbiter

    stop_workers_before_cleanup()
    assert issubclass(Arbiter, CircusArbiter) and getattr(Arbiter, "_workers_stop_first", False)
    source = inspect.getsource(ORIGINALS["Arbiter.stop"])
    # the flaw: the socket folder goes (exit_stack) before the workers stop (super().stop())
    assert source.index("self.exit_stack.__exit__") < source.index("super().stop()"), source
    assert "exit_stack" in inspect.getsource(Arbiter.__init__)


def test_metrics_middleware_still_labels_by_raw_path():
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    bound_metric_labels()
    assert getattr(RunnerTrafficMetricsMiddleware, "_paths_bounded", False)
    source = inspect.getsource(ORIGINALS["RunnerTrafficMetricsMiddleware.__call__"])
    assert 'endpoint = scope["path"]' in source  # the flaw: one time series per path a client invents
    assert set(API_PATHS) <= METRIC_PATHS  # the service's own paths keep their labels


def test_uvicorn_targets_of_the_connection_guards_and_drain():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    guard_api_server("galaxyvit", ConnectionLimits.from_config(ServingConfig()), 30)
    assert getattr(uvicorn.Config, "_galaxyvit_patched", False)
    assert list(inspect.signature(ORIGINALS["Config.load"]).parameters) == ["self"]
    assert list(inspect.signature(ORIGINALS["Server.shutdown"]).parameters) == ["self", "sockets"]
    assert "self.http_protocol_class" in inspect.getsource(ORIGINALS["Config.load"])
    for name in ("data_received", "on_headers_complete", "on_message_complete", "on_response_complete"):
        assert callable(getattr(HttpToolsProtocol, name)), name  # serving/connections.py overrides these
    # BentoML's API worker builds uvicorn's Config itself, without header or connection limits
    from _bentoml_impl.worker import service as worker

    source = inspect.getsource(worker)
    assert "uvicorn.Config(" in source and "limit_concurrency" not in source and "h11_max" not in source


def test_uvicorn_still_handles_sigterm_with_a_signal_handler_while_serving():
    # hold_sigterm_while_api_workers_run wraps the handler uvicorn has installed when the service starts
    source = inspect.getsource(uvicorn.Server.capture_signals)
    assert "signal.signal" in source and "self.handle_exit" in source
    assert signal.SIGTERM in uvicorn.server.HANDLED_SIGNALS
    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
