"""Where the data comes from: GZ2 split files + JPEGs, any class list, or built-in synthetic galaxies.

All three kinds share one on-disk form: one CSV per split with a `galaxyID` column and a label
column (`label1` for GZ2, class index 0..K-1) plus a folder of `<galaxyID>.jpg` images.

- `gz2`: `--images DIR` alone (the study's split files packaged in data/gz2_splits/ are used),
  `--splits DIR --images DIR`, or `--dataset DIR` (DIR/gz2_{train,valid,test}.csv + DIR/images/).
- `folder`: `--dataset DIR` with `{train,valid,test}.csv` (or `gz2_*.csv`), `images/`, and the class
  names in `classes.json` (a JSON list) or `classes.toml` (`classes = [...]`), or `--classes FILE`.
- `synthetic` (default): `training.synthetic.write_dataset` writes data/synthetic-<n>-<seed>/ once
  (cached), then it is read like `gz2`.
- `--split-pattern` names the split files of `gz2`/`folder` data, e.g. "{split}.csv" or
  "galaxies_{split}.csv" (default: gz2_{split}.csv, else {split}.csv).

Bad rows in a CSV stop the run with the file and line; missing or empty image files are dropped
when the split is read. Reading the images for torch is training/loader.py's job. The command-line
options of all this are `add_data_arguments` / `data_config` (train, evaluate, prepare, reproduce).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import GZ2_SPLITS

KINDS = ("synthetic", "gz2", "folder")
SPLITS = ("train", "valid", "test")
DEFAULT_PATTERNS = ("gz2_{split}.csv", "{split}.csv")  # tried in this order when no --split-pattern is given
ID_COLUMN = "galaxyID"
LABEL_COLUMNS = ("label1", "label")
SHOW_IDS = 5  # how many bad ids a report names


class DataError(ValueError):
    """Bad dataset input: a malformed CSV line, an unknown label, a missing folder."""


@dataclass
class DataConfig:
    """Where the data comes from: the --data, --dataset, --splits, --images, --classes, --split-pattern, --limit."""

    kind: str = "synthetic"
    dataset: str | None = None
    splits: str | None = None
    images: str | None = None
    classes: str | None = None
    split_pattern: str | None = None
    limit: int | None = None
    synth_n: int = 3000
    synth_seed: int = 0
    cache_root: str = "data"
    prepared: str = "auto"  # prepared crops: "auto" (the default folder when current), "off", or a folder

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def add_data_arguments(parser: argparse.ArgumentParser, title: str = "data", prepared: bool = True) -> None:
    """The data options of every command that reads a dataset (`prepared=False`: no --prepared, for `prepare`)."""
    g = parser.add_argument_group(title)
    g.add_argument("--data", choices=KINDS, default="synthetic", help="dataset kind (default: synthetic)")
    g.add_argument("--dataset", help="dataset folder (split CSVs + images/); for synthetic: where to cache it")
    g.add_argument("--images", help="gz2: folder with <galaxyID>.jpg (the study's packaged split files are used)")
    g.add_argument("--splits", help="gz2: folder with other split files than the study's packaged ones")
    g.add_argument(
        "--split-pattern",
        help="gz2/folder: split file names, {split} = train, valid, test (default: gz2_{split}.csv, else {split}.csv)",
    )
    g.add_argument("--classes", help="folder: class names file (JSON list or TOML classes = [...])")
    g.add_argument("--limit", type=int, help="use at most N images of each split")
    if prepared:
        g.add_argument(
            "--prepared",
            default="auto",
            help="prepared crops (galaxyvit prepare): auto (the default folder when current), off, or a folder",
        )
    g.add_argument("--synth-n", type=int, default=3000, help="synthetic: number of images (default 3000)")
    g.add_argument("--synth-seed", type=int, default=0, help="synthetic: generator seed (default 0)")


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of the options `add_data_arguments` added."""
    return DataConfig(
        kind=args.data,
        dataset=args.dataset,
        splits=args.splits,
        images=args.images,
        classes=args.classes,
        split_pattern=args.split_pattern,
        limit=args.limit,
        prepared=getattr(args, "prepared", "auto"),
        synth_n=args.synth_n,
        synth_seed=args.synth_seed,
    )


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


class DataSummary(TypedDict):
    """Where a run's data came from, as metrics.json records it."""

    kind: str
    path: str
    n_train: int
    n_valid: int
    n_test: int


@dataclass
class Data:
    kind: str
    path: Path
    class_names: tuple[str, ...]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_study_gz2(self) -> bool:
        """GZ2 data on the study's 8 classes: only then do its figures compare with the study's."""
        return self.kind == "gz2" and self.class_names == CLASS_NAMES

    def summary(self) -> DataSummary:
        return DataSummary(
            kind=self.kind,
            path=str(self.path),
            n_train=len(self.splits["train"]),
            n_valid=len(self.splits["valid"]),
            n_test=len(self.splits["test"]),
        )


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


def split_file(folder: Path, split: str, pattern: str | None = None) -> Path:
    """The CSV of `split` in `folder`: named by `pattern` ("{split}.csv"), else gz2_{split}.csv or {split}.csv."""
    patterns = (pattern,) if pattern else DEFAULT_PATTERNS
    names = []
    for p in patterns:
        try:
            names.append(p.format(split=split))
        except (KeyError, IndexError, ValueError):
            raise DataError(f"split pattern {p!r}: use {{split}} for the split name, e.g. '{{split}}.csv'") from None
        if "{split}" not in p or "/" in names[-1]:
            raise DataError(f"split pattern {p!r} must contain {{split}} and name a file, e.g. 'gz2_{{split}}.csv'")
        if (folder / names[-1]).is_file():
            return folder / names[-1]
    raise DataError(f"no split file for {split!r} in {folder} (expected {' or '.join(names)})")


def present_images(images_dir: Path) -> set[str]:
    """File names of the non-empty files in an image folder (one directory scan)."""
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    return {entry.name for entry in os.scandir(images_dir) if entry.is_file() and entry.stat().st_size > 0}


def read_splits(
    splits_dir: Path,
    images_dir: Path,
    class_names: Sequence[str],
    limit: int | None = None,
    quiet: bool = False,
    pattern: str | None = None,
) -> dict[str, Split]:
    """Read the three split CSVs; drop rows whose image file is missing or empty (one report for all)."""
    present = present_images(images_dir)
    splits: dict[str, Split] = {}
    for name in SPLITS:
        csv_path = split_file(splits_dir, name, pattern)
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
        if cfg.images:  # the packaged split files of the study unless --splits names others
            splits_dir, images_dir = Path(cfg.splits) if cfg.splits else GZ2_SPLITS, Path(cfg.images)
        elif cfg.dataset and not cfg.splits:
            splits_dir, images_dir = Path(cfg.dataset), Path(cfg.dataset) / "images"
        else:
            raise DataError(
                "--data gz2 needs --images DIR (with the packaged split files, or --splits DIR) or --dataset DIR"
            )
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
    pattern = cfg.split_pattern if cfg.kind != "synthetic" else None  # synthetic data is written as gz2_*.csv
    splits = read_splits(splits_dir, images_dir, class_names, cfg.limit, quiet=quiet, pattern=pattern)
    return Data(cfg.kind, root, class_names, splits)
