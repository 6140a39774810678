"""Evaluation preprocessing shared by training, evaluation, export and serving (numpy + Pillow, no torch).

The study feeds models a CenterCrop(224) of the 424x424 SDSS cutout, scaled to [0, 1] and
normalised per channel. `eval_array` is that transform; serving calls the very same function.
Images smaller than the crop are zero-padded around the centre (black sky), exactly as
torchvision's CenterCrop does; if `size` differs from `crop` the crop is resized (bilinear).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

RGB = tuple[float, float, float]
STUDY_MEAN: RGB = (0.094, 0.0815, 0.063)
STUDY_STD: RGB = (0.1303, 0.11, 0.0913)
VITBASE_MEAN: RGB = (0.5, 0.5, 0.5)
VITBASE_STD: RGB = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: centre crop of `crop` pixels, resized to `size`, then (x - mean) / std."""

    crop: int = 224
    size: int = 224
    mean: tuple[float, float, float] = STUDY_MEAN
    std: tuple[float, float, float] = STUDY_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(crop=int(data["crop"]), size=int(data["size"]), mean=_rgb(data["mean"]), std=_rgb(data["std"]))


def _rgb(values: Any) -> tuple[float, float, float]:
    """One number per channel (R, G, B); anything else is a ValueError."""
    red, green, blue = (float(v) for v in values)
    return red, green, blue


# The normalisation of each model family (the study's): GZ2 statistics for the models trained from
# scratch, 0.5/0.5 for the pre-trained ViT-Base. training/families.py holds the rest of each family.
NORMALISATION: dict[str, tuple[RGB, RGB]] = {  # family -> (mean, std)
    "vit": (STUDY_MEAN, STUDY_STD),
    "linformer": (STUDY_MEAN, STUDY_STD),
    "vitbase": (VITBASE_MEAN, VITBASE_STD),
    "resnet50": (STUDY_MEAN, STUDY_STD),
}


def preprocessing_for(family: str, image_size: int = 224) -> Preprocessing:
    """What a model of `family` expects: the centre crop of its image size, the family's normalisation."""
    if family not in NORMALISATION:
        raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(NORMALISATION)}")
    mean, std = NORMALISATION[family]
    return Preprocessing(crop=image_size, size=image_size, mean=mean, std=std)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision.transforms.CenterCrop semantics: same offsets, zero padding when too small.

    The long sides are cropped before the short ones are padded (the same pixels as padding first),
    so a thin upload (1 x 4,000,000) never becomes a size x 4,000,000 canvas.
    """
    width, height = image.size
    left = int(round((width - size) / 2.0)) if width > size else 0
    top = int(round((height - size) / 2.0)) if height > size else 0
    image = image.crop((left, top, left + min(width, size), top + min(height, size)))
    if width < size or height < size:
        padded = Image.new(image.mode, (size, size))
        padded.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        image = padded
    return image


@lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """(3, 256) float32: every uint8 value of every channel through (v / 255 - mean) / std, in float32."""
    values = np.arange(256, dtype=np.float32)[None, :] / 255.0
    table = (values - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table


def normalize(rgb: np.ndarray, prep: Preprocessing, out: np.ndarray | None = None) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32: scaled to [0, 1] and normalised.

    Values are looked up in a per-channel table of (v / 255 - mean) / std computed in float32, so
    they are bit for bit that formula at a sixth of the cost (no float temporaries). `out`, when
    given, receives the result (e.g. one row of a preallocated batch).
    """
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"normalize takes (..., H, W, 3) uint8 arrays, not {rgb.dtype} {rgb.shape}")
    table = _lookup_table(prep.mean, prep.std)
    channels_first = np.moveaxis(rgb, -1, -3)
    if out is None:
        out = np.empty(channels_first.shape, np.float32)
    for c in range(3):
        np.take(table[c], channels_first[..., c, :, :], out=out[..., c, :, :], mode="wrap")
    return out


def denormalize(x: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(..., 3, H, W) float32 from `normalize` -> the (..., H, W, 3) uint8 values it was made of (exactly: the
    table's steps, 1 / (255 std), are far larger than float32's rounding)."""
    mean, std = np.asarray(prep.mean, np.float32)[:, None, None], np.asarray(prep.std, np.float32)[:, None, None]
    values = np.rint((np.asarray(x, np.float32) * std + mean) * 255.0)
    return np.moveaxis(np.clip(values, 0, 255).astype(np.uint8), -3, -1)


def eval_crop(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The evaluation transform before normalisation: RGB, centre crop, optional resize -> (size, size, 3) uint8."""
    image = center_crop(image if image.mode == "RGB" else image.convert("RGB"), prep.crop)
    if prep.size != prep.crop:
        image = image.resize((prep.size, prep.size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def eval_array(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The evaluation transform: RGB, centre crop, optional resize, normalise -> (3, size, size) float32."""
    return normalize(eval_crop(image, prep), prep)


def eval_batch(images: list[Image.Image], prep: Preprocessing) -> np.ndarray:
    """Stack `eval_array` of several images into an (N, 3, size, size) float32 batch."""
    return np.stack([eval_array(image, prep) for image in images])
