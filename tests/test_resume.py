"""Crash safety: SIGKILL mid-epoch then --resume gives the weights of an uninterrupted run; damaged
checkpoints are detected and the previous good one is used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_galaxies import write_tiny_dataset

from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_resumable,
    previous_path,
    save_resumable,
    verify_resumable,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--set", "depth=1", "--set", "dim=32", "--set", "heads=2", "--set", "k=8"]  # dropout stays 0.1


def train_cmd(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app",
        "train",
        "linformer-010522",
        "--data",
        "gz2",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        *TINY_RUN,
        "--seed",
        "3",
        "--checkpoint-every",
        "1",
        "--workers",
        "0",
        "--threads",
        "1",
        "--deterministic",
        "--no-progress",
        "--results",
        "",
        *extra,
    ]


def run_ok(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def kill_mid_epoch(cmd: list[str], out: Path) -> dict:
    """Start training, SIGKILL it as soon as a mid-epoch last.pt exists; return the state it left."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if verify_resumable(out / "last.pt")["step"] > 0:
                    break
            except CheckpointError:
                pass
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before a mid-epoch checkpoint was seen"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state, _ = load_resumable(out / "last.pt")
    return state


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a), load_checkpoint(b)
    assert left["model"].keys() == right["model"].keys()
    for key in left["model"]:
        assert torch.equal(left["model"][key], right["model"][key]), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    dataset = write_tiny_dataset(base / "data", n_train=32, n_valid=8, n_test=8)
    reference = base / "reference"
    run_ok(train_cmd(dataset, reference))
    return dataset, reference


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(setup, tmp_path):
    dataset, reference = setup
    out = tmp_path / "killed"
    state = kill_mid_epoch(train_cmd(dataset, out), out)
    assert state["step"] > 0  # killed inside an epoch
    assert not (out / "metrics.json").exists()
    log = run_ok(train_cmd(dataset, out, "--resume"))
    assert "resuming linformer-010522" in log
    assert_same_weights(out / "last.pt", reference / "last.pt")
    assert_same_weights(out / "best.pt", reference / "best.pt")
    ref_opt = load_checkpoint(reference / "last.pt")["optimizer"]["state"]
    got_opt = load_checkpoint(out / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(got_opt[k]["exp_avg"], ref_opt[k]["exp_avg"]) for k in ref_opt)
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_truncated_checkpoint_falls_back_to_the_previous_one(setup, tmp_path):
    """What a kill during a non-atomic write would leave: half a last.pt (plus a stray temp file)."""
    dataset, reference = setup
    out = tmp_path / "truncated"
    out.mkdir()
    data = (reference / "last.pt").read_bytes()  # the final state; last.prev.pt is one step before it
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    (out / ".last.pt.tmp12345").write_bytes(data[:100])
    prev = reference / "last.prev.pt"
    (out / "last.prev.pt").write_bytes(prev.read_bytes())
    (out / "best.pt").write_bytes((reference / "best.pt").read_bytes())  # as it was at that step (see below)
    assert verify_resumable(prev)["step"] == 15  # mid-epoch: the last step of the last epoch is still to do
    log = run_ok(train_cmd(dataset, out, "--resume"))
    assert "last.pt is unreadable" in log and "last.prev.pt instead" in log
    assert_same_weights(out / "last.pt", reference / "last.pt")
    assert (out / "metrics.json").is_file()
    # best.pt: the epoch-1 weights if epoch 2 was no better, else rewritten with epoch 2's, as in the reference
    assert_same_weights(out / "best.pt", reference / "best.pt")


def test_damaged_or_missing_state_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_resumable({"model": {"w": torch.zeros(50_000)}, "run": {}, "step": 1}, path)
    save_resumable({"model": {"w": torch.ones(50_000)}, "run": {}, "step": 2}, path)
    assert previous_path(path).name == "last.prev.pt"
    assert load_resumable(path)[0]["step"] == 2
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged|unreadable"):
        verify_resumable(path)
    state, used = load_resumable(path)
    assert state["step"] == 1 and used == previous_path(path)
    path.unlink()  # killed between the rotation and the new write
    assert load_resumable(path)[0]["step"] == 1
    previous_path(path).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no usable training state"):
        load_resumable(path)
