"""Data loading: CSV errors name file and line, bad images are skipped and reported, transforms follow the study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_galaxies import HEADER, galaxy_image, write_three_class_folder, write_tiny_dataset

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import GZ2_SPLITS, REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import eval_array, preprocessing_for
from training.data import DataConfig, DataError, load_data, read_split_csv
from training.loader import BadImages, EpochSampler, ImageDataset
from training.transforms import random_resized_crop_box, sample_rng, train_array, train_image

PREP = preprocessing_for("linformer")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=16, n_valid=8, n_test=8)


def test_bad_label_names_file_and_line(tmp_path):
    csv_path = tmp_path / "gz2_train.csv"
    csv_path.write_text(HEADER + "1,0,0,0,0\n2,3,0,0,0\n3,8,0,0,0\n")
    with pytest.raises(DataError, match=r"gz2_train\.csv:4: label1 8 is outside 0\.\.7"):
        read_split_csv(csv_path, 8)
    csv_path.write_text(HEADER + "1,0,0,0,0\n2,-1,0,0,0\n")
    with pytest.raises(DataError, match=r"gz2_train\.csv:3: label1 -1 is outside"):
        read_split_csv(csv_path, 8)


def test_malformed_line_names_file_and_line(tmp_path):
    csv_path = tmp_path / "gz2_valid.csv"
    csv_path.write_text(HEADER + "1,0,0,0,0\n\n2,0,0\n")
    with pytest.raises(DataError, match=r"gz2_valid\.csv:4: expected 5 fields, got 3"):
        read_split_csv(csv_path, 8)
    csv_path.write_text(HEADER + "1,elliptical,0,0,0\n")
    with pytest.raises(DataError, match=r"gz2_valid\.csv:2: label1 'elliptical' is not an integer"):
        read_split_csv(csv_path, 8)
    csv_path.write_text("id,class\n1,0\n")
    with pytest.raises(DataError, match=r"gz2_valid\.csv:1: header has no 'galaxyID'"):
        read_split_csv(csv_path, 8)


def test_missing_and_truncated_images_are_counted_and_skipped(tiny, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(tiny, root)
    train_ids = [line.split(",")[0] for line in (root / "gz2_train.csv").read_text().splitlines()[1:]]
    (root / "images" / f"{train_ids[0]}.jpg").unlink()  # missing
    (root / "images" / f"{train_ids[1]}.jpg").write_bytes(b"")  # empty
    data = (root / "images" / f"{train_ids[2]}.jpg").read_bytes()
    (root / "images" / f"{train_ids[2]}.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "images" / f"{train_ids[3]}.jpg").write_bytes(b"not a jpeg at all")  # unreadable

    loaded = load_data(DataConfig(kind="gz2", dataset=str(root)))
    err = capsys.readouterr().err
    assert "2 images missing or empty" in err and train_ids[0] in err and train_ids[1] in err
    train = loaded.splits["train"]
    assert len(train) == 14 and train.missing == train_ids[:2]

    dataset = ImageDataset(train, PREP, train=True)
    batch = dataset.collate_fn([dataset[i] for i in range(len(train))])
    assert sorted(train.ids[i] for i in batch.bad) == sorted(train_ids[2:4])
    assert batch.images.shape == (12, 3, 224, 224) and len(batch.labels) == 12
    bad = BadImages()
    new = bad.add(train, batch.bad)
    bad.report(train, new)
    assert "2 unreadable or truncated images" in capsys.readouterr().err
    assert bad.add(train, batch.bad) == [] and bad.count() == 2  # reported once


def test_limit_caps_every_split(tiny):
    data = load_data(DataConfig(kind="gz2", dataset=str(tiny), limit=3))
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 3, "valid": 3, "test": 3}
    with pytest.raises(DataError, match="needs --images DIR"):
        load_data(DataConfig(kind="gz2"))


def test_real_gz2_samples_load_through_the_gz2_path(tmp_path):
    images = REAL_SAMPLE_IMAGES
    ids = sorted(p.stem for p in images.glob("*.jpg"))
    assert len(ids) == 3
    for split, label in (("train", 5), ("valid", 3), ("test", 0)):
        (tmp_path / f"gz2_{split}.csv").write_text(HEADER + "".join(f"{i},{label},0,0,0\n" for i in ids))
    data = load_data(DataConfig(kind="gz2", splits=str(tmp_path), images=str(images)))
    for split in data.splits.values():
        assert split.ids == ids
        for train in (True, False):
            dataset = ImageDataset(split, PREP, train=train)
            item = dataset[0]
            assert item[0] is not None and item[0].shape == (224, 224, 3) and item[0].dtype == np.uint8
            batch = dataset.collate_fn([item]).images
            assert batch.shape == (1, 3, 224, 224) and batch.dtype == torch.float32
    with Image.open(images / f"{ids[0]}.jpg") as image:
        expected = eval_array(image, PREP)
    test_set = ImageDataset(data.splits["test"], PREP)
    assert np.array_equal(test_set.collate_fn([test_set[0]]).images[0].numpy(), expected)


def test_folder_data_with_its_own_class_list(tiny, tmp_path):
    root = tmp_path / "three"
    write_three_class_folder(tiny, root)
    with pytest.raises(DataError, match="class names"):
        load_data(DataConfig(kind="folder", dataset=str(root)))
    (root / "classes.toml").write_text('classes = ["smooth", "disc", "odd"]\n')
    data = load_data(DataConfig(kind="folder", dataset=str(root)))
    assert data.class_names == ("smooth", "disc", "odd") and data.num_classes == 3
    assert data.splits["train"].label_counts(3) == [6, 6, 4]
    (root / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match=r"train\.csv:4: label 2 is outside 0\.\.1"):
        load_data(DataConfig(kind="folder", dataset=str(root), classes=str(root / "classes.json")))


def test_train_transform_is_seeded_and_matches_the_spec():
    image = galaxy_image(3, np.random.default_rng(1))
    a = train_array(image, PREP, sample_rng(0, 0, 5))
    b = train_array(image, PREP, sample_rng(0, 0, 5))
    c = train_array(image, PREP, sample_rng(0, 1, 5))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert train_image(image, PREP, sample_rng(0, 0, 5)).size == (224, 224)
    # RandomResizedCrop(224, scale 0.8-1.0, ratio 0.99-1.01) of the 224 centre crop.
    for i in range(200):
        left, top, w, h = random_resized_crop_box(224, 224, sample_rng(1, 2, i))
        assert 0.8 * 224 * 224 * 0.98 <= w * h <= 224 * 224 and 0.97 <= w / h <= 1.03
        assert 0 <= left <= 224 - w and 0 <= top <= 224 - h
    # The centre crop comes first: pixels outside the central 224 never reach the output.
    outside = np.zeros((424, 424, 3), np.uint8)
    outside[:, :90] = 255
    outside[:, -90:] = 255
    assert train_image(Image.fromarray(outside), PREP, sample_rng(0, 0, 0)).getextrema() == ((0, 0),) * 3
    # Normalisation with the study's statistics: a black image maps to -mean/std.
    black = train_array(Image.new("RGB", (424, 424)), PREP, sample_rng(0, 0, 0))
    assert np.allclose(black[:, 100, 100], -np.array(PREP.mean) / np.array(PREP.std), atol=1e-6)


def test_epoch_sampler_orders_shards_and_skips():
    full = EpochSampler(10, seed=3, epoch=1).order()
    assert sorted(full) == list(range(10)) and full == EpochSampler(10, seed=3, epoch=1).order()
    assert full != EpochSampler(10, seed=3, epoch=2).order()
    assert EpochSampler(10, seed=3, epoch=1, start=4).order() == full[4:]
    shards = [EpochSampler(10, seed=3, epoch=1, rank=r, world=2).order() for r in range(2)]
    assert shards[0] == full[0::2] and shards[1] == full[1::2]
    assert EpochSampler(4, seed=0, epoch=0, shuffle=False).order() == [0, 1, 2, 3]


def test_class_names_default_to_gz2(tiny):
    assert load_data(DataConfig(kind="gz2", dataset=str(tiny))).class_names == CLASS_NAMES


def test_gz2_uses_the_packaged_split_files_with_images_alone(tmp_path):
    """`--data gz2 --images DIR`: the study's split files in data/gz2_splits; rows without an image are skipped."""
    first_ids = {}
    for split in ("train", "valid", "test"):
        lines = (GZ2_SPLITS / f"gz2_{split}.csv").read_text().splitlines()[1:4]
        first_ids[split] = [line.split(",")[0] for line in lines]
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for galaxy_id in sum(first_ids.values(), []):
        galaxy_image(0, rng, size=64).save(tmp_path / "images" / f"{galaxy_id}.jpg")
    data = load_data(DataConfig(kind="gz2", images=str(tmp_path / "images")), quiet=True)
    assert data.path == GZ2_SPLITS and data.class_names == CLASS_NAMES and data.is_study_gz2
    assert {name: split.ids for name, split in data.splits.items()} == first_ids
    assert data.splits["train"].csv_path == GZ2_SPLITS / "gz2_train.csv"


def test_split_pattern_names_the_split_files(tiny, tmp_path):
    root = tmp_path / "renamed"
    shutil.copytree(tiny, root)
    for split in ("train", "valid", "test"):
        (root / f"gz2_{split}.csv").rename(root / f"galaxies_{split}_v2.csv")
    with pytest.raises(DataError, match=r"expected gz2_train\.csv or train\.csv"):
        load_data(DataConfig(kind="gz2", dataset=str(root)))
    data = load_data(DataConfig(kind="gz2", dataset=str(root), split_pattern="galaxies_{split}_v2.csv"))
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 16, "valid": 8, "test": 8}
    assert data.splits["valid"].csv_path.name == "galaxies_valid_v2.csv"
    with pytest.raises(DataError, match=r"no split file for 'train' .*expected train\.csv"):
        load_data(DataConfig(kind="gz2", dataset=str(root), split_pattern="{split}.csv"))
    for bad in ("galaxies.csv", "{name}.csv", "../{split}.csv"):
        with pytest.raises(DataError, match="split pattern"):
            load_data(DataConfig(kind="gz2", dataset=str(root), split_pattern=bad))
    three = tmp_path / "three"
    write_three_class_folder(tiny, three)
    (three / "classes.json").write_text('["a", "b", "c"]')
    for split in ("train", "valid", "test"):
        (three / f"{split}.csv").rename(three / f"part-{split}.csv")
    folder = load_data(DataConfig(kind="folder", dataset=str(three), split_pattern="part-{split}.csv"))
    assert folder.num_classes == 3 and len(folder.splits["train"]) == 16 and not folder.is_study_gz2
