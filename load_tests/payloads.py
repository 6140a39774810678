"""What the load test sends: an image pool (the real GZ2 samples plus synthetic galaxies, as JPEG bytes).
Multipart bodies come from serving.client.multipart.

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
