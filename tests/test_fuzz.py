"""Fuzzing the real service: hostile requests never get a 5xx, never crash a worker, never grow memory unboundedly.

A few hundred hypothesis-generated requests (load_tests/fuzz_cases.py) against the shared `bentoml serve`
fixture; scripts/fuzz_full.py sends the same kinds of requests >= 10,000 times.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from serving_fixtures import MODEL_NAMES

from load_tests.fuzz_cases import Limits, check_response, fixed_cases, requests
from load_tests.reliability import tree_rss, worker_pids

# the limits the `server` fixture (tests/serving_fixtures.py) runs with
LIMITS = Limits(max_upload_bytes=3 * 1024 * 1024, max_pixels=2000 * 2000, max_images=8, models=MODEL_NAMES)
EXAMPLES = 300
RSS_GROWTH_LIMIT = 0.25  # after warm-up; a decompression bomb or a leak per request would blow far past it


def test_hostile_requests_never_get_5xx_nor_crash_a_worker(server):
    pids = worker_pids(server.process.pid)
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in fixed_cases(LIMITS):  # warm-up and requests that once broke the service
            response = client.send(case.request(client))
            assert check_response(case, response) is None, case.describe()
        rss_before = tree_rss(server.process.pid)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=requests(LIMITS))
        def fuzz(case):
            response = client.send(case.request(client))
            statuses[response.status_code] += 1
            problem = check_response(case, response)
            assert problem is None, f"{case.describe()} -> {problem}"

        fuzz()
        assert client.get("/readyz").status_code == 200
        good = fixed_cases(LIMITS)[0]
        assert client.send(good.request(client)).status_code == 200  # still classifying
    rss_after = tree_rss(server.process.pid)
    print(f"statuses {dict(sorted(statuses.items()))}; RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert sum(statuses.values()) >= EXAMPLES * 0.9
    assert statuses[200] > 0 and len(statuses) >= 4  # the generator reaches both sides of the limits
    assert worker_pids(server.process.pid) == pids, "a worker process died and was restarted"
    assert rss_after < rss_before * (1 + RSS_GROWTH_LIMIT), (rss_before, rss_after)


def test_invented_paths_do_not_add_metric_series(server):
    """BentoML labels request metrics by URL path; invented paths must not add series without bound."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for k in range(60):
            assert client.post(f"/invented/{k}/{secrets.token_hex(4)}", content=b"x").status_code == 404
        text = client.get("/metrics").text
    endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
    assert "/__other__" in endpoints and not any(e.startswith("/invented") for e in endpoints), endpoints
