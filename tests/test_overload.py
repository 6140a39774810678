"""Overload: far more concurrent clients than capacity get a quick 429/503 with Retry-After, never a 5xx
error or a dropped connection, and the service recovers fully when the load drops.

A real `bentoml serve` with max_concurrency=2 per API worker (GALAXYVIT_MAX_CONCURRENCY) faces 24
concurrent clients. Latencies are printed (run with -s), not asserted; scripts/soak.py measures them.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from conftest import REAL_SAMPLES

from load_tests.reliability import hammer, percentiles, worker_pids
from serving.config import load_config
from serving.deployment import build
from serving.inference import INFERENCE_SERVICE
from serving.process import ServerProcess

MAX_CONCURRENCY = 2
CLIENTS = 24


@pytest.fixture(scope="module")
def small_server(tiny_models, tmp_path_factory):
    home, _ = tiny_models
    settings = {"models": "vit", "max_concurrency": MAX_CONCURRENCY, "retry_after_s": 2, "intra_op_threads": 1}
    with ServerProcess(settings, store=home, workdir=tmp_path_factory.mktemp("overload"), ready_timeout=180) as srv:
        yield srv


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    paths = sorted((REAL_SAMPLES / "images").glob("*.jpg"))
    assert len(paths) == 3, f"the 3 real GZ2 samples are missing from {REAL_SAMPLES}"
    return [p.read_bytes() for p in paths]


def test_excess_load_is_shed_with_retry_after_and_service_recovers(small_server, blobs):
    pids = worker_pids(small_server.process.pid)

    def four_images(k: int):
        return "POST", "/classify", {"files": [("images", blobs[(k + i) % 3]) for i in range(4)]}

    samples = hammer(small_server.url, CLIENTS, four_images, requests_per_client=4)
    statuses = Counter(s.status for s in samples)
    admitted = [s for s in samples if s.status == 200]
    shed = [s for s in samples if s.status in (429, 503)]
    ok50, ok99 = percentiles([s.latency for s in admitted])
    shed50, shed99 = percentiles([s.latency for s in shed])
    print(f"\n{len(samples)} requests from {CLIENTS} clients, max_concurrency {MAX_CONCURRENCY}: {dict(statuses)}")
    print(f"admitted p50/p99 {ok50:.0f}/{ok99:.0f} ms, shed p50/p99 {shed50:.0f}/{shed99:.0f} ms")
    assert len(samples) == CLIENTS * 4
    assert set(statuses) <= {200, 429, 503}, [s.error for s in samples if s.status not in (200, 429, 503)][:3]
    assert admitted and len(shed) >= len(samples) // 2  # 2 in flight at a time: most of a 24-client burst is shed
    assert all(s.retry_after == "2" for s in shed)

    for s in shed:  # the service's JSON error format, saying why
        body = json.loads(s.error)
        assert body["kind"] in ("overloaded", "inference_unavailable") and body["status"] == s.status, body

    with httpx.Client(base_url=small_server.url, timeout=60) as client:
        # recovered: sequential requests are all admitted, health is fine, no worker was restarted
        for k in range(6):
            r = client.post("/classify", files=[("images", b) for b in blobs[: 1 + k % 3]])
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == 1 + k % 3
        assert client.get("/readyz").status_code == 200
    assert worker_pids(small_server.process.pid) == pids


def test_traffic_and_batching_settings_are_applied(tiny_models):
    """The GALAXYVIT_* traffic and batching settings reach BentoML's service definitions."""
    home, _ = tiny_models
    settings = {
        "GALAXYVIT_MODELS": "vit",
        "GALAXYVIT_MAX_CONCURRENCY": "3",
        "GALAXYVIT_TIMEOUT_S": "7",
        "GALAXYVIT_MAX_BATCH_SIZE": "12",
        "GALAXYVIT_MAX_IMAGES": "4",
        "GALAXYVIT_MAX_LATENCY_MS": "77",
        "GALAXYVIT_RETRY_AFTER_S": "5",
        "GALAXYVIT_WORKERS": "3",
        "GALAXYVIT_INFERENCE_WORKERS": "2",
    }
    entry = build(load_config(settings), home)
    inference = entry.find_dependent_by_name(INFERENCE_SERVICE)
    infer = inference.apis["infer"]
    assert entry.config["traffic"] == inference.config["traffic"] == {"timeout": 7}
    assert (entry.config["workers"], inference.config["workers"]) == (3, 2)
    assert (infer.batchable, infer.max_batch_size, infer.max_latency_ms) == (True, 12, 77)
    ((middleware, options),) = entry.middlewares  # no API keys: no AuthMiddleware
    assert middleware.__name__ == "AdmissionMiddleware"
    assert (options["max_concurrency"], options["retry_after"]) == (3, 5)
    assert options["readiness"].expected == 2 and options["uploads"].body_timeout_s == 10
