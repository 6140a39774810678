"""Batch augmentation on torch tensors (run here on CPU tensors) against the Pillow path, same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_galaxies import galaxy_image

from galaxyvit.preprocess import normalize, preprocessing_for
from training.gpu_augment import (
    DeviceAugmentDataset,
    augment_batch,
    augment_crops,
    collate_crops,
    normalize_batch,
    params_tensor,
    rotate_nearest,
    sample_params,
)
from training.transforms import AugmentParams, augment, draw_params, sample_rng, train_array

PREP = preprocessing_for("linformer")


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(4)
    return np.stack([np.asarray(galaxy_image(i % 8, rng, size=224)) for i in range(12)])


def test_rotation_is_pillows_pixel_for_pixel(crops):
    angles = [-90.0, -89.99, -45.0, -0.001, 0.0, 0.3, 17.123456, 44.5, 60.0, 89.99, 90.0, -33.3]
    pillow = np.stack(
        [
            np.asarray(Image.fromarray(c).rotate(a, resample=Image.NEAREST, fillcolor=(0, 0, 0)))
            for c, a in zip(crops, angles)
        ]
    )
    ours = rotate_nearest(torch.from_numpy(crops).permute(0, 3, 1, 2), angles).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, pillow)


def test_same_parameters_give_the_pillow_pipeline_within_one_grey_level(crops):
    params = [draw_params(sample_rng(0, 1, i), 224, 224) for i in range(len(crops))]
    params[0] = AugmentParams(12.5, True, True, (0, 0, 224, 224))  # the whole crop: edges clamp
    params[1] = AugmentParams(-70.0, False, True, (24, 0, 200, 201))
    pillow = np.stack([np.asarray(augment(Image.fromarray(c), p, 224)) for c, p in zip(crops, params)])
    ours = augment_crops(torch.from_numpy(crops), params_tensor(params), 224).permute(0, 2, 3, 1).numpy()
    diff = np.abs(ours.astype(np.int16) - pillow.astype(np.int16))
    assert diff.max() <= 1  # measured: 1 (Pillow's 22-bit fixed-point resize weights)
    assert (diff > 0).mean() < 0.01  # measured: about 0.1% of the values
    # Normalised, the batch path is the CPU train transform up to one grey level.
    expected = np.stack(
        [train_array(Image.fromarray(c), PREP, sample_rng(0, 1, i)) for i, c in enumerate(crops[2:], start=2)]
    )
    batch = augment_batch(torch.from_numpy(crops[2:]), sample_params(0, 1, range(2, len(crops)), 224), PREP).numpy()
    assert np.abs(batch - expected).max() <= 1 / 255 / min(PREP.std) + 1e-6


def test_normalisation_is_the_cpu_lookup_table_bit_for_bit(crops):
    for prep in (PREP, preprocessing_for("vitbase")):
        ours = normalize_batch(torch.from_numpy(crops).permute(0, 3, 1, 2), prep).numpy()
        assert ours.dtype == np.float32 and np.array_equal(ours, normalize(crops, prep))


def test_device_dataset_draws_the_cpu_parameters(tmp_path):
    from tiny_galaxies import write_tiny_dataset

    from training.data import DataConfig
    from training.prepared import prepare, prepared_data

    root = write_tiny_dataset(tmp_path, n_train=6, n_valid=2, n_test=2)
    split = prepared_data(prepare(DataConfig(kind="gz2", dataset=str(root)), progress=False)).splits["train"]
    dataset = DeviceAugmentDataset(split, seed=9)
    dataset.set_epoch(2)
    batch = collate_crops([dataset[i] for i in range(len(dataset))])
    assert batch.crops.shape == (6, 224, 224, 3) and batch.crops.dtype == torch.uint8
    assert np.array_equal(batch.crops.numpy(), split.crops()) and batch.labels.tolist() == split.labels
    expected = [draw_params(sample_rng(9, 2, i), 224, 224) for i in range(6)]
    assert torch.equal(batch.params, params_tensor(expected))
    assert batch.params[:, 0].abs().max() <= 90 and set(batch.params[:, 1].tolist()) <= {0.0, 1.0}
