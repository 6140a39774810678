"""Load-test the service with Locust over a range of concurrencies, with the raw ONNX engine as yardstick.

  galaxyvit loadtest --start --models vit,linformer --concurrency 1,4,16,32 --duration 15
  galaxyvit loadtest --url http://127.0.0.1:3000 --concurrency 1,2,4 --duration 10
  galaxyvit loadtest --models linformer --concurrency 16 --protocols classify,raw,oip-json,oip-binary --repeat 3

--start (the default) starts the service (serving.process.ServerProcess) on a free loopback port with
the service settings given here, one fresh service per model of the store in BENTOML_HOME (BentoML's batcher learns
its wait times from the traffic it sees, so one model's long queues would slow the next model's
light load), and stops each by PID; --url targets a running service, loopback only (the yardstick
then reads the same BENTOML_HOME store).
For each model, concurrency N and protocol (--protocols: multipart /classify, /classify/raw, the Open
Inference Protocol with JSON or binary tensors; load_tests/locustfile.py), N Locust users post images
back to back: a warm-up that is discarded, then a measured window; --repeat runs every point again, in
turn. From Locust's CSVs: requests/s, images/s, p50/p95/p99 latency, errors; from the service's
/metrics (delta over the window): the mean batch size its adaptive batcher formed. Right before and
right after each point the same ONNX model runs in-process (load_tests/engine.py, the service's own
session settings; after the point at the batch size it formed) and service efficiency = service
images/s / engine images/s (load_tests/measure.py yardstick). Writes results.json, results.md (table),
loadtest.png and Locust's raw CSVs (raw/) to --out. Exit status 1 when any request failed, 2 on
bad options or a service that cannot be tested.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from galaxyvit.store import default_home as bentoml_home
from load_tests.measure import LoadTestError, engine_before, engine_settings, open_engine, run_point, yardstick
from load_tests.payloads import default_protocol
from load_tests.report import Point, machine, write
from serving.process import ServerNotReady, ServerProcess

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("classify", "raw", "oip-json", "oip-binary", "oip-bytes")  # load_tests/locustfile.py PROTOCOLS
MAX_CONCURRENCY = 256
MAX_POINTS = 60
MAX_TOTAL_S = 3 * 3600


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running service to test (loopback only: 127.0.0.1, ::1, localhost)")
    target.add_argument("--start", action="store_true", help="start the service for the test (default)")
    parser.add_argument("--models", default=None, help="comma-separated served models to test (default: all served)")
    parser.add_argument(
        "--concurrency", type=_int_list, default=[1, 2, 4, 8, 16, 32], help="Locust users per point (1,2,4,8,16,32)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per point (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="discarded warm-up seconds per point (default 5)")
    parser.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="images per request (default 1); without --protocols, 1: POST /classify/raw, more: multipart /classify",
    )
    parser.add_argument(
        "--protocols",
        default=None,
        help=f"comma-separated, each point once per protocol: {', '.join(PROTOCOLS)} (default: raw or classify)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every point, taken in turn (default 1)")
    parser.add_argument("--engine-seconds", type=float, default=3.0, help="yardstick seconds per point (default 3)")
    parser.add_argument("--no-engine", action="store_true", help="skip the raw-engine yardstick")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/loadtest-<UTC time>)")
    service = parser.add_argument_group("service settings (with --start; else the running service's own)")
    service.add_argument("--max-batch-size", type=int, default=None, help="adaptive batching: most images per call")
    service.add_argument("--max-latency-ms", type=int, default=None, help="adaptive batching: latency budget")
    service.add_argument("--workers", type=int, default=None, help="API worker processes")
    service.add_argument("--inference-workers", type=int, default=None, help="ONNX Runtime worker processes")
    service.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per session (with --url: the running service's, for the yardstick)",
    )
    service.add_argument("--variant", choices=("fp32", "int8", "fp16"), default=None, help="artifact variant")
    service.add_argument("--device", choices=("auto", "cuda", "cpu"), default=None, help="ONNX Runtime device")
    service.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /readyz (300)")


# ---------------------------------------------------------------- the target


def check_loopback(url: str) -> str:
    """The URL without a trailing slash, or LoadTestError unless it is http(s) on a loopback address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTestError(f"--url must be http://HOST:PORT, not {url!r}")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadTestError(
            f"refusing to load-test {url}: only loopback targets are allowed (127.0.0.1, ::1, localhost); "
            "run the load test on the machine that serves"
        )
    return url.rstrip("/")


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- the sweep


def check_args(args: argparse.Namespace) -> None:
    if any(n < 1 or n > MAX_CONCURRENCY for n in args.concurrency):
        raise LoadTestError(f"--concurrency values must be 1..{MAX_CONCURRENCY}")
    if not 0.5 <= args.duration <= 600 or not 0 <= args.warmup <= 120:
        raise LoadTestError("--duration must be 0.5..600 s and --warmup 0..120 s")
    if args.images_per_request < 1:
        raise LoadTestError("--images-per-request must be at least 1")
    if not 1 <= args.repeat <= 20:
        raise LoadTestError("--repeat must be 1..20")
    unknown = [p for p in protocols(args) if p not in PROTOCOLS]
    if unknown:
        raise LoadTestError(f"unknown protocol(s) {', '.join(unknown)}; protocols: {', '.join(PROTOCOLS)}")
    if "raw" in protocols(args) and args.images_per_request != 1:
        raise LoadTestError("protocol raw (/classify/raw) takes one image per request")
    if args.url:
        settings = ("max_batch_size", "max_latency_ms", "workers", "inference_workers", "variant", "device")
        given = [k for k in settings if getattr(args, k) is not None]
        if given:
            raise LoadTestError(
                f"--{given[0].replace('_', '-')} sets up a service that --start starts; --url tests one as it runs"
            )


def protocols(args: argparse.Namespace) -> list[str]:
    """The protocols of --protocols, or the default one for the images per request."""
    named = [p.strip() for p in (args.protocols or "").split(",") if p.strip()]
    return named or [default_protocol(args.images_per_request)]


def start_service(args: argparse.Namespace, model: str, log: Path) -> ServerProcess:
    """The service for `model` with this sweep's settings (not started yet)."""
    settings = {"models": model, "variant": args.variant, "device": args.device, "workers": args.workers}
    settings.update({"inference_workers": args.inference_workers, "intra_op_threads": args.threads or None})
    settings.update({"max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms})
    try:
        return ServerProcess(settings, log=log, ready_timeout=args.start_timeout)
    except (ValueError, FileNotFoundError) as exc:
        raise LoadTestError(f"bad service settings: {exc}") from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def served_models(url: str) -> dict[str, dict]:
    """name -> the service's /models entry (card fields, provider)."""
    try:
        return {m["name"]: m for m in get_json(url + "/models")["models"]}
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise LoadTestError(f"{url}/models did not answer like a galaxyvit service: {exc}") from None


def sweep_model(
    url: str, model: str, info: dict, args: argparse.Namespace, raw: Path, bar, server_pid: int | None = None
) -> list[Point]:
    """Every concurrency and protocol for one model, --repeat times in turn, each point between two runs of
    the engine yardstick (before: at the batch the previous run of the point formed)."""
    from serving.config import load_config

    engine = None if args.no_engine else open_engine(model, info, args)
    max_batch = args.max_batch_size or load_config().max_batch_size
    batches: dict[tuple[int, str], int] = {}
    points = []
    for run in range(1, args.repeat + 1):
        for users in args.concurrency:
            for protocol in protocols(args):
                guess = batches.get((users, protocol), min(users * args.images_per_request, max_batch))
                before = engine_before(engine, guess, args.engine_seconds)
                point = run_point(url, model, info, users, args, raw, server_pid, protocol, run)
                yardstick(point, engine, args.engine_seconds, before)
                if point.engine_batch:
                    batches[(users, protocol)] = point.engine_batch
                bar.update()
                bar.write(
                    f"{model} {protocol} c={users} run {run}: {point.req_s:.1f} req/s, {point.img_s:.1f} img/s, "
                    f"p50 {point.p50_ms} ms, p99 {point.p99_ms} ms, errors {point.failures}, "
                    f"mean batch {_fmt(point.mean_batch)}, engine {_fmt(point.engine_img_s)} img/s, "
                    f"API {_fmt(point.cpu_ms_api)} core-ms/img"
                )
                points.append(point)
    return points


def sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    check_args(args)
    out = args.out or ROOT / "reports" / f"loadtest-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    raw = out / "raw"
    wanted = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else []
    if args.url:
        url = check_loopback(args.url)
        served = served_models(url)
        models = wanted or list(served)
        unknown = [m for m in models if m not in served]
        if unknown:
            raise LoadTestError(f"model(s) {', '.join(unknown)} not served; served: {', '.join(served)}")
    else:
        from galaxyvit.store import discover_models

        registered = discover_models()
        if not registered:
            raise LoadTestError(
                f"no galaxyvit-* model in the model store at {bentoml_home()}: export one with `galaxyvit export` "
                "(python -m training.random_models makes random-weight ones) or point BENTOML_HOME at a store"
            )
        models = wanted or registered
        unknown = [m for m in models if m not in registered]
        if unknown:
            raise LoadTestError(
                f"model(s) {', '.join(unknown)} not in the model store at {bentoml_home()} "
                f"(registered: {', '.join(registered) or 'none'}); export them with `galaxyvit export`"
            )
    n_points = len(models) * len(args.concurrency) * len(protocols(args)) * args.repeat
    total = n_points * (args.warmup + args.duration + 3 + (0 if args.no_engine else 2 * args.engine_seconds))
    if n_points > MAX_POINTS or total > MAX_TOTAL_S:
        raise LoadTestError(f"{n_points} points, about {total / 60:.0f} min: more than this sweep allows")
    print(f"{n_points} points, about {total / 60:.1f} min of load", file=sys.stderr)
    raw.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    service = None
    with tqdm(total=n_points, desc="load test", unit="point") as bar:
        for model in models:
            if args.url:
                points += sweep_model(url, model, served[model], args, raw, bar)
                continue
            # one service per model: the batcher's learned wait times come from this model's traffic only
            service = start_service(args, model, raw / f"service-{model}.log")
            bar.write(f"starting the service for {model} on {service.url} (log: {service.log})")
            try:
                with service:
                    info = served_models(service.url)[model]
                    points += sweep_model(service.url, model, info, args, raw, bar, service.pid)
            except ServerNotReady as exc:
                raise LoadTestError(str(exc)) from None
    threads, _, _, spinning = engine_settings(args)
    settings = {"target": "started" if service else url, "duration_s": args.duration, "warmup_s": args.warmup}
    settings.update({"images_per_request": args.images_per_request, "engine_threads": threads, "spinning": spinning})
    settings.update({"protocols": ",".join(protocols(args)), "repeat": args.repeat})
    if service is not None:
        names = ("max_batch_size", "max_latency_ms", "workers", "inference_workers", "intra_op_threads")
        settings.update({name: getattr(service.config, name) for name in names})
    paths = write(points, out, settings, machine())
    print(paths["markdown"].read_text())
    print(f"wrote {paths['markdown']}, {paths['plot']}, {paths['json']}", file=sys.stderr)
    errors = sum(p.failures for p in points)
    if errors:
        print(f"{errors} request(s) failed: see the failures in {paths['json']}", file=sys.stderr)
    return 1 if errors else 0


def main(args: argparse.Namespace) -> int:
    try:
        return sweep(args)
    except LoadTestError as exc:
        print(f"galaxyvit loadtest: {exc}", file=sys.stderr)
        return 2
