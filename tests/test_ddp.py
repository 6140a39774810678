"""Data-parallel training: 2 gloo processes on CPU match 1 process with the same global batch, with
uniform and with non-uniform class weights (the loss is the global weighted mean, not a mean of
per-process weighted means)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_galaxies import write_tiny_dataset

from serving.process import free_port
from training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def history(out: Path) -> list[dict]:
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("ddp") / "data", n_train=32, n_valid=8, n_test=8)


@pytest.mark.parametrize("class_weights", ["uniform", "1,2,3,1,0.5,1,4,9"])
def test_two_gloo_processes_match_one_process(dataset, tmp_path, class_weights):
    args = ["linformer-010522", "--data", "gz2", "--dataset", str(dataset), "--epochs", "2", "--batch-size", "8"]
    args += ["--class-weights", class_weights]
    # dropout 0: the two set-ups draw dropout masks from different generators, nothing else differs
    args += ["--set", "depth=1", "--set", "dim=32", "--set", "heads=2", "--set", "k=8", "--set", "dropout=0"]
    args += ["--seed", "1", "--workers", "0", "--threads", "1", "--no-progress", "--results", ""]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    runs = {
        1: [sys.executable, "-m", "app", "train", *args, "--out", str(tmp_path / "one")],
        2: [*launcher, "-m", "training.train", *args, "--out", str(tmp_path / "two")],
    }
    for world, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{world} process(es), batch 8" in proc.stderr

    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert int(a["train_images"]) == int(b["train_images"]) == 32  # each image once per epoch, not once per rank
        for key in ("train_loss", "valid_loss"):
            assert abs(float(a[key]) - float(b[key])) < 1e-4, (key, a[key], b[key])
        assert a["valid_acc"] == b["valid_acc"]
    w1 = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    start = load_checkpoint(tmp_path / "one" / "last.prev.pt")["model"]  # end of epoch 1: the weights did move
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 1e-3
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=2e-5, rtol=1e-4), (key, (w1[key] - w2[key]).abs().max())
    assert (tmp_path / "two" / "metrics.json").is_file() and (tmp_path / "two" / "predictions.csv").is_file()
