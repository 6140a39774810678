"""`--augment-device`: the trainer's batches with the per-batch augmentation are training/gpu_augment.py applied by
hand (here on CPU tensors, `batch-cpu`), from prepared crops or JPEGs, and a whole training run goes through it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny_galaxies import write_tiny_dataset

from app.cli import main as cli_main
from galaxyvit.preprocess import preprocessing_for
from training.data import DataConfig, load_data
from training.distributed import Processes
from training.epoch import EpochPlan, Precision, epoch_batches
from training.gpu_augment import DeviceAugmentDataset, augment_batch, batch_augment_for, sample_params, training_set
from training.loader import EpochSampler, ImageDataset
from training.prepared import prepare, prepared_data

PREP = preprocessing_for("linformer")
CPU = torch.device("cpu")
SMALL = ["--set", "depth=1", "--set", "dim=32", "--set", "heads=2", "--set", "k=8", "--batch-size", "8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=14, n_valid=4, n_test=4)
    prepare(DataConfig(kind="gz2", dataset=str(root)), progress=False)
    return root


def plan_for(augment, batch_size: int = 4, workers: int = 0) -> EpochPlan:
    loss = None  # epoch_batches does not compute a loss
    fp32 = Precision.for_training("fp32", CPU)
    return EpochPlan(3, 4, batch_size, 5, Processes(), CPU, workers, False, fp32, loss, augment)


def test_the_default_device_and_bad_choices():
    assert batch_augment_for(None, CPU, PREP) is None and batch_augment_for("cpu", CPU, PREP) is None
    on_cpu = batch_augment_for("batch-cpu", torch.device("cuda"), PREP)
    assert on_cpu is not None and on_cpu.device == CPU
    on_gpu = batch_augment_for(None, torch.device("cuda", 1), PREP)  # nothing touches the device here
    assert on_gpu is not None and on_gpu.device == torch.device("cuda", 1) and on_gpu.prep == PREP
    with pytest.raises(ValueError, match="--augment-device cuda needs a CUDA training device"):
        batch_augment_for("cuda", CPU, PREP)
    with pytest.raises(ValueError, match="unknown augment device 'gpu'"):
        batch_augment_for("gpu", CPU, PREP)


def test_epoch_batches_are_gpu_augment_applied_by_hand(tiny):
    split = prepared_data(tiny / "prepared-224").splits["train"]
    augment = batch_augment_for("batch-cpu", CPU, PREP)
    dataset = training_set(split, PREP, 5, augment)
    assert isinstance(dataset, DeviceAugmentDataset)
    plan = plan_for(augment)
    by_epoch = {}
    for epoch in (0, 2):
        order = EpochSampler(len(split), seed=5, epoch=epoch).order()
        batches = list(epoch_batches(dataset, plan, epoch))
        assert [batch.indices.tolist() for batch, _ in batches] == [order[i : i + 4] for i in range(0, len(order), 4)]
        for batch, images in batches:
            indices = batch.indices.tolist()
            crops = torch.from_numpy(split.crops()[indices])
            expected = augment_batch(crops, sample_params(5, epoch, indices, 224), PREP)
            assert images.dtype == torch.float32 and torch.equal(images, expected)
            assert batch.labels.tolist() == [split.labels[i] for i in indices]
        by_epoch[epoch] = batches
    assert not torch.equal(by_epoch[0][0][1], by_epoch[2][0][1])
    # A resumed epoch starts at its batch; worker processes deliver the same batches.
    resumed = list(epoch_batches(dataset, plan, 2, start_step=1))
    assert len(resumed) == len(by_epoch[2]) - 1 and torch.equal(resumed[0][1], by_epoch[2][1][1])
    with_workers = list(epoch_batches(dataset, plan_for(augment, workers=1), 2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(with_workers, by_epoch[2], strict=True))
    # From the JPEGs: the same crops, so the same batches; the per-image Pillow path is within one grey level.
    jpeg = load_data(DataConfig(kind="gz2", dataset=str(tiny)), quiet=True).splits["train"]
    from_jpeg = list(epoch_batches(training_set(jpeg, PREP, 5, augment), plan, 2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(from_jpeg, by_epoch[2], strict=True))
    per_image = list(epoch_batches(training_set(jpeg, PREP, 5, None), plan_for(None), 2))
    assert isinstance(training_set(jpeg, PREP, 5, None), ImageDataset)
    for (_, pillow), (_, batched) in zip(per_image, by_epoch[2], strict=True):
        assert (pillow - batched).abs().max() <= 1 / 255 / min(PREP.std) + 1e-6


def history(out: Path) -> list[dict]:
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_a_training_run_with_the_batch_augmentation_on_the_cpu(tiny, tmp_path, capsys):
    common = ["train", "linformer-010522", "--data", "gz2", "--dataset", str(tiny), "--epochs", "1", *SMALL]
    common += ["--workers", "0", "--threads", "1", "--deterministic", "--results", "", "--no-progress", "--seed", "2"]
    assert cli_main([*common, "--augment-device", "batch-cpu", "--out", str(tmp_path / "batch")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "pillow")]) == 0  # default on CPU: per image in the loader
    batch, pillow = history(tmp_path / "batch"), history(tmp_path / "pillow")
    assert len(batch) == 1 and int(batch[0]["train_images"]) == 14
    metrics = json.loads((tmp_path / "batch" / "metrics.json").read_text())
    assert metrics["n_evaluated"] == 4 and metrics["epochs_trained"] == 1
    # Same parameters, pixels within one grey level: nearly the same loss, but not the same computation.
    assert abs(float(batch[0]["train_loss"]) - float(pillow[0]["train_loss"])) < 1e-3
    assert batch[0]["train_loss"] != pillow[0]["train_loss"]
    capsys.readouterr()
    assert cli_main([*common, "--augment-device", "cuda", "--out", str(tmp_path / "cuda")]) == 2
    assert "--augment-device cuda needs a CUDA training device" in capsys.readouterr().err
    assert not (tmp_path / "cuda").exists()
