"""Serving settings: environment variables (GALAXYVIT_*) over an optional TOML file over defaults.

The service reads them at import time, because BentoML fixes the batching limits, traffic limits
and the models a bento carries when the service class is defined. Every setting can be given as
an environment variable (name in upper case with the GALAXYVIT_ prefix, e.g. GALAXYVIT_MAX_BATCH_SIZE=32)
or in the `[serving]` table of the TOML file named by GALAXYVIT_SERVING_CONFIG (default: serving.toml
in the working directory, if present).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "GALAXYVIT_"
CONFIG_ENV = "GALAXYVIT_SERVING_CONFIG"


@dataclass
class ServingConfig:
    """Everything the service lets an operator tune. Defaults suit a small CPU box."""

    models: list[str] = field(default_factory=list)  # served names; empty: every galaxyvit-* model in the store
    default_model: str = ""  # empty: the first of `models`
    variant: str = "fp32"  # which exported variant to load (fp32, int8, fp16)
    device: str = "auto"  # auto (CUDA when usable, else CPU), cuda, cpu
    intra_op_threads: int = 0  # ONNX Runtime threads per session; 0: CPU cores / inference workers
    # ONNX Runtime's threads busy-wait for work between operators and calls. Off by default: on a CPU box
    # they would burn the cores the API workers decode on (load test, linformer at concurrency 4: 24 -> 13
    # core-ms of the inference process per image, 64 -> 87 images/s). Turn on for an inference-only box.
    intra_op_spinning: bool = False
    max_batch_size: int = 32  # adaptive batching: most images per ONNX Runtime call
    # adaptive batching: latency budget; BentoML answers 503 when it cannot be met. 10 s suits a CPU box, where
    # a second of queued work is normal at concurrency 16 (load-test sweep); lower it on a GPU.
    max_latency_ms: int = 10_000
    max_upload_bytes: int = 10 * 1024 * 1024  # whole request body
    max_pixels: int = 4096 * 4096  # per image, checked before decoding (decompression bombs)
    max_images: int = 16  # images per /classify request
    max_concurrency: int = 64  # in-flight requests per API worker before 429 + Retry-After
    timeout_s: int = 30  # BentoML traffic timeout per request
    retry_after_s: int = 1  # Retry-After seconds on 429/503
    workers: int = 1  # API (decode + preprocess) worker processes
    inference_workers: int = 1  # ONNX Runtime worker processes
    store_size: int = 10_000  # recent predictions kept for /feedback
    store_dir: str = ""  # sqlite prediction store folder; empty: a folder in the system temp dir


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
    return config
