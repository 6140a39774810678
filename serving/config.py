"""Serving settings: environment variables (GALAXYVIT_*) over an optional TOML file over defaults.

The service reads them at import time, because BentoML fixes the batching limits, traffic limits
and the models a bento carries when the service class is defined. Every setting can be given as
an environment variable (name in upper case with the GALAXYVIT_ prefix, e.g. GALAXYVIT_MAX_BATCH_SIZE=32)
or in the `[serving]` table of the TOML file named by GALAXYVIT_SERVING_CONFIG (default: serving.toml
in the working directory, if present).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference.decode import MAX_DECODED_BYTES, MAX_PIXELS

ENV_PREFIX = "GALAXYVIT_"
CONFIG_ENV = "GALAXYVIT_SERVING_CONFIG"


@dataclass
class ServingConfig:
    """Everything the service lets an operator tune. Defaults suit a small CPU box.

    Each field's `help` is its one description: docs/serving.md's settings table is generated from it
    (`python -m serving.config --write docs/serving.md`).
    """

    models: list[str] = field(
        default_factory=list,
        metadata={"help": "served model names, comma-separated; empty: every galaxyvit-* model in the store"},
    )
    default_model: str = field(
        default="", metadata={"help": "model used when a request names none; empty: the first of `models`"}
    )
    variant: str = field(default="fp32", metadata={"help": "which exported variant to load: fp32, int8 or fp16"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when usable, else CPU), cuda or cpu"})
    intra_op_threads: int = field(
        default=0, metadata={"help": "ONNX Runtime threads per session; 0: CPU cores / `inference_workers`"}
    )
    intra_op_spinning: bool = field(
        default=False,
        metadata={
            "help": "let ONNX Runtime's threads busy-wait for work between operators and calls. Off by default: "
            "on a CPU box they would burn the cores the API workers decode on (load test, linformer at "
            "concurrency 4: 24 -> 13 core-ms of the inference process per image, 64 -> 87 images/s). "
            "Turn on for an inference-only box"
        },
    )
    calibrate: bool = field(
        default=True,
        metadata={
            "help": "apply the model card's fitted temperature to the probabilities (answers say `calibrated: "
            "true`); off, or for a model exported without validation images, they are the plain softmax"
        },
    )
    max_batch_size: int = field(
        default=32, metadata={"help": "adaptive batching: most images per ONNX Runtime call (at least 2)"}
    )
    max_latency_ms: int = field(
        default=10_000,
        metadata={
            "help": "adaptive batching: latency budget; BentoML answers 503 when it cannot be met. 10 s suits a "
            "CPU box, where a second of queued work is normal at concurrency 16 (load-test sweep); lower it on a GPU"
        },
    )
    max_upload_bytes: int = field(
        default=10 * 1024 * 1024, metadata={"help": "whole request body (10 MiB), refused from Content-Length"}
    )
    max_pixels: int = field(
        default=MAX_PIXELS, metadata={"help": "pixels per image, checked before decoding (decompression bombs)"}
    )
    max_images: int = field(
        default=16,
        metadata={
            "help": "images per /classify request, at most `max_batch_size`; with tta=8 each image counts as its "
            "8 views, so a request may carry `max_images` // 8 images"
        },
    )
    max_concurrency: int = field(
        default=64, metadata={"help": "in-flight requests per API worker before 429 + Retry-After"}
    )
    timeout_s: int = field(default=30, metadata={"help": "BentoML traffic timeout per request"})
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds on 429 and 503"})
    workers: int = field(default=1, metadata={"help": "API (decode + preprocess) worker processes"})
    inference_workers: int = field(default=1, metadata={"help": "ONNX Runtime worker processes"})
    store_size: int = field(default=10_000, metadata={"help": "recent predictions kept for /feedback"})
    store_dir: str = field(
        default="",
        metadata={
            "help": "sqlite prediction store folder; empty: the server's Prometheus multiprocess folder (shared "
            "by the API workers), else a new folder in the system temp dir"
        },
    )
    max_decoded_bytes: int = field(
        default=MAX_DECODED_BYTES,
        metadata={
            "help": "decoded size of one image (pixels x planes x bytes per sample, 256 MiB), checked from its "
            "header before decoding; larger is 413 `too_large`"
        },
    )
    decode_threads: int = field(
        default=2,
        metadata={
            "help": "decoding threads per API worker; further images wait in line for them (a request that times "
            "out drops its waiting images), so decoding memory stays near `decode_threads` x `max_decoded_bytes`"
        },
    )
    body_timeout_s: int = field(
        default=10,
        metadata={
            "help": "an upload must start within this many seconds of its headers and then keep up "
            "`min_upload_rate`, else 408 `body_timeout`; a request counts toward `max_concurrency` only once its "
            "body is in"
        },
    )
    min_upload_rate: int = field(
        default=1024, metadata={"help": "bytes/s an upload must average after its first `body_timeout_s` seconds"}
    )
    upload_buffer_bytes: int = field(
        default=MAX_DECODED_BYTES,
        metadata={
            "help": "request-body bytes one API worker holds while they are still arriving (256 MiB); a chunk "
            "beyond is 429 `overloaded`. At least `max_upload_bytes`"
        },
    )
    header_timeout_s: int = field(
        default=30,
        metadata={"help": "a connection must send a request's headers within this many seconds, else it is closed"},
    )
    max_header_bytes: int = field(
        default=16 * 1024, metadata={"help": "request line and headers (16 KiB); larger is 431 `header_too_large`"}
    )
    max_connections: int = field(
        default=1000,
        metadata={
            "help": "open connections per API worker (at most the open-file limit less 100); beyond it the "
            "longest-idle connection is closed, or the new one when none is idle"
        },
    )
    api_keys_file: str = field(
        default="",
        metadata={
            "help": "file of API key SHA-256 hashes, one per line (`galaxyvit serve --hash-key`); when set, every "
            "endpoint but /livez, /readyz, /metrics and the web page /ui needs `Authorization: Bearer KEY`. "
            "Empty: no keys"
        },
    )
    protect_metrics: bool = field(default=False, metadata={"help": "with `api_keys_file`, /metrics needs a key too"})
    feedback_per_minute: int = field(
        default=60, metadata={"help": "with `api_keys_file`: /feedback requests per key and minute, per API worker"}
    )
    feedback_burst: int = field(
        default=20, metadata={"help": "with `api_keys_file`: /feedback requests a key may send at once"}
    )
    tracing: bool = field(
        default=False,
        metadata={
            "help": "pass every request through BentoML's OpenTelemetry middleware (set its exporter and "
            "`sample_rate` in BentoML's configuration). Off, requests skip it: BentoML samples none by default, "
            "and it took about a sixth of the API process's time per request (docs/performance.md)"
        },
    )
    expose_model_details: bool = field(
        default=False,
        metadata={"help": "show each model's training settings and confusion matrix in GET /models"},
    )


def _parse(value: str, kind: type) -> object:
    if kind is int:
        return int(value)
    if kind is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    if kind is bool:
        word = value.strip().lower()
        if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(value)
        return word in ("1", "true", "yes", "on")
    return value


def load_config(env: dict[str, str] | None = None) -> ServingConfig:
    """Defaults, then the TOML file's [serving] table, then GALAXYVIT_* environment variables."""
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    path = Path(env.get(CONFIG_ENV, "serving.toml"))
    if path.is_file():
        with open(path, "rb") as f:
            values.update(tomllib.load(f).get("serving", {}))
    elif CONFIG_ENV in env:
        raise FileNotFoundError(f"{CONFIG_ENV}={path} does not exist")
    kinds = {f.name: (list if f.name == "models" else type(f.default)) for f in fields(ServingConfig)}
    for name, kind in kinds.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            try:
                values[name] = _parse(raw, kind)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
    unknown = set(values) - set(kinds)
    if unknown:
        raise ValueError(f"unknown serving setting(s): {', '.join(sorted(unknown))}")
    config = ServingConfig(**values)  # type: ignore[arg-type]
    if config.max_batch_size < 2:
        raise ValueError("max_batch_size must be at least 2 (BentoML's batching requires it)")
    if config.max_images > config.max_batch_size:
        raise ValueError(f"max_images ({config.max_images}) must not exceed max_batch_size ({config.max_batch_size})")
    positive = ("decode_threads", "body_timeout_s", "min_upload_rate", "header_timeout_s", "max_header_bytes")
    for name in (*positive, "max_connections", "feedback_per_minute", "feedback_burst", "max_decoded_bytes"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if config.upload_buffer_bytes < config.max_upload_bytes:
        raise ValueError("upload_buffer_bytes must be at least max_upload_bytes")
    return config


TABLE_START = "<!-- settings table: generated from serving.config.ServingConfig; do not edit by hand -->"
TABLE_END = "<!-- end of settings table -->"


def _default_text(value: object) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value in ("", []):
        return "empty"
    return f"`{value}`"


def settings_markdown() -> str:
    """The settings as a markdown table: name, type, default, environment variable, description."""
    defaults = ServingConfig()
    lines = ["| setting | type | default | environment variable | description |", "| --- | --- | --- | --- | --- |"]
    for setting in fields(ServingConfig):
        default = _default_text(getattr(defaults, setting.name))
        description = setting.metadata["help"].replace("|", "\\|")
        variable = ENV_PREFIX + setting.name.upper()
        lines.append(f"| `{setting.name}` | `{setting.type}` | {default} | `{variable}` | {description} |")
    return "\n".join(lines) + "\n"


def with_settings_table(doc: str) -> str:
    """`doc` with the text between TABLE_START and TABLE_END replaced by the current settings table."""
    start, end = doc.index(TABLE_START) + len(TABLE_START), doc.index(TABLE_END)
    return doc[:start] + "\n" + settings_markdown() + doc[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.config", description="Document the serving settings.")
    parser.add_argument("--markdown", action="store_true", help="print the settings as a markdown table")
    parser.add_argument("--write", type=Path, metavar="DOC", help="regenerate the table between the markers of DOC")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(with_settings_table(args.write.read_text()))
    if args.markdown or not args.write:
        print(settings_markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
