"""`galaxyvit reproduce`: two tiny study runs queued, the queue SIGKILLed after the first and started again
(only the missing work is done), the same table from Ray, a failing run recorded while the next goes on,
and clear errors for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny_galaxies import write_tiny_dataset

from app.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
FIRST, SECOND = "linformer-010522", "vit-110421"
SMALL = ["--synth-n", "64", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--workers", "0", "--deterministic"]
SMALL += [arg for item in ("depth=1", "dim=32", "heads=2", "k=8", "mlp_dim=32") for arg in ("--set", item)]


def reproduce_cmd(out: Path, synth: Path, runs: str = f"{FIRST},{SECOND}", *extra: str) -> list[str]:
    return [sys.executable, "-m", "app", "reproduce", "--runs", runs, "--data", "synthetic", "--dataset",
            str(synth), "--gpus", "0", "--out", str(out), *SMALL, *extra]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: (sha256, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def table_rows(out: Path) -> list[dict]:
    rows = json.loads((out / "reproduction.json").read_text())["runs"]
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """Queue both runs, SIGKILL the reproduce process group once the first has finished, then start it again."""
    tmp = tmp_path_factory.mktemp("reproduce")
    synth, out = tmp / "synth", tmp / "local"
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(reproduce_cmd(out, synth), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 400
        while not (out / FIRST / "metrics.json").is_file():
            assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run did not finish in time"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # the queue and its child, mid-queue
        proc.wait(timeout=60)
    before = snapshot(out / FIRST)
    again = run(reproduce_cmd(out, synth))
    return {"synth": synth, "out": out, "before": before, "again": again}


def test_killed_queue_finishes_only_the_missing_work(local):
    out, again = local["out"], local["again"]
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-3000:]
    assert "2 runs on synthetic" in again.stdout and "1 finished (skipped)" in again.stdout
    assert f"{FIRST}: starting" not in again.stdout and f"{FIRST}: resuming" not in again.stdout
    assert f"{SECOND}: epoch 1/1, valid acc" in again.stdout and f"{SECOND}: finished" in again.stdout
    assert snapshot(out / FIRST) == local["before"]  # the finished run's files are untouched
    assert len(json.loads((out / FIRST / "reproduce.json").read_text())["attempts"]) == 1

    table = json.loads((out / "reproduction.json").read_text())
    rows = {row["run_id"]: row for row in table["runs"]}
    assert list(rows) == [FIRST, SECOND] and all(row["status"] == "finished" for row in rows.values())
    for run_id, row in rows.items():
        metrics = json.loads((out / run_id / "metrics.json").read_text())
        assert row["test_acc"]["reproduced"] == round(100 * metrics["test_acc"], 2)
        assert row["valid_acc"]["reproduced"] == round(100 * metrics["valid_acc"], 2)
        assert row["epochs_trained"] == row["max_epochs"] == 1 and row["best_epoch"] == 1
        assert 0 < row["params"]["reproduced"] < row["params"]["study"] and row["wall_s"] > 0
    assert rows[SECOND]["test_acc"]["study"] == 81.66
    assert rows[SECOND]["test_acc"]["difference"] == round(rows[SECOND]["test_acc"]["reproduced"] - 81.66, 2)
    assert table["best_by_family"] == {"vit": {"reproduced": SECOND, "study": SECOND},
                                       "linformer": {"reproduced": FIRST, "study": FIRST}}  # fmt: skip
    assert table["plotted"] == [SECOND]  # the study reports no test accuracy for linformer-010522
    assert table["data"] == f"synthetic {local['synth']} (41/10/13 images)"
    markdown = (out / "reproduction.md").read_text()
    assert f"| {SECOND} | vit | finished | 4,719,368 |" in markdown and "## Best run per family" in markdown
    with Image.open(out / "reproduction.png") as png:
        assert png.format == "PNG" and png.width > 400


def test_ray_engine_gives_the_same_table(local, tmp_path):
    result = run(reproduce_cmd(tmp_path / "ray", local["synth"], f"{FIRST},{SECOND}", "--engine", "ray"))
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "(ray)" in result.stdout
    assert table_rows(tmp_path / "ray") == table_rows(local["out"])


def test_a_failing_run_is_recorded_and_the_next_goes_on(local, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local["out"] / FIRST, out / FIRST)
    (out / FIRST / "metrics.json").unlink()  # killed during its final test evaluation: resume only evaluates
    (out / SECOND).mkdir()
    for name in ("last.pt", "last.prev.pt"):
        (out / SECOND / name).write_bytes(b"not a checkpoint")  # a damaged state that cannot be resumed
    result = run(reproduce_cmd(out, local["synth"], f"{SECOND},{FIRST}"))
    assert result.returncode == 1
    assert f"{SECOND}: FAILED: no usable training state to resume from" in result.stdout
    assert f"{FIRST}: resuming at epoch 1" in result.stdout and f"{FIRST}: finished" in result.stdout
    original = json.loads((local["out"] / FIRST / "metrics.json").read_text())
    assert json.loads((out / FIRST / "metrics.json").read_text())["test_acc"] == original["test_acc"]
    rows = {row["run_id"]: row for row in json.loads((out / "reproduction.json").read_text())["runs"]}
    assert rows[SECOND]["status"] == "failed" and "no usable training state" in rows[SECOND]["error"]
    assert rows[FIRST]["status"] == "finished"
    assert "## Errors" in (out / "reproduction.md").read_text()
    status = json.loads((out / SECOND / "reproduce.json").read_text())
    assert status["attempts"][-1]["returncode"] == 2 and "no usable training state" in status["attempts"][-1]["error"]

    # A finished folder started with other options is refused, never retrained or changed.
    before = snapshot(out / FIRST)
    refused = run(reproduce_cmd(out, local["synth"], FIRST, "--set", "dim=16"))
    assert refused.returncode == 1 and "was started with other train options" in refused.stderr
    assert snapshot(out / FIRST) == before


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["reproduce", "--runs", "linformer-01052,vit-110421", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown run 'linformer-01052'" in err and "Did you mean" in err
    assert cli_main(["reproduce", "--runs", FIRST, "--family", "vit", "--out", str(tmp_path / "o")]) == 2
    assert "is a linformer run, not vit" in capsys.readouterr().err

    root = write_tiny_dataset(tmp_path / "tiny", n_train=8, n_valid=8, n_test=8)
    gone = (root / "gz2_valid.csv").read_text().splitlines()[3].split(",")[0]
    (root / "images" / f"{gone}.jpg").unlink()
    code = cli_main(["reproduce", "--runs", FIRST, "--data", "gz2", "--splits", str(root),
                     "--images", str(root / "images"), "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert f"1 images listed in the split files are missing or empty in {root / 'images'} (first: {gone} (valid))" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()  # nothing started


@pytest.mark.parametrize("fine_tune", [True, False])
def test_table_counts_the_trained_models_parameters(tmp_path, fine_tune):
    """ViT-Base's count comes from the backbone configuration saved in best.pt (a tiny one here)."""
    from transformers import ViTConfig

    from training.checkpoint import save_model
    from training.models import count_trainable_params
    from training.registry import get_run
    from training.reproduction import run_row
    from training.vitbase import build_vitbase

    run = get_run("vitbase-121121").with_overrides(fine_tune=fine_tune)
    tiny = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=32)
    model = build_vitbase(pretrained=False, config=tiny, fine_tune=fine_tune)
    save_model(tmp_path / run.id / "best.pt", model, run, epoch=1, valid_acc=0.5)
    row = run_row(tmp_path / run.id, "running")
    assert row["params"]["reproduced"] == count_trainable_params(model)
    assert (row["params"]["reproduced"] == 8 * 32 + 8) != fine_tune  # frozen backbone: only the new head trains
    assert row["max_epochs"] == 200 and row["test_acc"]["reproduced"] is None and row["status"] == "running"
