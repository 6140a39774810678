"""The study's training augmentation for a whole batch of centre crops on the training device.

On a GPU the CPU loader is the ceiling (Pillow rotates and resizes every image, every epoch). Here
the loader only delivers the uint8 crops of a prepared dataset plus each sample's random parameters,
drawn by `training.transforms.draw_params` from the same (seed, epoch, index) generator as the CPU
path, and the device applies them per batch:

- rotation (nearest, black fill): Pillow's own output-to-input pixel map (`Image.rotate`'s matrix in
  its 16.16 fixed-point arithmetic), computed in integers and gathered: bit for bit Pillow's pixels;
- flips: exact;
- RandomResizedCrop: bilinear `affine_grid`/`grid_sample` (float64) in two passes, horizontal then
  vertical, each rounded to uint8 as Pillow resamples (border pixels clamp, like Pillow's edge weights);
- normalisation: the same float32 lookup table as `galaxyvit.preprocess.normalize`.

The result is within one grey level of the Pillow path for the same parameters (before normalisation):
Pillow's resize uses 22-bit fixed-point weights, so about 0.1% of the values differ by one; the rest,
and every rotated pixel, are identical (`tests/test_gpu_augment.py` measures it).

Trainer wiring (`--augment-device`, `batch_augment_for`): `DeviceAugmentDataset` (+ `collate_crops`) in the
DataLoader, then `BatchAugment` turns each `CropBatch` into the model's input: "cuda" augments on the CUDA
training device, "batch-cpu" runs the same batch path on the CPU (tests, measurements), "cpu" keeps the
per-image Pillow path in the loader. The default is cuda when training on CUDA, cpu otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from galaxyvit.preprocess import Preprocessing, center_crop, normalize
from training.data import Split
from training.loader import ImageDataset
from training.prepared import PreparedError, PreparedSplit, dataset_for
from training.transforms import AUGMENTS, AugmentParams, draw_params, fixed_point_rotation, sample_rng

PARAM_FIELDS = ("angle", "hflip", "vflip", "left", "top", "width", "height")


def params_tensor(params: Sequence[AugmentParams]) -> torch.Tensor:
    """(N, 7) float64: angle, hflip, vflip, left, top, width, height of each sample."""
    return torch.tensor([[p.angle, p.hflip, p.vflip, *p.box] for p in params], dtype=torch.float64)


def sample_params(seed: int, epoch: int, indices: Sequence[int], crop: int) -> torch.Tensor:
    """The parameters the CPU path would draw for these dataset indices in this epoch."""
    return params_tensor([draw_params(sample_rng(seed, epoch, i), crop, crop) for i in indices])


def rotation_sources(angles: Sequence[float], width: int, height: int, device: torch.device) -> torch.Tensor:
    """(N, H*W) int64: the input pixel (y * W + x) that Pillow's nearest rotation copies to each output pixel, -1 for
    the black fill. Pillow maps output to input pixels in 16.16 fixed point, stepping the coefficients along each
    row; the same integer arithmetic here picks exactly its pixels (a float64 affine grid differs at ~0.1% of them)."""
    ys = torch.arange(height, device=device, dtype=torch.int64).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.int64).view(1, 1, width)
    coeffs = [fixed_point_rotation(float(angle), width, height) for angle in angles]
    k = torch.tensor(coeffs, dtype=torch.int64, device=device).view(-1, 6, 1, 1)
    x_in = (k[:, 2] + ys * k[:, 1] + xs * k[:, 0]) >> 16  # arithmetic shift: floor, as in C
    y_in = (k[:, 5] + ys * k[:, 4] + xs * k[:, 3]) >> 16
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    return torch.where(inside, y_in * width + x_in, -1).view(len(coeffs), -1)


def rotate_nearest(images: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
    """Pillow's `rotate(angle, NEAREST, fillcolor=black)` of each (N, C, H, W) image, bit for bit."""
    n, c, h, w = images.shape
    sources = rotation_sources(angles, w, h, images.device)
    flat = images.reshape(n, c, h * w)
    picked = flat.gather(2, sources.clamp(min=0).unsqueeze(1).expand(n, c, h * w))
    return torch.where(sources.unsqueeze(1) >= 0, picked, torch.zeros_like(picked)).view(n, c, h, w)


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pillow's rounding of a resampled value: half up, clipped to 0..255 (kept as float)."""
    return torch.floor(x + 0.5).clamp_(0, 255)


def _resample_1d(x: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Bilinear resampling of each image's window [start, start + length) to `size` pixels along W (dim 3) or H (2)."""
    n, _, h, w = x.shape
    extent = w if dim == 3 else h
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    scale, shift = lengths / extent, (2 * starts + lengths) / extent - 1
    if dim == 3:
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1] = scale, shift, 1.0
        out_size = (n, x.shape[1], h, size)
    else:
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 1, 2] = 1.0, scale, shift
        out_size = (n, x.shape[1], size, w)
    grid = F.affine_grid(theta, out_size, align_corners=False)  # the other axis maps onto itself
    return _round_uint8(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))


def augment_crops(crops: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops + (N, 7) parameters -> (N, 3, size, size) uint8 augmented images."""
    if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"augment_crops takes (N, H, W, 3) uint8 crops, not {crops.dtype} {tuple(crops.shape)}")
    n = crops.shape[0]
    params = params.to(torch.float64).cpu()
    x = rotate_nearest(crops.permute(0, 3, 1, 2), params[:, 0].tolist()).to(torch.float64)
    hflip = params[:, 1].bool().to(x.device).view(n, 1, 1, 1)
    vflip = params[:, 2].bool().to(x.device).view(n, 1, 1, 1)
    x = torch.where(hflip, x.flip(3), x)
    x = torch.where(vflip, x.flip(2), x)
    box = params[:, 3:].to(x.device)
    x = _resample_1d(x, box[:, 0], box[:, 2], size, dim=3)  # Pillow: horizontal pass first
    x = _resample_1d(x, box[:, 1], box[:, 3], size, dim=2)
    return x.to(torch.uint8)


def normalize_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float32 (v / 255 - mean) / std, bit for bit the CPU path's lookup table."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3): every value
    table = torch.from_numpy(normalize(levels, prep)[:, 0]).to(images.device)  # (3, 256)
    offsets = (torch.arange(3, device=images.device) * 256).view(1, 3, 1, 1)
    return table.flatten()[images.long() + offsets]


def augment_batch(crops: torch.Tensor, params: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """The training transform of a batch on its device: what `train_array` gives each sample on the CPU."""
    return normalize_batch(augment_crops(crops, params, prep.size), prep)


AUGMENT_DEVICES = ("cpu", "cuda", "batch-cpu")


class DeviceAugmentDataset(torch.utils.data.Dataset):
    """Training items for augmentation per batch: (uint8 centre crop (crop, crop, 3) or None if unreadable, label,
    index, parameters (7,)). A prepared split's crops, or for JPEGs the CPU path's decoding and centre crop."""

    def __init__(self, split: Split, prep: Preprocessing | None = None, seed: int = 0):
        prep = prep or Preprocessing()
        if isinstance(split, PreparedSplit) and split.crop != prep.crop:
            raise PreparedError(f"the prepared crops are {split.crop} pixels, the preprocessing crops {prep.crop}")
        self.split, self.prep, self.seed, self.epoch = split, prep, seed, 0
        self.reader = ImageDataset(split, prep)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        if isinstance(self.split, PreparedSplit):
            crop = np.array(self.split.crops()[index])
        else:
            image = self.reader.load(index)
            crop = None if image is None else np.array(center_crop(image, self.prep.crop))
        params = sample_params(self.seed, self.epoch, [index], self.prep.crop)[0]
        return None if crop is None else torch.from_numpy(crop), self.split.labels[index], index, params

    @property
    def collate_fn(self):
        return collate_crops


@dataclass
class CropBatch:
    crops: torch.Tensor  # (N, H, W, 3) uint8
    params: torch.Tensor  # (N, 7) float64
    labels: torch.Tensor
    indices: torch.Tensor
    bad: list[int]  # dataset indices of unreadable images left out of this batch

    def pin_memory(self) -> CropBatch:
        return CropBatch(
            self.crops.pin_memory(), self.params, self.labels.pin_memory(), self.indices.pin_memory(), self.bad
        )


def collate_crops(items) -> CropBatch:
    good = [item for item in items if item[0] is not None]
    bad = [item[2] for item in items if item[0] is None]
    crops = torch.stack([item[0] for item in good]) if good else torch.empty(0, 0, 0, 3, dtype=torch.uint8)
    params = torch.stack([item[3] for item in good]) if good else torch.empty(0, 7, dtype=torch.float64)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return CropBatch(crops, params, labels, indices, bad)


@dataclass(frozen=True)
class BatchAugment:
    """Turns a `CropBatch` into the model's input on `target`: augmented and normalised on `device`."""

    prep: Preprocessing
    device: torch.device

    def __call__(self, batch: CropBatch, target: torch.device) -> torch.Tensor:
        if not len(batch.labels):
            return torch.zeros(0, 3, self.prep.size, self.prep.size, device=target)
        crops = batch.crops.to(self.device, non_blocking=True)
        return augment_batch(crops, batch.params, self.prep).to(target, non_blocking=True)


def batch_augment_for(name: str | None, device: torch.device, prep: Preprocessing) -> BatchAugment | None:
    """What `--augment-device NAME` means when training on `device`: None for "cpu" (per image, in the loader),
    else the per-batch augmentation. NAME None: cuda when training on CUDA, else cpu."""
    name = name or ("cuda" if device.type == "cuda" else "cpu")
    if name not in AUGMENT_DEVICES:
        raise ValueError(f"unknown augment device {name!r}: choose one of {', '.join(AUGMENT_DEVICES)}")
    if name == "cuda" and device.type != "cuda":
        raise ValueError(
            f"--augment-device cuda needs a CUDA training device, not {device}: use cpu (per image, in the loader) "
            "or batch-cpu (the per-batch augmentation run on the CPU)"
        )
    if name == "cpu":
        return None
    return BatchAugment(prep, device if name == "cuda" else torch.device("cpu"))


def training_set(split: Split, prep: Preprocessing, seed: int, augment: BatchAugment | None, kind: str = "study"):
    """The training dataset: un-augmented crops for a per-batch augmentation, else the per-image path, which
    also does the run's `augment = "sky"` (observing conditions, `training.transforms.sky_jitter`)."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}: one of {', '.join(AUGMENTS)}")
    if augment is not None:
        if kind != "study":
            raise ValueError(f"augment = {kind!r} runs on the per-image CPU path: train with --augment-device cpu")
        return DeviceAugmentDataset(split, prep, seed=seed)
    return dataset_for(split, prep, train=True, seed=seed, augment=kind)
