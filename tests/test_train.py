"""End to end: a tiny training run writes every output, and `galaxyvit evaluate` reproduces its test figures."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from tiny_galaxies import write_three_class_folder, write_tiny_dataset

from app.cli import main as cli_main
from galaxyvit.classes import CLASS_NAMES
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import DataConfig, DataError
from training.registry import get_run
from training.train import loss_weights, parse_set, train

METRIC_KEYS = {
    "run_id",
    "family",
    "train_acc",
    "valid_acc",
    "test_acc",
    "per_class_acc",
    "macro_recall",
    "macro_f1",
    "confusion_matrix",
    "confusion_counts",
    "epochs_trained",
    "best_epoch",
    "data",
}
TINY = dict(depth=1, dim=32, heads=2, k=8, batch_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=24, n_valid=8, n_test=16)


def test_tiny_run_writes_all_outputs(tiny, tmp_path):
    run = get_run("linformer-010522").with_overrides(**TINY)
    results = tmp_path / "results.md"
    out = train(
        run,
        DataConfig(kind="gz2", dataset=str(tiny)),
        tmp_path / "run",
        epochs=2,
        workers=0,
        threads=2,
        results_file=results,
        progress=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["run_id"] == "linformer-010522" and metrics["family"] == "linformer"
    assert metrics["epochs_trained"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["data"] == {"kind": "gz2", "path": str(tiny), "n_train": 24, "n_valid": 8, "n_test": 16}
    for key in ("train_acc", "valid_acc", "test_acc", "macro_recall", "macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    counts = np.array(metrics["confusion_counts"])
    assert counts.shape == (8, 8) and counts.sum() == 16 and (counts.sum(axis=1) == 2).all()
    assert metrics["test_acc"] == pytest.approx(np.trace(counts) / 16)
    assert np.allclose(np.array(metrics["confusion_matrix"]).sum(axis=1), 1.0)
    assert metrics["per_class_acc"] == pytest.approx(list(np.diag(counts) / 2))

    with Image.open(out / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width > 400
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and list(rows[0])[:3] == ["id", "true", "predicted"] and len(rows[0]) == 11
    assert all(abs(sum(float(v) for v in list(r.values())[3:]) - 1) < 1e-4 for r in rows)
    assert sum(r["true"] == r["predicted"] for r in rows) == np.trace(counts)
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [h["epoch"] for h in history] == ["1", "2"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())

    table = results.read_text().splitlines()
    assert table[0].startswith("| run | data | epochs | train_acc | valid_acc | test_acc | study train_acc")
    assert table[2].startswith(f"| linformer-010522 | gz2 {tiny.name} (24/8/16) | 2 | ")
    assert f"| {100 * metrics['test_acc']:.2f} | 80.52 | 80.82 | - |" in table[2]

    model, best = model_from_checkpoint(out / "best.pt")
    assert best["epoch"] == metrics["best_epoch"] and best["class_names"] == list(CLASS_NAMES)
    last = load_checkpoint(out / "last.pt")
    assert {"optimizer", "scheduler", "ranks", "epoch", "step", "history", "digest"} <= set(last)
    assert isinstance(last["ranks"][0]["rng"]["numpy"][1], list)  # plain data, weights_only-loadable

    # `galaxyvit evaluate` re-runs the test evaluation alone and agrees.
    eval_out = tmp_path / "eval"
    code = cli_main(["evaluate", str(out / "best.pt"), "--data", "gz2", "--dataset", str(tiny), "--out", str(eval_out)])
    assert code == 0
    again = json.loads((eval_out / "metrics.json").read_text())
    assert again["test_acc"] == metrics["test_acc"] and again["confusion_counts"] == metrics["confusion_counts"]
    assert (eval_out / "confusion_matrix.png").is_file() and (eval_out / "predictions.csv").is_file()


def test_folder_data_trains_with_its_own_classes(tiny, tmp_path):
    root = tmp_path / "three"
    write_three_class_folder(tiny, root)
    (root / "classes.json").write_text('["smooth", "disc", "odd"]')
    run = get_run("linformer-010522").with_overrides(**TINY, class_weights="inverse_frequency")
    out = train(run, DataConfig(kind="folder", dataset=str(root)), tmp_path / "run", epochs=1, workers=0,
                results_file=None, progress=False)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["confusion_counts"]).shape == (3, 3) and metrics["class_names"] == ["smooth", "disc", "odd"]
    model, best = model_from_checkpoint(out / "best.pt")
    assert best["class_names"] == ["smooth", "disc", "odd"] and model.mlp_head[-1].out_features == 3


def test_cli_errors_and_overrides(tiny, tmp_path, capsys):
    assert parse_set(["depth=2", "lr=1e-3", "shared_kv=true", "class_weights=uniform"]) == {
        "depth": 2,
        "lr": 1e-3,
        "shared_kv": True,
        "class_weights": "uniform",
    }
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    with open(bad / "gz2_test.csv", "a") as f:
        f.write("99999,9,0,0,0\n")
    code = cli_main(["train", "linformer-010522", "--data", "gz2", "--dataset", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and "gz2_test.csv:18: label1 9 is outside 0..7" in capsys.readouterr().err
    assert cli_main(["train", "linformer-01052", "--dataset", str(bad)]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()


def test_inverse_frequency_weights_come_from_the_train_split(tiny):
    from training.data import load_data

    data = load_data(DataConfig(kind="gz2", dataset=str(tiny)))
    run = get_run("linformer-010522").with_overrides(class_weights="inverse_frequency")
    assert loss_weights(run, data) == pytest.approx([1.0] * 8)  # the tiny train split is balanced (3 per class)
    assert loss_weights(get_run("linformer-010522").with_overrides(class_weights="study_tuned"), data)[7] == 3.23
    with pytest.raises(DataError):
        loss_weights(get_run("linformer-010522").with_overrides(class_weights="study_tuned"), _three_class(data))


def _three_class(data):
    from dataclasses import replace

    return replace(data, class_names=("a", "b", "c"))
