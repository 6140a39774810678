"""Graceful shutdown: SIGTERM to `bentoml serve` lets every in-flight request finish with 200, then it exits.

The requests are slow on purpose (8 large PNGs each, so decoding takes seconds) and are all in flight
(BentoML's in-progress gauge) when SIGTERM arrives; they still need the inference worker after it,
which is what used to fail (serving/bentoml_patches.py: hold_sigterm_while_api_workers_run and
stop_workers_before_cleanup).
"""

from __future__ import annotations

import io
import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_fixtures import metric

from serving.process import ServerProcess

REQUESTS = 6
EXIT_BOUND_S = 60  # BentoML's own limit per worker is 30 s (circus graceful_timeout), then SIGKILL


def large_png() -> bytes:
    y, x = np.mgrid[0:2000, 0:2000]
    pattern = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pattern).save(buf, format="PNG")  # 4 Mpx, a few KB: slow to decode, quick to send
    return buf.getvalue()


def test_sigterm_lets_in_flight_requests_finish(tiny_models, tmp_path):
    home, _ = tiny_models
    settings = {"models": "vitbase", "intra_op_threads": 1}
    server = ServerProcess(settings, store=home, workdir=tmp_path / "run", ready_timeout=180).start()
    try:
        blob = large_png()
        results: list[tuple[int, str]] = []

        def send() -> None:
            try:
                r = httpx.post(server.url + "/classify", files=[("images", blob)] * 8, timeout=120)
                results.append((r.status_code, r.text[:200]))
            except httpx.HTTPError as exc:
                results.append((-1, repr(exc)))

        threads = [threading.Thread(target=send) for _ in range(REQUESTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        in_flight = 0.0
        while in_flight < REQUESTS and time.monotonic() < deadline and not results:
            text = httpx.get(server.url + "/metrics", timeout=10).text
            in_flight = metric(
                text, "bentoml_service_request_in_progress", endpoint="/classify", service_name="galaxyvit"
            )
            time.sleep(0.05)
        assert in_flight == REQUESTS and not results, "the requests must all be in flight before SIGTERM"

        server.process.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        for t in threads:
            t.join(timeout=120)
        try:
            server.process.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bentoml serve still running {EXIT_BOUND_S} s after SIGTERM")
        print(
            f"\n{REQUESTS} in-flight requests answered; server exited {time.monotonic() - sent_at:.1f} s after SIGTERM"
        )
        assert [status for status, _ in results] == [200] * REQUESTS, results
        assert server.process.returncode == 0
        with pytest.raises(httpx.ConnectError):  # and it is really gone
            httpx.get(server.url + "/livez", timeout=5)
    finally:
        server.stop()
