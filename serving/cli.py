"""Start the BentoML HTTP service for the exported models (`bentoml serve serving.service:GalaxyClassifier`).

Serves every registered `galaxyvit-<name>` model (or those named with --models) on 127.0.0.1 by
default. Endpoints: POST /classify, POST /classify/raw, GET /models, POST /feedback, /livez,
/readyz, /metrics. Settings not given as options come from GALAXYVIT_* environment variables or
serving.toml (see serving/config.py).

API keys: `galaxyvit serve --hash-key` reads a key from stdin (or a prompt) and prints the line to put in
the keys file; `galaxyvit serve --api-keys-file FILE` then requires `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from serving.process import ROOT, bentoml_command, serve_env

# options that are serving settings (ServingConfig fields), passed on as GALAXYVIT_* variables
SETTING_OPTIONS = (
    "workers",
    "inference_workers",
    "models",
    "default_model",
    "variant",
    "device",
    "max_batch_size",
    "max_latency_ms",
    "api_keys_file",
)


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
    parser.add_argument(
        "--api-keys-file", default=None, help="file of API key SHA-256 hashes: requests then need a Bearer key"
    )
    parser.add_argument(
        "--hash-key",
        action="store_true",
        help="print the SHA-256 line of an API key read from stdin (or a prompt) for the keys file, and exit",
    )


def serve_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line and environment for these options."""
    settings = {name: getattr(args, name) for name in SETTING_OPTIONS}
    if settings["api_keys_file"]:  # the server runs in the repository root
        settings["api_keys_file"] = str(Path(settings["api_keys_file"]).resolve())
    return bentoml_command(args.host, args.port), serve_env(settings)


def read_key() -> str:
    """An API key from stdin, or from a prompt that does not echo it (never from the command line, which
    shell histories and process lists keep)."""
    key = sys.stdin.readline() if not sys.stdin.isatty() else getpass.getpass("API key: ")
    return key.strip()


def main(args: argparse.Namespace) -> int:
    if args.hash_key:
        from serving.auth import hash_key

        key = read_key()
        if not key:
            print("no key given", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    command, env = serve_command(args)
    print(f"starting {' '.join(command)} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.chdir(ROOT)
    os.execvpe(command[0], command, env)  # become the server: signals (SIGTERM, Ctrl-C) reach it directly
    return 0  # not reached
