"""The study's training augmentation, in Pillow + numpy (no torchvision).

torchvision pipeline of the study, reproduced step by step:
    CenterCrop(224) -> RandomRotation(90) -> RandomHorizontalFlip -> RandomVerticalFlip
    -> RandomResizedCrop(224, scale=(0.8, 1.0), ratio=(0.99, 1.01)) -> ToTensor -> Normalize(mean, std)

Randomness comes from an explicit `numpy.random.Generator`, so the trainer can derive it from
(seed, epoch, sample index): the augmentation of every image is reproducible, independent of
DataLoader workers, and identical after a resume. The evaluation transform is
`galaxyvit.preprocess.eval_array` (shared with export and serving), re-exported here.

`augment` does the rotation and both flips in one Pillow pass (`Image.transform` with Pillow's own
16.16 fixed-point rotation coefficients, the flips folded in by integer arithmetic): pixel for pixel
`augment_stepwise`, the rotate / transpose / transpose / resize calls of the study's pipeline
(`tests/test_transforms.py` compares them), at one image copy instead of three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from galaxyvit.preprocess import Preprocessing, center_crop, eval_array, normalize

__all__ = [
    "AUGMENTS",
    "AugmentParams",
    "augment",
    "augment_stepwise",
    "draw_params",
    "eval_array",
    "random_resized_crop_box",
    "sample_rng",
    "sky_jitter",
    "train_array",
    "train_crop",
]

AUGMENTS = ("study", "sky")  # a run's `augment`: the study's geometry only, or also observing conditions
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


def pillow_rotation_matrix(angle: float, width: int, height: int) -> tuple[float, ...]:
    """(a, b, c, d, e, f) of `Image.rotate(angle)`: input (x, y) = (a X + b Y + c, d X + e Y + f) of output (X, Y)."""
    angle = -math.radians(angle % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy


def _fix(value: float) -> int:
    """Pillow's 16.16 fixed-point conversion of a matrix coefficient: FLOOR(v * 65536 + 0.5)."""
    return math.floor(value * 65536.0 + 0.5)


def fixed_point_rotation(angle: float, width: int, height: int) -> tuple[int, int, int, int, int, int]:
    """Pillow's nearest affine map of `rotate(angle)` in 16.16 fixed point, (ax, ay, ac, bx, by, bc): output pixel
    (X, Y) copies input pixel ((ac + X ax + Y ay) >> 16, (bc + X bx + Y by) >> 16), black when outside."""
    a, b, c, d, e, f = pillow_rotation_matrix(angle, width, height)
    return _fix(a), _fix(b), _fix(c + a * 0.5 + b * 0.5), _fix(d), _fix(e), _fix(f + d * 0.5 + e * 0.5)


def rotate_flip_matrix(params: AugmentParams, width: int, height: int) -> tuple[float, ...] | None:
    """An affine matrix for `Image.transform` that rotates as `rotate(angle)` does, then flips, pixel for pixel.

    A flip maps output X to W - 1 - X, so it folds into the fixed-point coefficients exactly; each
    coefficient is then a multiple of 2**-16 (exact in a double), which Pillow converts back to the
    same integers. None where Pillow's rotate takes another path: multiples of 90 degrees (copies and
    transposes) and angles whose sine is below 2**-17 (Pillow would take its scaling path).
    """
    if params.angle % 90.0 == 0:
        return None
    ax, ay, ac, bx, by, bc = fixed_point_rotation(params.angle, width, height)
    if params.hflip:
        ac, ax, bc, bx = ac + (width - 1) * ax, -ax, bc + (width - 1) * bx, -bx
    if params.vflip:
        ac, ay, bc, by = ac + (height - 1) * ay, -ay, bc + (height - 1) * by, -by
    if ay == 0 and bx == 0:
        return None
    s = 1.0 / 65536.0  # Pillow takes FIX(c + a / 2 + b / 2) for the offsets
    return ax * s, ay * s, ac * s - ax * s * 0.5 - ay * s * 0.5, bx * s, by * s, bc * s - bx * s * 0.5 - by * s * 0.5


def augment_stepwise(crop: Image.Image, params: AugmentParams, size: int) -> Image.Image:
    """The study's steps one Pillow call each: rotate (nearest, black fill: torchvision's defaults), flip, then crop
    the box and resize it (bilinear). The reference that `augment` equals."""
    image = crop.rotate(params.angle, resample=Image.NEAREST, fillcolor=(0, 0, 0))
    if params.hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if params.vflip:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    left, top, w, h = params.box
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def augment(crop: Image.Image, params: AugmentParams, size: int) -> Image.Image:
    """Rotate and flip in one pass, then crop the box and resize it (bilinear): `augment_stepwise`'s pixels."""
    matrix = rotate_flip_matrix(params, crop.width, crop.height)
    if matrix is None:
        return augment_stepwise(crop, params, size)
    image = crop.transform(crop.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=(0, 0, 0))
    left, top, w, h = params.box
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def sky_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other observing conditions for a (H, W, 3) uint8 display image: a wider PSF (Gaussian blur, sigma up to
    1.5 px in half of the images), per-band colour gain (about 8%), sky level (about 1.5 grey levels per band)
    and extra noise, read (up to 3 grey levels) plus Poisson-like (variance growing with the pixel value)."""
    out = Image.fromarray(image)
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    pixels = np.asarray(out, np.float32)
    gain = np.exp(rng.normal(0.0, 0.08, 3)).astype(np.float32)
    sky = rng.normal(0.0, 1.5, 3).astype(np.float32)
    read, poisson = float(rng.uniform(0.0, 3.0)), float(rng.uniform(0.0, 0.05))
    sigma = np.sqrt(read * read + poisson * pixels)
    pixels = pixels * gain + sky + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def train_crop(crop: Image.Image, prep: Preprocessing, rng: np.random.Generator, kind: str = "study") -> np.ndarray:
    """The augmented (size, size, 3) uint8 image of an RGB centre crop (already `prep.crop` pixels square):
    the study's rotation, flips and crop, then for `kind` "sky" `sky_jitter` (drawn after them, so the
    study's draws are the same either way)."""
    image = np.asarray(augment(crop, draw_params(rng, crop.width, crop.height), prep.size))
    return sky_jitter(image, rng) if kind == "sky" else image


def train_image(image: Image.Image, prep: Preprocessing, rng: np.random.Generator) -> Image.Image:
    """The augmented RGB crop of a whole image (before normalisation), `prep.size` pixels square."""
    crop = center_crop(image if image.mode == "RGB" else image.convert("RGB"), prep.crop)
    return augment(crop, draw_params(rng, crop.width, crop.height), prep.size)


def train_array(image: Image.Image, prep: Preprocessing, rng: np.random.Generator) -> np.ndarray:
    """The training transform: augmented crop, scaled to [0, 1], normalised -> (3, size, size) float32."""
    return normalize(np.asarray(train_image(image, prep, rng)), prep)
