"""Prepared datasets: the crops are the decoded JPEGs' centre crops byte for byte, the items and the
training run they feed are the JPEG path's, and damaged or incomplete inputs are clear errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_galaxies import HEADER, write_tiny_dataset

from app.cli import main as cli_main
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import center_crop, preprocessing_for
from training.data import DataConfig, load_data
from training.loader import ImageDataset
from training.prepared import (
    PreparedDataset,
    PreparedError,
    PreparedSplit,
    dataset_for,
    find_prepared,
    open_split,
    prepare,
    prepared_data,
)
from training.registry import get_run

TINY = dict(depth=1, dim=32, heads=2, k=8, batch_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=24, n_valid=8, n_test=8)


@pytest.fixture(scope="module")
def tiny_prepared(tiny) -> Path:
    return prepare(DataConfig(kind="gz2", dataset=str(tiny)), workers=2, progress=False)


def decoded_crop(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(center_crop(image.convert("RGB"), 224))


def test_crops_equal_the_decoded_jpegs_byte_for_byte(tiny, tiny_prepared, tmp_path):
    assert tiny_prepared == tiny / "prepared-224" == find_prepared(DataConfig(kind="gz2", dataset=str(tiny)))
    data = prepared_data(tiny_prepared)
    jpeg = load_data(DataConfig(kind="gz2", dataset=str(tiny)), quiet=True)
    assert data.summary() == jpeg.summary() and data.class_names == jpeg.class_names
    for name, split in data.splits.items():
        assert split.ids == jpeg.splits[name].ids and split.labels == jpeg.splits[name].labels
        crops = split.crops()
        assert crops.dtype == np.uint8 and crops.shape == (len(split), 224, 224, 3)
        for i in range(len(split)):
            assert np.array_equal(crops[i], decoded_crop(jpeg.splits[name].image_path(i)))
    # Three real GZ2 cutouts through the gz2 path (--splits/--images need --out).
    ids = sorted(p.stem for p in REAL_SAMPLE_IMAGES.glob("*.jpg"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"gz2_{split}.csv").write_text(HEADER + "".join(f"{i},3,0,0,0\n" for i in ids))
    cfg = DataConfig(kind="gz2", splits=str(tmp_path), images=str(REAL_SAMPLE_IMAGES))
    with pytest.raises(PreparedError, match="needs --out"):
        prepare(cfg, progress=False)
    real = prepared_data(prepare(cfg, tmp_path / "real", progress=False)).splits["test"]
    for i, galaxy_id in enumerate(real.ids):
        assert np.array_equal(real.crops()[i], decoded_crop(REAL_SAMPLE_IMAGES / f"{galaxy_id}.jpg"))


@pytest.mark.parametrize("family", ["linformer", "vitbase"])
def test_items_equal_the_jpeg_dataset_for_the_same_seed_epoch_index(tiny, tiny_prepared, family):
    prep = preprocessing_for(family)
    jpeg = load_data(DataConfig(kind="gz2", dataset=str(tiny)), quiet=True).splits["train"]
    prepared = prepared_data(tiny_prepared).splits["train"]
    for train in (True, False):
        a, b = ImageDataset(jpeg, prep, train=train, seed=5), dataset_for(prepared, prep, train=train, seed=5)
        assert isinstance(b, PreparedDataset)
        for epoch in (0, 3):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            for i in range(len(a)):
                x, y = a[i], b[i]
                assert np.array_equal(x[0], y[0]) and x[1:] == y[1:]
            items = range(len(a))
            assert torch.equal(a.collate_fn([a[i] for i in items]).images, b.collate_fn([b[i] for i in items]).images)
    other = prepared_data(tiny_prepared).splits["train"]
    assert not np.array_equal(dataset_for(other, prep, train=True, seed=6)[0][0], b[0][0])  # the seed matters
    assert isinstance(dataset_for(jpeg, prep), ImageDataset)


def test_training_from_prepared_data_gives_the_jpeg_run(tiny, tiny_prepared, tmp_path):
    """The trainer reads the prepared crops when they are there (train, valid and test) and reproduces the
    JPEG run: same losses and accuracies every epoch, same test predictions."""
    from training.prepared import load_training_data
    from training.train import TrainOptions, train

    run = get_run("linformer-010522").with_overrides(**TINY)
    jpeg_cfg = DataConfig(kind="gz2", dataset=str(tiny), prepared="off")
    prepared_cfg = DataConfig(kind="gz2", dataset=str(tiny))  # "auto": the default folder, made by the fixture
    assert all(isinstance(s, PreparedSplit) for s in load_training_data(prepared_cfg, quiet=True).splits.values())
    assert not any(isinstance(s, PreparedSplit) for s in load_training_data(jpeg_cfg, quiet=True).splits.values())

    def options(name: str) -> TrainOptions:
        return TrainOptions(out=tmp_path / name, epochs=2, workers=0, threads=1, seed=3, deterministic=True,
                            results_file=None, progress=False)  # fmt: skip

    jpeg_out = train(run, jpeg_cfg, options("jpeg"))
    prepared_out = train(run, prepared_cfg, options("prepared"))

    def history(out):
        with open(out / "history.csv") as f:
            return [{k: v for k, v in row.items() if k not in ("images_per_s", "seconds")} for row in csv.DictReader(f)]

    assert history(jpeg_out) == history(prepared_out) and len(history(jpeg_out)) == 2
    assert (jpeg_out / "predictions.csv").read_text() == (prepared_out / "predictions.csv").read_text()


def test_damaged_incomplete_or_stale_data_are_clear_errors(tiny, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(tiny, root, ignore=shutil.ignore_patterns("prepared-*"))
    cfg = DataConfig(kind="gz2", dataset=str(root))
    assert cli_main(["prepare", "--data", "gz2", "--dataset", str(root), "--no-progress"]) == 0
    assert "prepared 24/8/8 train/valid/test images" in capsys.readouterr().out
    assert cli_main(["prepare", "--data", "gz2", "--dataset", str(root)]) == 0
    assert "already prepared" in capsys.readouterr().out
    folder = root / "prepared-224"
    with pytest.raises(PreparedError, match=r"unknown split 'tset': .* has train, valid, test"):
        open_split(folder, "tset")

    array = folder / "valid.images.npy"
    data = bytearray(array.read_bytes())
    data[-1] ^= 0xFF  # one pixel
    array.write_bytes(bytes(data))
    with pytest.raises(PreparedError, match=r"checksum mismatch for .*valid\.images\.npy"):
        prepared_data(folder)

    with open(root / "gz2_test.csv", "a") as f:
        f.write("1009,2,0,0,0\n")  # a row whose image exists: the source changed after preparing
    assert find_prepared(cfg) is None
    with pytest.raises(PreparedError, match=r"gz2_test\.csv changed since"):
        open_split(folder, "test")

    train_ids = [line.split(",")[0] for line in (root / "gz2_train.csv").read_text().splitlines()[1:]]
    (root / "images" / f"{train_ids[4]}.jpg").unlink()
    assert cli_main(["prepare", "--data", "gz2", "--dataset", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        f"1 images listed in the split files are missing or empty in {root / 'images'}: {train_ids[4]} (train)" in err
    )
    (root / "images" / f"{train_ids[5]}.jpg").write_bytes(b"not a jpeg")
    shutil.copy(root / "images" / f"{train_ids[6]}.jpg", root / "images" / f"{train_ids[4]}.jpg")
    with pytest.raises(PreparedError, match=rf"1 unreadable or truncated images in split 'train' .*{train_ids[5]}"):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))  # nothing half-written


def test_auto_uses_only_a_preparation_of_the_same_data(tiny, tiny_prepared, tmp_path, capsys):
    """`--prepared auto` takes <dataset>/prepared-224 only when it was made from the split files, kind and images
    the options name; `galaxyvit prepare` takes the data options of train (here --split-pattern)."""
    for name in ("train", "valid", "test"):
        shutil.copy(tiny / f"gz2_{name}.csv", tiny / f"other_{name}.csv")
    try:
        assert (
            find_prepared(DataConfig(kind="gz2", dataset=str(tiny), split_pattern="gz2_{split}.csv")) == tiny_prepared
        )
        assert find_prepared(DataConfig(kind="gz2", dataset=str(tiny), split_pattern="other_{split}.csv")) is None
        assert find_prepared(DataConfig(kind="folder", dataset=str(tiny))) is None
        assert find_prepared(DataConfig(kind="gz2", dataset=str(tiny), images=str(tiny / "images"))) is None
        args = ["prepare", "--data", "gz2", "--dataset", str(tiny), "--split-pattern", "other_{split}.csv"]
        assert cli_main([*args, "--out", str(tmp_path / "other"), "--no-progress"]) == 0
        assert "prepared 24/8/8 train/valid/test images" in capsys.readouterr().out
        other = prepared_data(tmp_path / "other")
        assert other.splits["test"].csv_path == (tiny / "other_test.csv").resolve()
    finally:
        for name in ("train", "valid", "test"):
            (tiny / f"other_{name}.csv").unlink()
