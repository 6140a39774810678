"""Full fuzz run: >= 10,000 hostile requests against a real `bentoml serve` on 127.0.0.1.

The requests come from the same hypothesis strategies as the CI test (load_tests/fuzz_cases.py): random
bytes, truncated/corrupted JPEG/PNG/GIF/BMP/TIFF/WebP/FITS, headers claiming zero or enormous sizes,
odd modes, animated GIFs, decompression bombs, wrong content types, malformed multipart, huge fields,
unknown models, malformed /feedback JSON. Prints counts by status and by request kind, the number
of 5xx answers and transport errors, worker restarts, the server's RSS before and after, the duration.
Exit status 0 only with no 5xx, no transport error and no worker restart.

Without --url it exports three tiny random-weight models (training.random_models) into a temporary
BentoML home, starts its own server (serving.process.ServerProcess) and stops it by PID at the end.

    python scripts/fuzz_full.py                 # 10,000 requests, own server
    python scripts/fuzz_full.py -n 500 --url http://127.0.0.1:3000 --pid 1234
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from tqdm import tqdm

from load_tests.fuzz_cases import Limits, check_response, fixed_cases, requests
from load_tests.reliability import tree_rss, worker_pids
from serving.process import ServerProcess
from training.random_models import FAMILIES, export_random_models

MODEL_NAMES = tuple(FAMILIES)  # vit, linformer, vitbase
SERVER_SETTINGS = {
    "models": MODEL_NAMES,
    "max_images": 8,
    "max_upload_bytes": 3 * 1024 * 1024,
    "max_pixels": 2000 * 2000,
    "intra_op_threads": 1,
    "max_latency_ms": 50,
}
LIMITS = Limits(max_upload_bytes=3 * 1024 * 1024, max_pixels=2000 * 2000, max_images=8, models=MODEL_NAMES)


def fuzz(url: str, pid: int | None, n: int, show: int) -> int:
    statuses: Counter[int] = Counter()
    by_kind: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    transport = 0
    pids = worker_pids(pid) if pid else set()
    start = time.time()
    with httpx.Client(base_url=url, timeout=60) as client:

        def send(case) -> None:
            nonlocal transport
            try:
                response = client.send(case.request(client))
            except httpx.TransportError as exc:
                transport += 1
                problems.append(f"{case.describe()} -> {type(exc).__name__}: {exc}")
                return
            statuses[response.status_code] += 1
            by_kind[(case.kind, f"{response.status_code // 100}xx")] += 1
            problem = check_response(case, response)
            if problem:
                problems.append(f"{case.describe()} -> {problem}")

        for case in fixed_cases(LIMITS):  # warm-up and known-nasty requests
            send(case)
        rss_before = tree_rss(pid) if pid else 0
        trajectory: list[tuple[int, int]] = [(0, rss_before)]  # (generated requests, RSS): a leak keeps climbing
        bar = tqdm(total=n, desc="fuzz", unit="req")

        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=requests(LIMITS))
        def run(case) -> None:
            send(case)
            bar.update(1)
            if pid and bar.n % max(1, n // 10) == 0:
                trajectory.append((bar.n, tree_rss(pid)))

        run()
        bar.close()
        ready = client.get("/readyz").status_code
    duration = time.time() - start
    rss_after = tree_rss(pid) if pid else 0
    total = sum(statuses.values()) + transport
    fivexx = sum(c for s, c in statuses.items() if s >= 500)
    restarted = bool(pid) and worker_pids(pid) != pids

    print(f"\nrequests: {total} in {duration:.0f} s ({total / duration:.0f}/s)")
    print("by status: " + ", ".join(f"{s}: {c}" for s, c in sorted(statuses.items())))
    kinds = sorted({k for k, _ in by_kind})
    for kind in kinds:
        print(f"  {kind:20s} " + ", ".join(f"{cls}: {c}" for (k, cls), c in sorted(by_kind.items()) if k == kind))
    print(f"5xx: {fivexx}   transport errors: {transport}   malformed 4xx bodies: {len(problems) - fivexx - transport}")
    if pid:
        growth = (rss_after - rss_before) / rss_before * 100
        print(f"server RSS (all processes): {rss_before / 2**20:.0f} MiB after warm-up -> {rss_after / 2**20:.0f} MiB")
        print(f"RSS growth: {growth:+.1f}%   worker restarted: {restarted}   /readyz at the end: {ready}")
        print("RSS (MiB) after N generated requests: " + ", ".join(f"{k}: {r / 2**20:.0f}" for k, r in trajectory))
    for problem in problems[:show]:
        print("PROBLEM", problem[:500])
    return 0 if not problems and not restarted and ready == 200 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=10_000, help="generated requests (default 10000)")
    parser.add_argument("--url", default=None, help="fuzz a running server (its limits must match SERVER_SETTINGS)")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's PID, for RSS and restarts")
    parser.add_argument("--show", type=int, default=20, help="problems to print (default 20)")
    args = parser.parse_args()
    if args.url:
        return fuzz(args.url, args.pid, args.requests, args.show)
    with tempfile.TemporaryDirectory(prefix="galaxyvit-fuzz-") as tmp:
        base = Path(tmp)
        print("exporting tiny models...", flush=True)
        export_random_models(base, base / "bentoml_home", MODEL_NAMES, tiny=True)
        store, workdir = base / "bentoml_home", base / "run"
        with ServerProcess(SERVER_SETTINGS, store=store, workdir=workdir, ready_timeout=180) as server:
            return fuzz(server.url, server.pid, args.requests, args.show)


if __name__ == "__main__":
    sys.exit(main())
