"""Load-test the service with Locust over a range of concurrencies, with the raw ONNX engine as yardstick.

  galaxyvit loadtest --start --models vit,linformer --concurrency 1,4,16,32 --duration 15
  galaxyvit loadtest --url http://127.0.0.1:3000 --concurrency 1,2,4 --duration 10

--start (the default) starts `galaxyvit serve` on a free loopback port with the service settings
given here, one fresh service per model of the store in BENTOML_HOME (BentoML's batcher learns
its wait times from the traffic it sees, so one model's long queues would slow the next model's
light load), and stops each by PID; --url targets a running service, loopback only (the yardstick
then reads the same BENTOML_HOME store).
For each model and concurrency N, N Locust users (load_tests/locustfile.py) post images back to
back: a warm-up that is discarded, then a measured window. From Locust's CSVs: requests/s,
images/s, p50/p95/p99 latency, errors; from the service's /metrics (delta over the window): the
mean batch size its adaptive batcher formed. Right after each point the same ONNX model runs
in-process at that batch size (load_tests/engine.py, the service's own session settings) and
service efficiency = service images/s / engine images/s. Writes results.json, results.md (table),
loadtest.png and Locust's raw CSVs (raw/) to --out. Exit status 1 when any request failed, 2 on
bad options or a service that cannot be tested.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from galaxyvit.store import default_home as bentoml_home
from load_tests.report import Point, machine, write

ROOT = Path(__file__).resolve().parents[1]
MAX_CONCURRENCY = 256
MAX_POINTS = 60
MAX_TOTAL_S = 3 * 3600


class LoadTestError(Exception):
    """Bad options or a service that cannot be load-tested; the message says what to do."""


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
        help="1: POST /classify/raw; more: multipart POST /classify with that many images (default 1)",
    )
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`galaxyvit serve MODELS` in a subprocess on a free loopback port, with its own BentoML home (fresh /metrics)."""

    def __init__(self, args: argparse.Namespace, log: Path, models: str) -> None:
        from serving.cli import serve_command

        models_dir = bentoml_home() / "models"
        if not models_dir.is_dir():
            raise LoadTestError(f"no BentoML model store at {models_dir}: export a model first (galaxyvit export)")
        self.home = Path(tempfile.mkdtemp(prefix="galaxyvit-loadtest-"))
        (self.home / "models").symlink_to(models_dir.resolve())  # the same models, this run's own metrics
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve_args = argparse.Namespace(
            host="127.0.0.1",
            port=self.port,
            workers=args.workers,
            inference_workers=args.inference_workers,
            models=models,
            default_model=None,
            variant=args.variant,
            device=args.device,
            max_batch_size=args.max_batch_size,
            max_latency_ms=args.max_latency_ms,
        )
        command, env = serve_command(serve_args)
        env.update({"BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true"})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if args.threads:
            env["GALAXYVIT_INTRA_OP_THREADS"] = str(args.threads)
        from serving.config import load_config

        try:
            load_config(env)
        except (ValueError, FileNotFoundError) as exc:
            shutil.rmtree(self.home, ignore_errors=True)
            raise LoadTestError(f"bad service settings: {exc}") from None
        self.env = env
        self.log = log
        with open(log, "wb") as f:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float) -> None:
        from serving.cli import ServerNotReady, wait_ready

        try:
            wait_ready(self.url, self.process, timeout, self.log)
        except ServerNotReady as exc:
            raise LoadTestError(str(exc)) from None

    def stop(self) -> None:
        """SIGTERM to the server, then SIGKILL to its own process group (its workers) if it does not exit."""
        from serving.cli import stop_server

        stop_server(self.process)
        (self.home / "models").unlink(missing_ok=True)  # the link to the model store, never the store itself
        shutil.rmtree(self.home, ignore_errors=True)  # this run's metrics and prediction store


# ---------------------------------------------------------------- one point


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def run_point(
    url: str, model: str, info: dict, users: int, args: argparse.Namespace, raw: Path, server_pid: int | None = None
) -> Point:
    """Locust (load_tests/point.py subprocess) for warm-up + window; the point's numbers."""
    prefix = raw / f"{model}-c{users}"
    command = [sys.executable, "-m", "load_tests.point", "--url", url, "--model", model, "--users", str(users)]
    command += ["--warmup", str(args.warmup), "--duration", str(args.duration), "--out", str(prefix)]
    command += ["--images-per-request", str(args.images_per_request)]
    if server_pid:
        command += ["--server-pid", str(server_pid)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    limit = args.warmup + args.duration + 120
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
    window = json.loads(Path(f"{prefix}_window.json").read_text())
    k = args.images_per_request
    row = read_locust_csv(prefix, f"{model} /classify/raw" if k == 1 else f"{model} /classify x{k}")
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
    )


# ---------------------------------------------------------------- the sweep


def check_args(args: argparse.Namespace) -> None:
    if any(n < 1 or n > MAX_CONCURRENCY for n in args.concurrency):
        raise LoadTestError(f"--concurrency values must be 1..{MAX_CONCURRENCY}")
    if not 0.5 <= args.duration <= 600 or not 0 <= args.warmup <= 120:
        raise LoadTestError("--duration must be 0.5..600 s and --warmup 0..120 s")
    if args.images_per_request < 1:
        raise LoadTestError("--images-per-request must be at least 1")
    if args.url:
        settings = ("max_batch_size", "max_latency_ms", "workers", "inference_workers", "variant", "device")
        given = [k for k in settings if getattr(args, k) is not None]
        if given:
            raise LoadTestError(
                f"--{given[0].replace('_', '-')} sets up a service that --start starts; --url tests one as it runs"
            )


def engine_settings(args: argparse.Namespace) -> tuple[int, str, str, bool]:
    """(intra-op threads, variant, device, spinning) of the service's inference worker: options, then GALAXYVIT_*."""
    from serving.config import load_config
    from serving.runtime import default_threads

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


def yardstick(point: Point, engine, seconds: float) -> None:
    """Fill the point's engine columns: the engine at the batch size the service formed, right after the point.

    Measured right after each point rather than once per model, so that load from other processes on
    a shared machine is as alike as it can be for the two numbers compared.
    """
    if engine is None or point.mean_batch is None:
        return
    result = engine.measure(max(1, round(point.mean_batch)), seconds=seconds)
    point.engine_batch, point.engine_img_s = result.batch_size, result.images_per_s
    point.efficiency = point.img_s / result.images_per_s


def served_models(url: str) -> dict[str, dict]:
    """name -> the service's /models entry (card fields, provider)."""
    try:
        return {m["name"]: m for m in get_json(url + "/models")["models"]}
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise LoadTestError(f"{url}/models did not answer like a galaxyvit service: {exc}") from None


def sweep_model(
    url: str, model: str, info: dict, args: argparse.Namespace, raw: Path, bar, server_pid: int | None = None
) -> list[Point]:
    """Every concurrency for one model, each followed by the engine yardstick."""
    engine = None if args.no_engine else open_engine(model, info, args)
    points = []
    for users in args.concurrency:
        point = run_point(url, model, info, users, args, raw, server_pid)
        yardstick(point, engine, args.engine_seconds)
        bar.update()
        bar.write(
            f"{model} c={users}: {point.req_s:.1f} req/s, {point.img_s:.1f} img/s, p50 {point.p50_ms} ms, "
            f"p99 {point.p99_ms} ms, errors {point.failures}, mean batch {_fmt(point.mean_batch)}, "
            f"engine {_fmt(point.engine_img_s)} img/s"
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
                "(python -m load_tests.models makes random-weight ones) or point BENTOML_HOME at a store"
            )
        models = wanted or registered
        unknown = [m for m in models if m not in registered]
        if unknown:
            raise LoadTestError(
                f"model(s) {', '.join(unknown)} not in the model store at {bentoml_home()} "
                f"(registered: {', '.join(registered) or 'none'}); export them with `galaxyvit export`"
            )
    n_points = len(models) * len(args.concurrency)
    total = n_points * (args.warmup + args.duration + 3)
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
            service = Service(args, raw / f"service-{model}.log", model)
            try:
                bar.write(f"starting the service for {model} on {service.url} (log: {service.log})")
                service.wait_ready(args.start_timeout)
                info = served_models(service.url)[model]
                points += sweep_model(service.url, model, info, args, raw, bar, service.process.pid)
            finally:
                service.stop()
    threads, _, _, spinning = engine_settings(args)
    settings = {"target": "started" if service else url, "duration_s": args.duration, "warmup_s": args.warmup}
    settings.update({"images_per_request": args.images_per_request, "engine_threads": threads, "spinning": spinning})
    if service is not None:
        names = ("MAX_BATCH_SIZE", "MAX_LATENCY_MS", "WORKERS", "INFERENCE_WORKERS", "INTRA_OP_THREADS")
        from serving.config import load_config

        config = load_config({k: v for k, v in service.env.items() if k.startswith("GALAXYVIT_")})
        settings.update({n.lower(): getattr(config, n.lower()) for n in names})
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
