"""What a request brings: its images decoded to evaluation crops, and the `tta` and `format` parameters.
(Its body arrives within the size limit through serving/admission.py.)"""

from __future__ import annotations

import numpy as np

from galaxyvit.preprocess import Preprocessing, eval_crop
from galaxyvit.tta import N_VIEWS
from inference.decode import decode_image
from serving.config import ServingConfig
from serving.errors import ServiceError

TTA_CHOICES = (1, N_VIEWS)
EXPLAIN_FORMATS = ("json", "png")


def decode_crop(data: bytes, prep: Preprocessing, config: ServingConfig) -> np.ndarray:
    """One upload -> its (size, size, 3) uint8 evaluation crop, within the decoding limits of `config`."""
    return eval_crop(decode_image(data, config.max_pixels, config.max_decoded_bytes, crop=prep.crop), prep)


def parse_tta(value: str | None) -> int:
    """The `tta` field or parameter: absent or 1 (one view) or 8 (the 8 dihedral views); else a 400 `bad_tta`."""
    text = (value or "1").strip()
    if text not in {str(n) for n in TTA_CHOICES}:
        raise ServiceError("bad_tta", 400, f"tta must be 1 or {N_VIEWS}, not {value!r}")
    return int(text)


def check_image_count(images: int, tta: int, config: ServingConfig) -> None:
    """Each view counts as an image against `max_images`: with tta=8 a request may carry max_images // 8."""
    if images * tta > config.max_images:
        views = f" x {tta} views = {images * tta}" if tta > 1 else ""
        raise ServiceError(
            "too_many_images", 413, f"{images} images{views} in one request exceed the limit of {config.max_images}"
        )


def parse_format(value: str | None) -> str:
    """POST /explain's `format`: json (default) or png; else a 400 `bad_format`."""
    text = (value or "json").strip().lower()
    if text not in EXPLAIN_FORMATS:
        raise ServiceError("bad_format", 400, f"format must be json or png, not {value!r}")
    return text
