"""Datasets for training and evaluation: GZ2 split files + JPEGs, any class list, or built-in synthetic galaxies.

All three kinds share one on-disk form: `<split>.csv` files with a `galaxyID` column and a label
column (`label1` for GZ2, class index 0..K-1) plus a folder of `<galaxyID>.jpg` images.

- `gz2`: `--dataset DIR` (DIR/gz2_{train,valid,test}.csv + DIR/images/) or `--splits DIR --images DIR`.
- `folder`: `--dataset DIR` with `{train,valid,test}.csv` (or `gz2_*.csv`), `images/`, and the class
  names in `classes.json` (a JSON list) or `classes.toml` (`classes = [...]`), or `--classes FILE`.
- `synthetic` (default): `training.synthetic.write_dataset` writes data/synthetic-<n>-<seed>/ once
  (cached), then it is read like `gz2`.

Bad rows in a CSV stop the run with the file and line; missing or empty image files are dropped
when the split is read, and unreadable or truncated JPEGs are skipped when loaded (the trainer
reports each bad id once).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.preprocess import Preprocessing, eval_array
from training.transforms import sample_rng, train_array

KINDS = ("synthetic", "gz2", "folder")
SPLITS = ("train", "valid", "test")
ID_COLUMN = "galaxyID"
LABEL_COLUMNS = ("label1", "label")
SHOW_IDS = 5  # how many bad ids a report names


class DataError(ValueError):
    """Bad dataset input: a malformed CSV line, an unknown label, a missing folder."""


@dataclass
class DataConfig:
    """Where the data comes from (the `--data/--dataset/--splits/--images/--classes/--limit` options)."""

    kind: str = "synthetic"
    dataset: str | None = None
    splits: str | None = None
    images: str | None = None
    classes: str | None = None
    limit: int | None = None
    synth_n: int = 3000
    synth_seed: int = 0
    cache_root: str = "data"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Split:
    """One split: parallel lists of image ids and labels, and the folder that holds `<id>.jpg`."""

    name: str
    csv_path: Path
    images_dir: Path
    ids: list[str]
    labels: list[int]
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / f"{self.ids[index]}.jpg"

    def label_counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()


@dataclass
class Data:
    kind: str
    path: Path
    class_names: tuple[str, ...]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            **{f"n_{name}": len(split) for name, split in self.splits.items()},
        }


def read_split_csv(path: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """Ids and labels of a split CSV; any bad line is an error that names the file and the line."""
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    ids: list[str] = []
    labels: list[int] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}:1: empty file (expected a header with {ID_COLUMN} and label1)")
        header = [h.strip() for h in header]
        if ID_COLUMN not in header:
            raise DataError(f"{path}:1: header has no {ID_COLUMN!r} column: {header}")
        label_column = next((c for c in LABEL_COLUMNS if c in header), None)
        if label_column is None:
            raise DataError(f"{path}:1: header has no label column ({' or '.join(LABEL_COLUMNS)}): {header}")
        id_at, label_at = header.index(ID_COLUMN), header.index(label_column)
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}: {','.join(row)!r}")
            galaxy_id, label_text = row[id_at].strip(), row[label_at].strip()
            if not galaxy_id or "/" in galaxy_id or galaxy_id.startswith("."):
                raise DataError(f"{path}:{line}: bad {ID_COLUMN} {galaxy_id!r}")
            try:
                label = int(label_text)
            except ValueError:
                raise DataError(f"{path}:{line}: {label_column} {label_text!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{path}:{line}: {label_column} {label} is outside 0..{num_classes - 1}")
            ids.append(galaxy_id)
            labels.append(label)
    return ids, labels


def load_class_names(path: Path) -> tuple[str, ...]:
    """A JSON list of names, or a TOML/JSON table with a `classes` list."""
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"class list {path}: {exc}") from None
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"class list {path}: expected a list of at least 2 class names (or classes = [...])")
    if len(set(names)) != len(names):
        raise DataError(f"class list {path}: duplicate class names")
    return tuple(names)


def _split_csv(folder: Path, split: str) -> Path:
    for name in (f"gz2_{split}.csv", f"{split}.csv"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no split file for {split!r} in {folder} (expected gz2_{split}.csv or {split}.csv)")


def read_splits(
    splits_dir: Path, images_dir: Path, class_names: Sequence[str], limit: int | None = None, quiet: bool = False
) -> dict[str, Split]:
    """Read the three split CSVs; drop rows whose image file is missing or empty (one report for all)."""
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    present = {entry.name for entry in os.scandir(images_dir) if entry.is_file() and entry.stat().st_size > 0}
    splits: dict[str, Split] = {}
    for name in SPLITS:
        csv_path = _split_csv(splits_dir, name)
        ids, labels = read_split_csv(csv_path, len(class_names))
        keep = [i for i, galaxy_id in enumerate(ids) if f"{galaxy_id}.jpg" in present]
        missing = [ids[i] for i in sorted(set(range(len(ids))) - set(keep))]
        if limit is not None:
            keep = keep[:limit]
        splits[name] = Split(name, csv_path, images_dir, [ids[i] for i in keep], [labels[i] for i in keep], missing)
        if not splits[name].ids:
            raise DataError(f"split {name!r} ({csv_path}) has no usable images in {images_dir}")
    missing_all = [(name, galaxy_id) for name, s in splits.items() for galaxy_id in s.missing]
    if missing_all and not quiet:
        first = ", ".join(galaxy_id for _, galaxy_id in missing_all[:SHOW_IDS])
        print(
            f"warning: {len(missing_all)} images missing or empty in {images_dir}, skipped (first ids: {first})",
            file=sys.stderr,
        )
    return splits


def synthetic_dir(cfg: DataConfig) -> Path:
    return Path(cfg.dataset) if cfg.dataset else Path(cfg.cache_root) / f"synthetic-{cfg.synth_n}-{cfg.synth_seed}"


def ensure_synthetic(cfg: DataConfig, progress: bool = True) -> Path:
    """The cached synthetic dataset, written (into a temp folder, then renamed) if it is not there yet."""
    out = synthetic_dir(cfg)
    if (out / "gz2_test.csv").is_file() and (out / "images").is_dir():
        return out
    from training.synthetic import write_dataset

    tmp = out.with_name(f".{out.name}.partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"writing synthetic dataset ({cfg.synth_n} images, seed {cfg.synth_seed}) to {out}", file=sys.stderr)
    write_dataset(tmp, cfg.synth_n, seed=cfg.synth_seed, progress=progress)
    if out.exists():  # another process won the race, or a stale partial folder
        if (out / "gz2_test.csv").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_data(cfg: DataConfig, quiet: bool = False, progress: bool = True) -> Data:
    """Resolve a DataConfig into class names and the three splits."""
    if cfg.kind not in KINDS:
        raise DataError(f"unknown data kind {cfg.kind!r}: choose one of {', '.join(KINDS)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise DataError(f"--limit must be at least 1, got {cfg.limit}")
    class_names: tuple[str, ...] = CLASS_NAMES
    if cfg.kind == "synthetic":
        root = ensure_synthetic(cfg, progress=progress and not quiet)
        splits_dir, images_dir = root, root / "images"
    elif cfg.kind == "gz2":
        if cfg.splits or cfg.images:
            if not (cfg.splits and cfg.images):
                raise DataError("--data gz2 needs both --splits DIR and --images DIR (or --dataset DIR)")
            splits_dir, images_dir = Path(cfg.splits), Path(cfg.images)
        elif cfg.dataset:
            splits_dir, images_dir = Path(cfg.dataset), Path(cfg.dataset) / "images"
        else:
            raise DataError("--data gz2 needs --dataset DIR or --splits DIR --images DIR")
        root = splits_dir
    else:  # folder
        if not cfg.dataset:
            raise DataError("--data folder needs --dataset DIR")
        root = Path(cfg.dataset)
        splits_dir, images_dir = root, Path(cfg.images) if cfg.images else root / "images"
        classes = (
            Path(cfg.classes)
            if cfg.classes
            else next((root / n for n in ("classes.json", "classes.toml") if (root / n).is_file()), None)
        )
        if classes is None:
            raise DataError(f"--data folder needs the class names: {root}/classes.json, classes.toml or --classes")
        class_names = load_class_names(classes)
    if not splits_dir.is_dir():
        raise DataError(f"split folder {splits_dir} does not exist")
    splits = read_splits(splits_dir, images_dir, class_names, cfg.limit, quiet=quiet)
    return Data(cfg.kind, root, class_names, splits)


class ImageDataset(torch.utils.data.Dataset):
    """Items (image tensor or None if unreadable, label, index). Train mode augments with a per-sample generator."""

    def __init__(self, split: Split, prep: Preprocessing, train: bool = False, seed: int = 0):
        self.split = split
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
            array = train_array(image, self.prep, sample_rng(self.seed, self.epoch, index))
        else:
            array = eval_array(image, self.prep)
        return torch.from_numpy(array), label, index


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    bad: list[int]  # dataset indices of unreadable images left out of this batch

    def pin_memory(self) -> Batch:
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory(), self.bad)


def collate(items) -> Batch:
    """Stack the readable items; remember the unreadable ones so the trainer can report them."""
    good = [item for item in items if item[0] is not None]
    bad = [item[2] for item in items if item[0] is None]
    if good:
        images = torch.stack([item[0] for item in good])
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
