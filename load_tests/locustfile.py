"""Locust users that post galaxy images to the galaxyvit service.

  locust -f load_tests/locustfile.py --host http://127.0.0.1:3000 --model vit --headless -u 8 -r 8 -t 30s

Each user posts images back to back (no think time), so the number of users is the concurrency.
The images are a pool of the real GZ2 sample images plus synthetic galaxies (training.synthetic),
read or encoded as JPEG once per process. `--model` (or GALAXYVIT_LOADTEST_MODEL) picks the served
model (empty: the service's default); `--images-per-request` (GALAXYVIT_LOADTEST_IMAGES) > 1 sends
multipart POST /classify requests with that many `images` fields instead of POST /classify/raw.
Requests are grouped per model in Locust's statistics (`name=`).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, events, task

from load_tests.payloads import image_pool
from serving.client import multipart

MODEL_ENV = "GALAXYVIT_LOADTEST_MODEL"
IMAGES_ENV = "GALAXYVIT_LOADTEST_IMAGES"


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--model", env_var=MODEL_ENV, default="", help="served model to load (empty: the service's default)"
    )
    parser.add_argument(
        "--images-per-request",
        env_var=IMAGES_ENV,
        type=int,
        default=1,
        help="1: POST /classify/raw with one image; more: multipart POST /classify with that many images",
    )


def _setting(environment, option: str, env: str, default: str) -> str:
    """A locust command-line option when run by `locust`, else the environment variable (Python API runs)."""
    value = getattr(environment.parsed_options, option, None) if environment.parsed_options else None
    return str(value) if value not in (None, "") else os.environ.get(env, default)


class GalaxyUser(FastHttpUser):
    """Posts one request after another: /classify/raw (1 image) or /classify (several images, multipart)."""

    wait_time = constant(0)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.model = _setting(self.environment, "model", MODEL_ENV, "")
        self.images = int(_setting(self.environment, "images_per_request", IMAGES_ENV, "1"))
        if self.images < 1:
            raise ValueError(f"images per request must be at least 1, not {self.images}")
        self.pool = image_pool()
        self.rng = random.Random()
        self.label = self.model or "default"

    @task
    def classify(self) -> None:
        if self.images == 1:
            path = "/classify/raw" + (f"?model={self.model}" if self.model else "")
            kwargs = {"data": self.rng.choice(self.pool), "headers": {"Content-Type": "image/jpeg"}}
            name = f"{self.label} /classify/raw"
        else:
            path = "/classify"
            body, content_type = multipart([self.rng.choice(self.pool) for _ in range(self.images)], self.model)
            kwargs = {"data": body, "headers": {"Content-Type": content_type}}
            name = f"{self.label} /classify x{self.images}"
        with self.client.post(path, name=name, catch_response=True, **kwargs) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            body = response.json()
            got = 1 if self.images == 1 else len(body.get("predictions", []))
            if got != self.images or (self.images == 1 and "label" not in body):
                response.failure(f"expected {self.images} prediction(s), got {str(body)[:200]}")
