"""One load point: N Locust users against one model for a warm-up (discarded) and a measured window.

Run by `galaxyvit loadtest` as a subprocess (Locust's Python API needs gevent's monkey patching,
which must not leak into the sweep process):

  python -m load_tests.point --url http://127.0.0.1:3000 --model vit --users 8 --warmup 5 --duration 15 \
      --protocol oip-binary --out DIR/vit-oip-binary-c8

Writes Locust's own CSVs for the measured window only (PREFIX_stats.csv, _failures.csv,
_exceptions.csv), the service's /metrics text right before and right after that window
(PREFIX_metrics_start.txt, PREFIX_metrics_end.txt), the window's wall-clock times (PREFIX_window.json)
and the CPU seconds spent in the window (PREFIX_cpu.json): by this Locust process and, given
--server-pid, by each of the service's processes (API workers, inference workers, the rest).
"""

# ruff: noqa: I001  (locust first: its gevent monkey patching must precede the other imports)
from __future__ import annotations

import locust

import argparse
import csv
import json
import os
import time
import urllib.request

import gevent
import psutil
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from load_tests.payloads import image_pool
from load_tests.locustfile import IMAGES_ENV, MODEL_ENV, PROTOCOL_ENV, GalaxyUser


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def service_processes(server_pid: int) -> dict[int, tuple[str, psutil.Process]]:
    """pid -> (role, process) for `bentoml serve` and its workers: "inference", "api" or "other"."""
    root = psutil.Process(server_pid)
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        role = "other"
        if "--worker-id" in command:
            role = "inference" if "galaxyvit_models" in command else "api"
        found[process.pid] = (role, process)
    return found


def cpu_seconds(processes: dict[int, tuple[str, psutil.Process]]) -> dict[int, float]:
    """User + system CPU seconds of each live process so far."""
    seconds = {}
    for pid, (_, process) in processes.items():
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def run_point(
    url: str,
    model: str,
    users: int,
    warmup: float,
    duration: float,
    prefix: str,
    images: int = 1,
    server_pid: int | None = None,
    protocol: str = "",
) -> None:
    os.environ[MODEL_ENV] = model
    os.environ[IMAGES_ENV] = str(images)
    os.environ[PROTOCOL_ENV] = protocol
    image_pool()  # read and encode the images before the clock starts
    env = Environment(user_classes=[GalaxyUser], host=url, events=locust.events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=max(users, 1))  # all users within about a second
    deadline = time.monotonic() + warmup + 30
    while runner.user_count < users and time.monotonic() < deadline:
        gevent.sleep(0.05)
    gevent.sleep(warmup)
    start_metrics = fetch(url + "/metrics")
    service = service_processes(server_pid) if server_pid else {}
    client = psutil.Process()
    env.stats.reset_all()
    started = time.time()
    service_start, client_start = cpu_seconds(service), sum(client.cpu_times()[:2])
    gevent.sleep(duration)
    service_end, client_end = cpu_seconds(service), sum(client.cpu_times()[:2])
    ended = time.time()
    # the CSV writer does not yield to other greenlets: the files are one consistent snapshot
    writer = StatsCSV(env, PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv)):
        with open(f"{prefix}_{suffix}.csv", "w", newline="") as f:
            write(csv.writer(f))
    with open(f"{prefix}_exceptions.csv", "w", newline="") as f:
        writer.exceptions_csv(csv.writer(f))
    end_metrics = fetch(url + "/metrics")
    runner.quit()
    with open(f"{prefix}_metrics_start.txt", "w") as f:
        f.write(start_metrics)
    with open(f"{prefix}_metrics_end.txt", "w") as f:
        f.write(end_metrics)
    with open(f"{prefix}_window.json", "w") as f:
        json.dump({"start": started, "end": ended, "seconds": ended - started, "users": users, "model": model}, f)
    cpu = {"client": client_end - client_start}
    for pid in service_start.keys() & service_end.keys():
        role = service[pid][0]
        cpu[role] = cpu.get(role, 0.0) + service_end[pid] - service_start[pid]
    with open(f"{prefix}_cpu.json", "w") as f:
        json.dump(cpu, f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--protocol", default="", help="what the users post (load_tests/locustfile.py PROTOCOLS)")
    parser.add_argument("--out", required=True, help="path prefix of the files written")
    parser.add_argument("--server-pid", type=int, default=None, help="`bentoml serve` process whose CPU to record")
    args = parser.parse_args()
    run_point(
        args.url,
        args.model,
        args.users,
        args.warmup,
        args.duration,
        args.out,
        args.images_per_request,
        args.server_pid,
        args.protocol,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
