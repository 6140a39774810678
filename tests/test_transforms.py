"""The faster CPU training transform gives the pixels of the study's step-by-step Pillow pipeline: rotation and
flips in one Pillow pass, the batch normalised at once, the loader's batches those of the per-image path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_galaxies import galaxy_image, write_tiny_dataset

from galaxyvit.preprocess import center_crop, normalize, preprocessing_for
from training.data import DataConfig, load_data
from training.gpu_augment import batch_augment_for, training_set
from training.loader import ImageDataset, normalize_images
from training.transforms import (
    AugmentParams,
    augment,
    augment_stepwise,
    draw_params,
    rotate_flip_matrix,
    sample_rng,
    sky_jitter,
    train_array,
)

PREP = preprocessing_for("linformer")


@pytest.fixture(scope="module")
def crops() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    noise = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(3)]
    return noise + [galaxy_image(label, rng, size=224) for label in range(5)]


def test_one_pass_rotation_and_flips_give_the_stepwise_pixels(crops):
    """Every image of 1,500 drawn parameter sets, and the edges: angles near and at 0 and +-90 degrees (where
    Pillow copies, transposes or would scale instead), each with all four flip combinations."""
    mismatches = []
    for i in range(1500):
        params = draw_params(sample_rng(7, i % 5, i), 224, 224)
        crop = crops[i % len(crops)]
        if not np.array_equal(np.asarray(augment(crop, params, 224)), np.asarray(augment_stepwise(crop, params, 224))):
            mismatches.append(params)
    edge_angles = (-90.0, -89.9999, -45.0, -1e-3, -1e-6, 0.0, 1e-9, 4e-4, 1e-3, 30.0, 45.0, 60.0, 89.9999, 90.0)
    for angle in edge_angles:
        for hflip in (False, True):
            for vflip in (False, True):
                params = AugmentParams(angle, hflip, vflip, (0, 3, 221, 219))
                ours, steps = augment(crops[3], params, 224), augment_stepwise(crops[3], params, 224)
                if not np.array_equal(np.asarray(ours), np.asarray(steps)):
                    mismatches.append(params)
    assert mismatches == []
    # The fallbacks are taken where Pillow's rotate does something else, and only there.
    assert rotate_flip_matrix(AugmentParams(90.0, True, False, (0, 0, 224, 224)), 224, 224) is None
    assert rotate_flip_matrix(AugmentParams(1e-6, False, False, (0, 0, 224, 224)), 224, 224) is None
    assert rotate_flip_matrix(AugmentParams(1e-3, False, True, (0, 0, 224, 224)), 224, 224) is not None


def test_batch_normalisation_is_the_lookup_table_bit_for_bit():
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, None, :, None], 3, axis=3)  # every value, every channel
    for prep in (PREP, preprocessing_for("vitbase")):
        ours = normalize_images(levels, prep).numpy()
        assert ours.dtype == np.float32 and ours.shape == (1, 3, 1, 256)
        assert np.array_equal(ours, normalize(levels, prep))
    batch = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    assert np.array_equal(normalize_images(batch, PREP).numpy(), np.stack([normalize(image, PREP) for image in batch]))


def test_loader_batches_are_the_study_pipeline_before_this_change(tmp_path):
    """Decode, CenterCrop(224), rotate, flip, flip, resized crop, normalise per image, stack: what the loader gave
    before; the loader now gives the same tensors, for several epochs."""
    root = write_tiny_dataset(tmp_path, n_train=10, n_valid=2, n_test=2)
    split = load_data(DataConfig(kind="gz2", dataset=str(root)), quiet=True).splits["train"]
    dataset = ImageDataset(split, PREP, train=True, seed=4)
    for epoch in (0, 5):
        dataset.set_epoch(epoch)
        batch = dataset.collate_fn([dataset[i] for i in range(len(split))])
        expected = []
        for i in range(len(split)):
            with Image.open(split.image_path(i)) as image:
                crop = center_crop(image.convert("RGB"), 224)
            params = draw_params(sample_rng(4, epoch, i), 224, 224)
            expected.append(normalize(np.asarray(augment_stepwise(crop, params, 224)), PREP))
            with Image.open(split.image_path(i)) as image:
                assert np.array_equal(train_array(image, PREP, sample_rng(4, epoch, i)), expected[-1])
        assert torch.equal(batch.images, torch.from_numpy(np.stack(expected)))


def test_sky_augment_varies_the_observing_conditions_after_the_study_geometry(tmp_path):
    """augment = "sky": the study's rotation, flips and crop (the same draws), then other noise, blur, colour and
    sky level, different for every sample; the loader does it for such a run, and only on the per-image path."""
    root = write_tiny_dataset(tmp_path, n_train=6, n_valid=2, n_test=2)
    split = load_data(DataConfig(kind="gz2", dataset=str(root)), quiet=True).splits["train"]
    study, sky = (
        ImageDataset(split, PREP, train=True, seed=4),
        ImageDataset(split, PREP, train=True, seed=4, augment="sky"),
    )
    for i in range(len(split)):
        plain, jittered = study[i][0].astype(np.float32), sky[i][0].astype(np.float32)
        assert jittered.shape == plain.shape and sky[i][0].dtype == np.uint8
        assert np.array_equal(sky[i][0], jittered.astype(np.uint8))  # the same sample twice: the same pixels
        difference = jittered - plain
        assert 0.3 < np.abs(difference).mean() < 12  # changed, but the same galaxy in the same place
        assert np.corrcoef(plain.ravel(), jittered.ravel())[0, 1] > 0.8
    images = np.stack([sky_jitter(np.full((64, 64, 3), 40, np.uint8), sample_rng(0, 0, i)) for i in range(40)])
    levels, noise = images.mean(axis=(1, 2)), images.std(axis=(1, 2))
    assert levels.std(axis=0).min() > 1 and np.ptp(noise) > 1  # colour / sky level and noise vary per sample
    with pytest.raises(ValueError, match="unknown augment"):
        training_set(split, PREP, 0, None, "fog")
    with pytest.raises(ValueError, match="per-image CPU path"):
        training_set(split, PREP, 0, batch_augment_for("batch-cpu", torch.device("cpu"), PREP), "sky")
