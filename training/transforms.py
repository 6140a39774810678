"""The study's training augmentation, in Pillow + numpy (no torchvision).

torchvision pipeline of the study, reproduced step by step:
    CenterCrop(224) -> RandomRotation(90) -> RandomHorizontalFlip -> RandomVerticalFlip
    -> RandomResizedCrop(224, scale=(0.8, 1.0), ratio=(0.99, 1.01)) -> ToTensor -> Normalize(mean, std)

Randomness comes from an explicit `numpy.random.Generator`, so the trainer can derive it from
(seed, epoch, sample index): the augmentation of every image is reproducible, independent of
DataLoader workers, and identical after a resume. The evaluation transform is
`galaxyvit.preprocess.eval_array` (shared with export and serving), re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from galaxyvit.preprocess import Preprocessing, center_crop, eval_array, normalize

__all__ = [
    "AugmentParams",
    "augment",
    "draw_params",
    "eval_array",
    "random_resized_crop_box",
    "sample_rng",
    "train_array",
]

MAX_ROTATION = 90.0
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.99, 1.01)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch (no shared state between samples)."""
    return np.random.default_rng((int(seed), int(epoch), int(index)))


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (left, top, w, h), 10 tries then a centre fallback."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class AugmentParams:
    """The random choices of one training sample: rotation angle (degrees), flips, crop box (left, top, w, h)."""

    angle: float
    hflip: bool
    vflip: bool
    box: tuple[int, int, int, int]


def draw_params(rng: np.random.Generator, width: int, height: int) -> AugmentParams:
    """Draw the parameters in the pipeline's order (rotation, flips, crop): every augmentation path uses this."""
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    hflip = bool(rng.random() < 0.5)
    vflip = bool(rng.random() < 0.5)
    return AugmentParams(angle, hflip, vflip, random_resized_crop_box(width, height, rng))


def augment(crop: Image.Image, params: AugmentParams, size: int) -> Image.Image:
    """Rotate (nearest, black fill: torchvision's defaults), flip, then crop the box and resize it (bilinear)."""
    image = crop.rotate(params.angle, resample=Image.NEAREST, fillcolor=(0, 0, 0))
    if params.hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if params.vflip:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    left, top, w, h = params.box
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def train_image(image: Image.Image, prep: Preprocessing, rng: np.random.Generator) -> Image.Image:
    """The augmented RGB crop (before normalisation), `prep.size` pixels square."""
    crop = center_crop(image.convert("RGB"), prep.crop)
    return augment(crop, draw_params(rng, crop.width, crop.height), prep.size)


def train_array(image: Image.Image, prep: Preprocessing, rng: np.random.Generator) -> np.ndarray:
    """The training transform: augmented crop, scaled to [0, 1], normalised -> (3, size, size) float32."""
    return normalize(np.asarray(train_image(image, prep, rng)), prep)
