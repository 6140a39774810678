"""Locust users that post galaxy images to the galaxyvit service, one user class per protocol.

  locust -f load_tests/locustfile.py --host http://127.0.0.1:3000 --model vit --headless -u 8 -r 8 -t 30s
  locust -f load_tests/locustfile.py --host http://127.0.0.1:3000 --protocol oip-binary --headless -u 8 -t 30s

Each user posts images back to back (no think time), so the number of users is the concurrency.
The images are a pool of the real GZ2 sample images plus synthetic galaxies (training.synthetic),
read or encoded as JPEG once per process. `--model` (or GALAXYVIT_LOADTEST_MODEL) picks the served
model (empty: the service's default); `--images-per-request` (GALAXYVIT_LOADTEST_IMAGES) sets the images of
each request; `--protocol` (GALAXYVIT_LOADTEST_PROTOCOL) what they post (PROTOCOLS; `galaxyvit loadtest
--protocols` sweeps several):

  classify    multipart POST /classify, `images` file fields (JPEG)
  raw         POST /classify/raw, the JPEG as the body (one image per request)
  oip-json    Open Inference Protocol POST /v2/models/NAME/infer, `images` UINT8 evaluation crops as JSON data
  oip-binary  the same with the binary tensor data extension (crops and outputs as raw bytes)
  oip-bytes   the same, binary, with `image_bytes` BYTES: the JPEG files, decoded by the service

Without a protocol named, a user posts to /classify/raw (1 image) or /classify (more). Requests are grouped
per model and protocol in Locust's statistics (`name=`, see `request_name`).
"""

from __future__ import annotations

import json
import os
import random
import struct

from locust import FastHttpUser, constant, events, task

from load_tests.payloads import default_protocol, image_pool, oip_bodies, oip_labels, request_name
from serving.client import multipart

MODEL_ENV = "GALAXYVIT_LOADTEST_MODEL"
IMAGES_ENV = "GALAXYVIT_LOADTEST_IMAGES"
PROTOCOL_ENV = "GALAXYVIT_LOADTEST_PROTOCOL"
Request = tuple[str, bytes, dict[str, str]]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--model", env_var=MODEL_ENV, default="", help="served model to load (empty: the service's default)"
    )
    parser.add_argument(
        "--images-per-request", env_var=IMAGES_ENV, type=int, default=1, help="images per request (default 1)"
    )
    parser.add_argument(
        "--protocol", env_var=PROTOCOL_ENV, default="", help="classify, raw, oip-json, oip-binary or oip-bytes"
    )


def _setting(environment, option: str, env: str, default: str) -> str:
    """A locust command-line option when run by `locust`, else the environment variable (Python API runs)."""
    value = getattr(environment.parsed_options, option, None) if environment.parsed_options else None
    return str(value) if value not in (None, "") else os.environ.get(env, default)


class Protocol:
    """What a user posts and how it reads the answer; one instance per user."""

    def __init__(self, user: GalaxyUser) -> None:
        self.user = user

    def request(self) -> Request:
        """(path, body, headers) of the next request."""
        raise NotImplementedError

    def labels(self, response) -> list[int]:
        """The predicted labels in a 200 answer."""
        raise NotImplementedError


class Classify(Protocol):
    def request(self) -> Request:
        user = self.user
        body, content_type = multipart([user.rng.choice(user.pool) for _ in range(user.images)], user.model)
        return "/classify", body, {"Content-Type": content_type}

    def labels(self, response) -> list[int]:
        return [p["label"] for p in response.json()["predictions"]]


class Raw(Protocol):
    def __init__(self, user: GalaxyUser) -> None:
        super().__init__(user)
        if user.images != 1:
            raise ValueError("/classify/raw takes one image per request")

    def request(self) -> Request:
        path = "/classify/raw" + (f"?model={self.user.model}" if self.user.model else "")
        return path, self.user.rng.choice(self.user.pool), {"Content-Type": "image/jpeg"}

    def labels(self, response) -> list[int]:
        return [response.json()["label"]]


class OipCrops(Protocol):
    """`images` UINT8 crops, prepared once per process (load_tests/payloads.py); binary or JSON."""

    binary = False

    def __init__(self, user: GalaxyUser) -> None:
        super().__init__(user)
        models = user.client.get("/models", name="setup /models").json()
        self.model = user.model or models["default"]
        card = next(m for m in models["models"] if m["name"] == self.model)
        prep = json.dumps(card["preprocessing"], sort_keys=True)
        self.bodies = oip_bodies(prep, int(card["preprocessing"]["size"]), user.images, self.binary)

    def request(self) -> Request:
        body, headers = self.user.rng.choice(self.bodies)
        return f"/v2/models/{self.model}/infer", body, headers

    def labels(self, response) -> list[int]:
        return oip_labels(response.content, response.headers.get("Inference-Header-Content-Length"))


class OipBinaryCrops(OipCrops):
    binary = True


class OipFiles(OipBinaryCrops):
    """`image_bytes`: the JPEG files as binary BYTES, decoded by the service."""

    def __init__(self, user: GalaxyUser) -> None:
        Protocol.__init__(self, user)
        self.model = user.model or user.client.get("/models", name="setup /models").json()["default"]

    def request(self) -> Request:
        files = [self.user.rng.choice(self.user.pool) for _ in range(self.user.images)]
        data = b"".join(struct.pack("<I", len(f)) + f for f in files)
        tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)]}
        tensor["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        return f"/v2/models/{self.model}/infer", header + data, headers


PROTOCOLS: dict[str, type[Protocol]] = {
    "classify": Classify,
    "raw": Raw,
    "oip-json": OipCrops,
    "oip-binary": OipBinaryCrops,
    "oip-bytes": OipFiles,
}


class GalaxyUser(FastHttpUser):
    """Posts one request after another in its protocol and checks that each answer has every image's label."""

    wait_time = constant(0)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.model = _setting(self.environment, "model", MODEL_ENV, "")
        self.images = int(_setting(self.environment, "images_per_request", IMAGES_ENV, "1"))
        if self.images < 1:
            raise ValueError(f"images per request must be at least 1, not {self.images}")
        name = _setting(self.environment, "protocol", PROTOCOL_ENV, "") or default_protocol(self.images)
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; protocols: {', '.join(PROTOCOLS)}")
        self.pool = image_pool()
        self.rng = random.Random()
        self.name = request_name(self.model, name, self.images)
        self.protocol = PROTOCOLS[name](self)

    @task
    def post(self) -> None:
        path, body, headers = self.protocol.request()
        with self.client.post(path, data=body, headers=headers, name=self.name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                got = len(self.protocol.labels(response))
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                response.failure(f"unreadable answer: {exc!r}")
                return
            if got != self.images:
                response.failure(f"expected {self.images} prediction(s), got {got}")
