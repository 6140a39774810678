"""Start the BentoML HTTP service for the exported models (`bentoml serve serving.service:GalaxyClassifier`).

Serves every registered `galaxyvit-<name>` model (or those named with --models) on 127.0.0.1 by
default. Endpoints: POST /classify, POST /classify/raw, GET /models, POST /feedback, /livez,
/readyz, /metrics. Settings not given as options come from GALAXYVIT_* environment variables or
serving.toml (see serving/config.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    parser.add_argument("--workers", type=int, default=None, help="API worker processes (decode, preprocess)")
    parser.add_argument("--inference-workers", type=int, default=None, help="ONNX Runtime worker processes")
    parser.add_argument("--models", default=None, help="comma-separated model names to serve (default: all registered)")
    parser.add_argument("--default-model", default=None, help="model used when a request names none")
    parser.add_argument(
        "--variant", choices=("fp32", "int8", "fp16"), default=None, help="artifact variant (default fp32)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default=None, help="ONNX Runtime device (default auto)"
    )
    parser.add_argument("--max-batch-size", type=int, default=None, help="adaptive batching: most images per batch")
    parser.add_argument("--max-latency-ms", type=int, default=None, help="adaptive batching: longest wait for a batch")


def serve_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line and environment for these options."""
    env = dict(os.environ)
    for option, value in (
        ("workers", args.workers),
        ("inference_workers", args.inference_workers),
        ("models", args.models),
        ("default_model", args.default_model),
        ("variant", args.variant),
        ("device", args.device),
        ("max_batch_size", args.max_batch_size),
        ("max_latency_ms", args.max_latency_ms),
    ):
        if value is not None:
            env[f"GALAXYVIT_{option.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml) if bentoml.exists() else "bentoml", "serve", "serving.service:GalaxyClassifier"]
    command += ["--host", args.host, "--port", str(args.port)]
    return command, env


class ServerNotReady(RuntimeError):
    """A started server exited, or did not turn ready in time; the message ends with its log's tail."""


def wait_ready(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll URL/readyz until it answers 200; ServerNotReady when `process` exits first or `timeout` s pass."""
    tail = (lambda: ":\n" + log.read_text(errors="replace")[-4000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerNotReady(f"the service exited with code {process.returncode} before it was ready{tail()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerNotReady(f"the service was not ready after {timeout:.0f} s{tail()}")


def stop_server(process: subprocess.Popen, timeout: float = 30) -> None:
    """Graceful stop of a `bentoml serve` started with start_new_session=True: SIGTERM lets in-flight
    requests finish; if it has not exited after `timeout` s, SIGKILL its whole process group (the workers)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(args: argparse.Namespace) -> int:
    command, env = serve_command(args)
    print(f"starting {' '.join(command)} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.chdir(ROOT)
    os.execvpe(command[0], command, env)  # become the server: signals (SIGTERM, Ctrl-C) reach it directly
    return 0  # not reached
