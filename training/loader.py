"""Images for torch: the dataset that reads and transforms one split's JPEGs, the batches, the
per-epoch sampler (deterministic and resumable), the DataLoader settings, and the bad-image report.

Items are the transformed uint8 images; the batch is normalised at once when it is collated
(`normalize_images`: the values of `galaxyvit.preprocess.normalize` bit for bit, without a float32
copy per image). Unreadable or truncated JPEGs are skipped when loaded; the trainer reports each
bad id once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image

from galaxyvit.preprocess import Preprocessing, center_crop, eval_crop
from training.data import SHOW_IDS, Split
from training.transforms import sample_rng, train_crop


class ImageDataset(torch.utils.data.Dataset):
    """Items ((size, size, 3) uint8 image, or None if unreadable; label; index); `collate_fn` normalises the batch.
    Train mode augments with a per-sample generator (`augment`: "study" or "sky", `training.transforms.AUGMENTS`)."""

    def __init__(self, split: Split, prep: Preprocessing, train: bool = False, seed: int = 0, augment: str = "study"):
        self.split = split
        self.augment = augment
        self.prep = prep
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def load(self, index: int) -> Image.Image | None:
        try:
            with Image.open(self.split.image_path(index)) as image:
                image.load()  # raises on truncated or corrupted files
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    def __getitem__(self, index: int):
        image = self.load(index)
        label = self.split.labels[index]
        if image is None:
            return None, label, index
        if self.train:
            rng = sample_rng(self.seed, self.epoch, index)
            array = train_crop(center_crop(image, self.prep.crop), self.prep, rng, self.augment)
        else:
            array = eval_crop(image, self.prep)
        return array, label, index

    @property
    def collate_fn(self) -> Callable[[list], Batch]:
        return partial(collate, prep=self.prep)


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    bad: list[int]  # dataset indices of unreadable images left out of this batch

    def pin_memory(self) -> Batch:
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory(), self.bad)


def normalize_images(images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 ((v / 255) - mean) / std.

    The same three float32 operations as `galaxyvit.preprocess.normalize`'s lookup table, each correctly
    rounded, so the same bits (tested for every value), at a third of its cost on a batch.
    """
    out = np.empty((images.shape[0], 3, *images.shape[1:3]), np.float32)
    np.divide(np.moveaxis(images, -1, 1), np.float32(255.0), out=out)  # uint8 -> float32 is exact
    out -= np.asarray(prep.mean, np.float32)[:, None, None]
    out /= np.asarray(prep.std, np.float32)[:, None, None]
    return torch.from_numpy(out)


def collate(items, prep: Preprocessing) -> Batch:
    """Stack and normalise the readable items; remember the unreadable ones so the trainer can report them."""
    good = [item for item in items if item[0] is not None]
    bad = [item[2] for item in items if item[0] is None]
    if good:
        images = normalize_images(np.stack([item[0] for item in good]), prep)
    else:
        images = torch.empty(0)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return Batch(images, labels, indices, bad)


class EpochSampler(torch.utils.data.Sampler[int]):
    """The shuffled order of one epoch, from a generator seeded by (seed, epoch) only, sharded over ranks.

    Like DistributedSampler (pad to a multiple of the world size, rank r takes every r-th index),
    plus `start`: skip the first `start` samples of this rank, which is how a mid-epoch resume
    picks up at the exact batch where it stopped.
    """

    def __init__(
        self, n: int, *, seed: int, epoch: int, shuffle: bool = True, rank: int = 0, world: int = 1, start: int = 0
    ):
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world, self.start = rank, world, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            total = -(-self.n // self.world) * self.world
            order = (order + order[: total - self.n])[self.rank : total : self.world]
        return order[self.start :]

    def __iter__(self):
        return iter(self.order())

    def __len__(self) -> int:
        return len(self.order())


class BadImages:
    """Unreadable images seen while loading: each id is reported once, with the first few ids."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}

    def add(self, split: Split, indices: Sequence[int]) -> list[str]:
        seen = self.seen.setdefault(split.name, set())
        new = [split.ids[i] for i in indices if split.ids[i] not in seen]
        seen.update(new)
        return new

    def report(self, split: Split, new: list[str]) -> None:
        if new:
            first = ", ".join(new[:SHOW_IDS])
            print(
                f"warning: {len(new)} unreadable or truncated images in split {split.name!r} skipped "
                f"({len(self.seen[split.name])} so far; first ids: {first})",
                file=sys.stderr,
            )

    def count(self) -> int:
        return sum(len(s) for s in self.seen.values())


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader workers decode JPEGs; the main process owns the cores for compute


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    sampler: Sequence[int] | torch.utils.data.Sampler[int],
    workers: int,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `sampler`'s indices, batched by the dataset's `collate_fn`; its iterator seeds come from a
    private generator, never the global RNG."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=dataset.collate_fn,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        generator=torch.Generator(),
    )
