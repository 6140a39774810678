"""One point of the load-test sweep: Locust at one concurrency against one model, and the engine yardstick.

run_point runs Locust in a subprocess (load_tests/point.py: importing Locust monkey-patches the whole
process for gevent) for a warm-up and a measured window, and reads the point's numbers from Locust's
CSVs and from the service's /metrics before and after the window. yardstick then runs the same ONNX
model in-process at the batch size the service formed (load_tests/engine.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from galaxyvit.store import default_home as bentoml_home
from load_tests.payloads import request_name
from load_tests.report import Point

ROOT = Path(__file__).resolve().parents[1]


class LoadTestError(Exception):
    """Bad options or a service that cannot be load-tested; the message says what to do."""


def metric_sums(text: str, model: str) -> dict[str, float]:
    """galaxyvit_batch_size _sum/_count and galaxyvit_inference_seconds _sum of one model in a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("galaxyvit_batch_size_sum", "galaxyvit_batch_size_count", "galaxyvit_inference_seconds_sum")
    sums = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in sums and sample.labels.get("model") == model:
                sums[sample.name] += sample.value
    return sums


def read_locust_csv(prefix: Path, name: str) -> dict[str, str]:
    """The row of Locust's PREFIX_stats.csv for request name `name`."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == name:
                return row
    return {}


def _ms(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def run_point(
    url: str,
    model: str,
    info: dict,
    users: int,
    args: argparse.Namespace,
    raw: Path,
    server_pid: int | None = None,
    protocol: str = "raw",
    run: int = 1,
) -> Point:
    """Locust (load_tests/point.py subprocess) for warm-up + window; the point's numbers."""
    prefix = raw / f"{model}-{protocol}-c{users}" if run == 1 else raw / f"{model}-{protocol}-c{users}-run{run}"
    command = [sys.executable, "-m", "load_tests.point", "--url", url, "--model", model, "--users", str(users)]
    command += ["--warmup", str(args.warmup), "--duration", str(args.duration), "--out", str(prefix)]
    command += ["--images-per-request", str(args.images_per_request), "--protocol", protocol]
    if server_pid:
        command += ["--server-pid", str(server_pid)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    limit = args.warmup + args.duration + 120
    load_before = os.getloadavg()[0]
    with open(f"{prefix}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise LoadTestError(
                f"Locust for {model} at concurrency {users} ran past {limit:.0f} s; see {prefix}.log"
            ) from None
    if code != 0:
        tail = Path(f"{prefix}.log").read_text(errors="replace")[-2000:]
        raise LoadTestError(f"Locust for {model} at concurrency {users} failed ({code}):\n{tail}")
    load_after = os.getloadavg()[0]
    window = json.loads(Path(f"{prefix}_window.json").read_text())
    k = args.images_per_request
    row = read_locust_csv(prefix, request_name(model, protocol, k))
    requests, failures = int(row.get("Request Count", 0)), int(row.get("Failure Count", 0))
    with open(f"{prefix}_exceptions.csv", newline="") as f:  # exceptions raised in the users' own code
        exceptions = [(int(r["Count"]), r["Message"]) for r in csv.DictReader(f)]
    with open(f"{prefix}_failures.csv", newline="") as f:
        messages = [f"{r['Occurrences']}x {r['Error']}" for r in csv.DictReader(f)]
    messages += [f"{count}x exception {message}" for count, message in exceptions]
    before = metric_sums(Path(f"{prefix}_metrics_start.txt").read_text(), model)
    after = metric_sums(Path(f"{prefix}_metrics_end.txt").read_text(), model)
    batches = int(after["galaxyvit_batch_size_count"] - before["galaxyvit_batch_size_count"])
    images = after["galaxyvit_batch_size_sum"] - before["galaxyvit_batch_size_sum"]
    busy = after["galaxyvit_inference_seconds_sum"] - before["galaxyvit_inference_seconds_sum"]
    seconds = float(window["seconds"])
    cpu = json.loads(Path(f"{prefix}_cpu.json").read_text())
    served = images or (requests - failures) * k

    def per_image(*roles: str) -> float | None:
        present = [cpu[r] for r in roles if r in cpu]
        return 1000 * sum(present) / served if present and served else None

    return Point(
        model=model,
        family=info.get("family", "?"),
        variant=info.get("variant", "?"),
        provider=info.get("provider", "?"),
        concurrency=users,
        images_per_request=k,
        seconds=seconds,
        requests=requests,
        failures=failures + sum(count for count, _ in exceptions),
        req_s=requests / seconds,
        img_s=(requests - failures) * k / seconds,
        p50_ms=_ms(row.get("50%")),
        p95_ms=_ms(row.get("95%")),
        p99_ms=_ms(row.get("99%")),
        batches=batches,
        mean_batch=images / batches if batches else None,
        engine_busy=busy / seconds if batches else None,
        failure_messages=messages,
        cpu_ms_api=per_image("api", "other"),
        cpu_ms_inference=per_image("inference"),
        cpu_ms_client=per_image("client"),
        cores_used=sum(cpu.values()) / seconds if server_pid else None,
        protocol=protocol,
        run=run,
        load_before=load_before,
        load_after=load_after,
    )


def engine_settings(args: argparse.Namespace) -> tuple[int, str, str, bool]:
    """(intra-op threads, variant, device, spinning) of the service's inference worker: options, then GALAXYVIT_*."""
    from inference.runtime import default_threads
    from serving.config import load_config

    config = load_config()
    workers = args.inference_workers or config.inference_workers
    threads = args.threads or config.intra_op_threads or default_threads(workers)
    return threads, args.variant or config.variant, args.device or config.device, config.intra_op_spinning


def open_engine(model: str, info: dict, args: argparse.Namespace):
    """The model's ONNX Runtime session as the service opens it (load_tests/engine.py), or None when not comparable."""

    from galaxyvit.store import stored_model_dir
    from load_tests.engine import Engine
    from load_tests.payloads import image_pool

    threads, variant, device, spinning = engine_settings(args)
    model_dir = stored_model_dir(model)
    engine = Engine(model, model_dir, image_pool(), variant, device, threads, spinning)
    if info.get("sha256") and info["sha256"] != engine.sha256:
        print(
            f"warning: {model}: the model store at {bentoml_home()} holds another {variant} file than the service "
            "serves; no engine yardstick",
            file=sys.stderr,
        )
        return None
    return engine


def yardstick(point: Point, engine, seconds: float, before: tuple[int, float] | None = None) -> None:
    """Fill the point's engine columns: the engine at the batch size the service formed, right after the point,
    and `before` (batch size, images/s), the engine measured right before it (`engine_before`).

    Measured around each point rather than once per model, so that load from other processes on a shared
    machine is as alike as it can be for the two numbers compared; the yardstick is the mean of before and
    after when both ran the same batch size, else the one after.
    """
    if engine is None or point.mean_batch is None:
        return
    result = engine.measure(max(1, round(point.mean_batch)), seconds=seconds)
    point.engine_batch, point.engine_img_s = result.batch_size, result.images_per_s
    point.engine_cpu_ms = result.cpu_ms_per_image
    reference = result.images_per_s
    if before is not None:
        point.engine_before_batch, point.engine_before_img_s = before
        if before[0] == result.batch_size:
            reference = (before[1] + result.images_per_s) / 2
    point.engine_reference = reference
    point.efficiency = point.img_s / reference


def engine_before(engine, batch_size: int, seconds: float) -> tuple[int, float] | None:
    """(batch size, images/s) of the engine right before a point, or None without an engine."""
    if engine is None:
        return None
    result = engine.measure(max(1, batch_size), seconds=seconds)
    return result.batch_size, result.images_per_s
