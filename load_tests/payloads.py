"""What the load test sends: an image pool (the real GZ2 samples plus synthetic galaxies, as JPEG bytes), their
evaluation crops and Open Inference Protocol bodies. Multipart bodies come from serving.client.multipart.

Kept apart from the locustfile so that the sweep, the engine yardstick and the tests use them
without importing Locust, whose import monkey-patches the whole process for gevent.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from galaxyvit.paths import REAL_SAMPLE_IMAGES

ROOT = Path(__file__).resolve().parents[1]
REAL_IMAGES = REAL_SAMPLE_IMAGES
N_SYNTHETIC = 13  # with the 3 real samples: a pool of 16 images, every class at least once


def request_name(model: str, protocol: str, images: int) -> str:
    """The name of a load-test user's requests in Locust's statistics (load_tests/locustfile.py)."""
    return f"{model or 'default'} {protocol}" + (f" x{images}" if images > 1 else "")


def default_protocol(images: int) -> str:
    """What a user posts when no protocol is named: /classify/raw for one image, multipart /classify for more."""
    return "raw" if images == 1 else "classify"


@lru_cache(maxsize=1)
def image_pool() -> tuple[bytes, ...]:
    """JPEG bytes, read or encoded once per process: the real samples , then synthetic ones."""
    import numpy as np
    from PIL import Image

    from training.synthetic import render_galaxy

    pool = [p.read_bytes() for p in sorted(REAL_IMAGES.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    for i in range(N_SYNTHETIC):
        buffer = io.BytesIO()
        Image.fromarray(render_galaxy(i % 8, rng)).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    return tuple(pool)


def crop_pool(preprocessing_json: str) -> tuple[bytes, ...]:
    """The pool's evaluation crops for a model's preprocessing (its card's `preprocessing`, as JSON): what an
    Open Inference Protocol client sends as `images`, each the raw (size, size, 3) uint8 bytes."""
    return _crop_pool(preprocessing_json)


@lru_cache(maxsize=4)
def _crop_pool(preprocessing_json: str) -> tuple[bytes, ...]:
    import json

    from PIL import Image

    from galaxyvit.preprocess import Preprocessing, eval_crop

    prep = Preprocessing.from_dict(json.loads(preprocessing_json))
    return tuple(eval_crop(Image.open(io.BytesIO(b)), prep).tobytes() for b in image_pool())


def oip_request(crops: list[bytes], size: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol infer body with `crops` as the UINT8 [N, size, size, 3] input `images`, and its
    headers: JSON data, or the binary tensor data extension (outputs as binary too)."""
    import json

    import numpy as np

    tensor: dict = {"name": "images", "datatype": "UINT8", "shape": [len(crops), size, size, 3]}
    if not binary:
        tensor["data"] = np.frombuffer(b"".join(crops), np.uint8).tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    data = b"".join(crops)
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + data, headers


def oip_labels(body: bytes, header_length: str | None) -> list[int]:
    """The `label` output of an Open Inference Protocol answer (JSON or binary)."""
    import json

    import numpy as np

    size = int(header_length) if header_length else len(body)
    answer, offset = json.loads(body[:size]), size
    for output in answer["outputs"]:
        n = (output.get("parameters") or {}).get("binary_data_size")
        if output["name"] == "label":
            return list(output["data"]) if n is None else np.frombuffer(body[offset : offset + n], "<i8").tolist()
        offset += n or 0
    raise ValueError("the answer has no `label` output")


@lru_cache(maxsize=8)
def oip_bodies(preprocessing_json: str, size: int, images: int, binary: bool) -> tuple[tuple[bytes, dict], ...]:
    """One ready infer request per image of the pool, each with `images` consecutive crops: built once, so that
    the Locust client spends its CPU on HTTP, not on JSON encoding."""
    crops = crop_pool(preprocessing_json)
    return tuple(
        oip_request([crops[(i + j) % len(crops)] for j in range(images)], size, binary) for i in range(len(crops))
    )
