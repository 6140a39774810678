"""Prepared datasets: the centre crop of every image decoded once into uint8 arrays, so training reads
pixels instead of decoding JPEGs every epoch (the study's first transform, CenterCrop(224) of the 424
cutout, throws away 72% of every decoded pixel).

  galaxyvit prepare --data synthetic --synth-n 3000                 # -> data/synthetic-3000-0/prepared-224
  galaxyvit prepare --data gz2 --images JPEGS --out /fast/gz2-224  # the study's splits (data/gz2_splits)
  galaxyvit prepare --data folder --dataset DIR --workers 4

Layout of OUT: `<split>.images.npy` (N, crop, crop, 3) uint8 (memory-mapped when read),
`<split>.labels.npy` (N,) int64, `<split>.ids.txt`, and `manifest.json` (written last) with the
sha256 of every array and of the source split files. Reading checks every checksum; a mismatch,
a missing image or an unknown split is an error. `PreparedDataset` yields exactly what
`training.loader.ImageDataset` yields (same crops, same augmentation for the same seed, epoch, index).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from galaxyvit.preprocess import Preprocessing, center_crop, eval_crop
from training.data import (
    SHOW_IDS,
    SPLITS,
    Data,
    DataConfig,
    DataError,
    Split,
    add_data_arguments,
    data_config,
    load_data,
    split_file,
    synthetic_dir,
)
from training.loader import ImageDataset
from training.transforms import sample_rng, train_crop

FORMAT = "galaxyvit-prepared-v1"
MANIFEST = "manifest.json"
CROP = 224  # the study's CenterCrop(224); every family's preprocessing crops 224 pixels
CHUNK = 64  # images per decoding task


class PreparedError(DataError):
    """A prepared dataset that is incomplete, damaged (checksum mismatch) or does not fit the request."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def default_out(cfg: DataConfig) -> Path | None:
    """Where `prepare` writes (and training looks) when no --out is given: beside the dataset's images."""
    if cfg.kind == "synthetic":
        return synthetic_dir(cfg) / f"prepared-{CROP}"
    if cfg.dataset and not cfg.splits and not (cfg.kind == "gz2" and cfg.images):
        return Path(cfg.dataset) / f"prepared-{CROP}"
    return None  # --splits/--images: the images may be read-only or shared, so --out is required


# ---------------------------------------------------------------- writing


def _decode_chunk(task: tuple[Split, Path, int, int, int]) -> list[int]:
    """Decode images start..stop of a split into the memory-mapped array; return the unreadable indices."""
    split, array_path, crop, start, stop = task
    array = np.load(array_path, mmap_mode="r+")
    reader = ImageDataset(split, Preprocessing(crop=crop, size=crop))  # the trainer's own decoding
    bad = []
    for i in range(start, stop):
        image = reader.load(i)
        if image is None:
            bad.append(i)
            continue
        array[i] = np.asarray(center_crop(image, crop))
    array.flush()
    return bad


def _write_split(split: Split, out: Path, crop: int, workers: int, progress: bool) -> dict:
    """Decode one split into out/<split>.*; return its manifest entry."""
    images = out / f"{split.name}.images.npy"
    array = np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=(len(split), crop, crop, 3))
    del array  # the workers write through their own maps
    tasks = [(split, images, crop, s, min(s + CHUNK, len(split))) for s in range(0, len(split), CHUNK)]
    bad: list[int] = []
    bar = tqdm(total=len(split), desc=f"prepare {split.name}", unit="img", disable=not progress)
    pool = Pool(workers) if workers > 1 else None
    try:
        for task, chunk_bad in zip(tasks, pool.imap(_decode_chunk, tasks) if pool else map(_decode_chunk, tasks)):
            bad += chunk_bad
            bar.update(task[4] - task[3])
    finally:
        if pool:
            pool.close()
            pool.join()
    bar.close()
    if bad:
        first = ", ".join(split.ids[i] for i in bad[:SHOW_IDS])
        raise PreparedError(f"{len(bad)} unreadable or truncated images in split {split.name!r} (first ids: {first})")
    np.save(out / f"{split.name}.labels.npy", np.asarray(split.labels, dtype=np.int64))
    (out / f"{split.name}.ids.txt").write_text("".join(f"{galaxy_id}\n" for galaxy_id in split.ids))
    files = {kind: f"{split.name}.{kind}.{ext}" for kind, ext in (("images", "npy"), ("labels", "npy"), ("ids", "txt"))}
    return {
        "n": len(split),
        "source_csv": str(split.csv_path.resolve()),
        "source_csv_sha256": sha256_file(split.csv_path),
        "images_dir": str(split.images_dir.resolve()),
        "files": {kind: {"name": name, "sha256": sha256_file(out / name)} for kind, name in files.items()},
    }


def prepare(cfg: DataConfig, out: Path | None = None, *, workers: int = 1, progress: bool = True) -> Path:
    """Decode the centre crop of every image of every split of `cfg` into `out` (atomically); return `out`.

    Every image listed in a split file must be present and readable (a partial copy would silently
    change the study's splits): missing ones are an error that names them.
    """
    out = Path(out) if out else default_out(cfg)
    if out is None:
        raise PreparedError("--data gz2 with --splits/--images needs --out DIR for the prepared data")
    data = load_data(cfg, quiet=True, progress=progress)
    missing = [(name, galaxy_id) for name, split in data.splits.items() for galaxy_id in split.missing]
    if missing:
        first = ", ".join(f"{galaxy_id} ({name})" for name, galaxy_id in missing[:SHOW_IDS])
        folder = next(iter(data.splits.values())).images_dir
        raise PreparedError(
            f"{len(missing)} images listed in the split files are missing or empty in {folder}: {first}"
        )
    tmp = out.with_name(f".{out.name}.partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        splits = {name: _write_split(split, tmp, CROP, workers, progress) for name, split in data.splits.items()}
        manifest = {
            "format": FORMAT,
            "crop": CROP,
            "kind": data.kind,
            "source": str(data.path),
            "class_names": list(data.class_names),
            "limit": cfg.limit,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "splits": splits,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------- reading


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PreparedError(f"{folder} is not a prepared dataset (no {MANIFEST}; run `galaxyvit prepare`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise PreparedError(f"{path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


@dataclass
class PreparedSplit(Split):
    """A split whose centre crops are in a uint8 array (opened lazily, memory-mapped, per process)."""

    array_path: Path | None = None
    crop: int = CROP

    def crops(self) -> np.ndarray:
        if getattr(self, "_array", None) is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:  # DataLoader workers open their own map
        return {k: v for k, v in self.__dict__.items() if k != "_array"}


def open_split(folder: Path, name: str, *, manifest: dict | None = None, verify: bool = True) -> PreparedSplit:
    """One split of a prepared dataset, checksums verified (sha256 of arrays, ids and the source split file)."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    if name not in manifest["splits"]:
        raise PreparedError(f"unknown split {name!r}: {folder} has {', '.join(manifest['splits'])}")
    entry = manifest["splits"][name]
    for kind, file in entry["files"].items():
        path = folder / file["name"]
        if not path.is_file():
            raise PreparedError(f"{path} is missing: the prepared dataset is incomplete; run `galaxyvit prepare` again")
        if verify and (digest := sha256_file(path)) != file["sha256"]:
            raise PreparedError(
                f"checksum mismatch for {path} ({kind}): sha256 {digest[:16]}..., the manifest says "
                f"{file['sha256'][:16]}...; the prepared data is damaged, run `galaxyvit prepare` again"
            )
    source = Path(entry["source_csv"])
    if verify and source.is_file() and sha256_file(source) != entry["source_csv_sha256"]:
        raise PreparedError(f"{source} changed since {folder} was prepared; run `galaxyvit prepare` again")
    ids = (folder / entry["files"]["ids"]["name"]).read_text().split()
    labels = np.load(folder / entry["files"]["labels"]["name"]).tolist()
    array_path = folder / entry["files"]["images"]["name"]
    shape = np.load(array_path, mmap_mode="r").shape
    if not len(ids) == len(labels) == shape[0] == entry["n"]:
        raise PreparedError(f"{folder}: split {name!r} has {len(ids)} ids, {len(labels)} labels, {shape[0]} images")
    return PreparedSplit(name, source, Path(entry["images_dir"]), ids, labels, [], array_path, manifest["crop"])


def prepared_data(folder: Path, *, limit: int | None = None, verify: bool = True) -> Data:
    """The same structure as `training.data.load_data` (kind, source path, class names, three splits),
    read from a prepared folder; `limit` keeps the first N images of each split, as `--limit` does."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    splits = {name: open_split(folder, name, manifest=manifest, verify=verify) for name in SPLITS}
    if limit is not None:
        for split in splits.values():
            split.ids, split.labels = split.ids[:limit], split.labels[:limit]
    return Data(manifest["kind"], Path(manifest["source"]), tuple(manifest["class_names"]), splits)


def find_prepared(cfg: DataConfig) -> Path | None:
    """The prepared folder of `cfg` at its default place, if there is one made from the same kind of data, split
    files (the ones `cfg` names, unchanged since) and image folder."""
    folder = default_out(cfg)
    if folder is None or not (folder / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    if manifest["limit"] not in (None, cfg.limit) or manifest["kind"] != cfg.kind:
        return None
    root, pattern = folder.parent, cfg.split_pattern if cfg.kind != "synthetic" else None
    images = (Path(cfg.images) if cfg.images else root / "images").resolve()
    for name, entry in manifest["splits"].items():
        source = Path(entry["source_csv"])
        try:
            named = split_file(root, name, pattern).resolve()
        except DataError:
            return None
        if source != named or Path(entry["images_dir"]) != images:
            return None
        if not source.is_file() or sha256_file(source) != entry["source_csv_sha256"]:
            return None
    return folder


def load_training_data(cfg: DataConfig, *, quiet: bool = False, progress: bool = True) -> Data:
    """What train and evaluate read: the prepared crops (`cfg.prepared`: "auto" uses the default folder when it
    was made from the same split files; a folder is used as given) or, without them, the JPEGs (`load_data`)."""
    folder = None if cfg.prepared == "off" else find_prepared(cfg) if cfg.prepared == "auto" else Path(cfg.prepared)
    if folder is None:
        return load_data(cfg, quiet=quiet, progress=progress)
    if not quiet:
        print(f"reading prepared crops from {folder} (no JPEG decoding)", file=sys.stderr)
    return prepared_data(folder, limit=cfg.limit)


class PreparedDataset(ImageDataset):
    """`ImageDataset` over a prepared split: the same items (uint8 image, label, index), no JPEG decoding."""

    def __init__(
        self, split: PreparedSplit, prep: Preprocessing, train: bool = False, seed: int = 0, augment: str = "study"
    ):
        if prep.crop != split.crop:
            raise PreparedError(
                f"the prepared crops are {split.crop} pixels, the model's preprocessing crops {prep.crop}"
            )
        super().__init__(split, prep, train=train, seed=seed, augment=augment)

    def __getitem__(self, index: int):
        crop, label = self.split.crops()[index], self.split.labels[index]  # a view of the read-only map
        if self.train:  # the centre crop of an image already `crop` pixels square is the image itself
            rng = sample_rng(self.seed, self.epoch, index)
            array = train_crop(Image.fromarray(crop), self.prep, rng, self.augment)
        elif self.prep.size == self.prep.crop:
            array = crop  # = eval_crop of the original image; collate copies it into the batch
        else:
            array = eval_crop(Image.fromarray(crop), self.prep)
        return array, label, index


def dataset_for(
    split: Split, prep: Preprocessing, train: bool = False, seed: int = 0, augment: str = "study"
) -> torch.utils.data.Dataset:
    """The dataset of a split: `PreparedDataset` for a prepared split, else `ImageDataset` (same signature)."""
    if isinstance(split, PreparedSplit):
        return PreparedDataset(split, prep, train=train, seed=seed, augment=augment)
    return ImageDataset(split, prep, train=train, seed=seed, augment=augment)


# ---------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, prepared=False)
    parser.add_argument("--out", type=Path, help="output folder (default: <dataset>/prepared-224)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (1)")
    parser.add_argument("--force", action="store_true", help="prepare again even if OUT is complete and current")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def is_current(folder: Path, cfg: DataConfig) -> bool:
    """Whether `folder` holds a complete, undamaged preparation of `cfg` (every checksum verified)."""
    try:
        manifest = read_manifest(folder)
        prepared_data(folder)
    except (PreparedError, OSError, ValueError):
        return False
    return manifest["kind"] == cfg.kind and manifest["limit"] == cfg.limit


def main(args: argparse.Namespace) -> int:
    cfg = data_config(args)
    try:
        out = args.out or default_out(cfg)
        if out is not None and not args.force and is_current(out, cfg):
            print(f"{out} is already prepared and its checksums match; --force prepares it again")
            return 0
        out = prepare(cfg, out, workers=args.workers, progress=not args.no_progress)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = read_manifest(out)
    counts = "/".join(str(s["n"]) for s in manifest["splits"].values())
    print(f"prepared {counts} train/valid/test images ({manifest['crop']}x{manifest['crop']} centre crops) -> {out}")
    return 0
