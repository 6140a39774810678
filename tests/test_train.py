"""End to end: a tiny training run writes every output, and `galaxyvit evaluate` reproduces its test figures;
class weights for any class list; the training precision (fp32 by default) and fp32 validation."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_galaxies import write_three_class_folder, write_tiny_dataset

from app.cli import main as cli_main
from galaxyvit.classes import CLASS_NAMES
from training import class_weights
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import DataConfig, load_data
from training.metrics import RunMetrics
from training.registry import get_run, parse_overrides
from training.train import TrainOptions, train

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
    "class_names",
    "class_weights",
    "precision",
}
TINY = dict(depth=1, dim=32, heads=2, k=8, batch_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=24, n_valid=8, n_test=16)


def test_tiny_run_writes_all_outputs(tiny, tmp_path):
    run = get_run("linformer-010522").with_overrides(**TINY)
    results = tmp_path / "results.md"
    opts = TrainOptions(out=tmp_path / "run", epochs=2, workers=0, threads=2, results_file=results, progress=False)
    out = train(run, DataConfig(kind="gz2", dataset=str(tiny)), opts)
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and RunMetrics.load(out / "metrics.json").test_acc == metrics["test_acc"]
    assert metrics["class_weights"] == [1.0] * 8 and metrics["precision"] == "fp32" and metrics["split"] == "test"
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
    args = ["evaluate", str(out / "best.pt"), "--data", "gz2", "--dataset", str(tiny), "--out", str(eval_out)]
    assert cli_main([*args, "--no-progress"]) == 0
    again = json.loads((eval_out / "metrics.json").read_text())
    assert again["test_acc"] == metrics["test_acc"] and again["confusion_counts"] == metrics["confusion_counts"]
    assert again["class_weights"] == [1.0] * 8 and again["checkpoint"] == str(out / "best.pt")
    assert (eval_out / "confusion_matrix.png").is_file() and (eval_out / "predictions.csv").is_file()


def test_folder_data_trains_with_its_own_classes(tiny, tmp_path, capsys):
    root = tmp_path / "three"
    write_three_class_folder(tiny, root)
    (root / "classes.json").write_text('["smooth", "disc", "odd"]')
    run = get_run("linformer-010522").with_overrides(**TINY, class_weights="inverse_frequency")
    results = tmp_path / "results.md"
    opts = TrainOptions(out=tmp_path / "run", epochs=1, workers=0, results_file=results, progress=False)
    out = train(run, DataConfig(kind="folder", dataset=str(root)), opts)
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["confusion_counts"]).shape == (3, 3) and metrics["class_names"] == ["smooth", "disc", "odd"]
    # train split: 24 images with labels i % 8 % 3 -> 9, 9, 6 per class; weights N / (K n_c)
    assert metrics["class_weights"] == pytest.approx([24 / 27, 24 / 27, 24 / 18])
    assert "class weights (inverse_frequency): smooth 0.889, disc 0.889, odd 1.33" in capsys.readouterr().err
    model, best = model_from_checkpoint(out / "best.pt")
    assert best["class_names"] == ["smooth", "disc", "odd"] and model.mlp_head[-1].out_features == 3
    row = results.read_text().splitlines()[2]
    assert row.startswith("| linformer-010522 | folder three (24/8/16) | 1 | ")
    assert "| - | - | - |" in row  # a 3-class run is not put beside the study's 8-class figures


def test_cli_errors_and_overrides(tiny, tmp_path, capsys):
    assert parse_overrides(["depth=2", "lr=1e-3", "shared_kv=true", "class_weights=uniform"]) == {
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


def test_class_weights_for_any_number_of_classes(tiny, tmp_path):
    counts = load_data(DataConfig(kind="gz2", dataset=str(tiny))).splits["train"].label_counts(8)
    assert class_weights.resolve("inverse_frequency", counts) == pytest.approx([1.0] * 8)  # 3 per class
    assert class_weights.resolve("study_tuned", counts, CLASS_NAMES)[7] == 3.23
    names = ("elliptical", "spiral", "edge-on", "merger")
    assert class_weights.resolve("uniform", [5, 3, 2, 1], names) == (1.0, 1.0, 1.0, 1.0)
    assert class_weights.resolve("inverse_frequency", [5, 3, 2, 2], names) == pytest.approx([0.6, 1.0, 1.5, 1.5])
    assert class_weights.resolve("1,2,0.5,4", [5, 3, 2, 1], names) == (1.0, 2.0, 0.5, 4.0)
    with pytest.raises(ValueError, match=r"class 3 \('merger'\) has no image in the training split") as err:
        class_weights.resolve("inverse_frequency", [5, 3, 2, 0], names)
    assert "use inverse_frequency" not in str(err.value)
    with pytest.raises(ValueError, match="exactly 4 values"):
        class_weights.resolve("1,1,2,1,1,1,3,9", [5, 3, 2, 1], names)
    for preset in ("study_tuned", "study_inverse"):
        with pytest.raises(ValueError, match="8 GZ2 classes only; this data has 4 classes"):
            class_weights.resolve(preset, [5, 3, 2, 1], names)
        with pytest.raises(ValueError, match="8 GZ2 classes only"):  # 8 classes, but not the GZ2 ones
            class_weights.resolve(preset, counts, [f"c{i}" for i in range(8)])


def test_a_missing_class_stops_training_with_its_name(tiny, tmp_path, capsys):
    root = tmp_path / "four"
    write_three_class_folder(tiny, root)
    (root / "classes.json").write_text('["smooth", "disc", "odd", "merger"]')  # no image has label 3
    args = ["train", "linformer-010522", "--data", "folder", "--dataset", str(root), "--out", str(tmp_path / "o")]
    assert cli_main([*args, "--class-weights", "inverse_frequency", "--no-progress", "--results", ""]) == 2
    assert "class 3 ('merger') has no image in the training split" in capsys.readouterr().err


def record_linear_outputs(records: list):
    """A global forward hook noting (training mode, autocast on, output dtype) of every nn.Linear call."""

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            records.append((module.training, torch.is_autocast_enabled("cpu"), output.dtype))

    return torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_training_precision_and_fp32_validation(tiny, tmp_path, precision):
    """Default: fp32 everywhere, no autocast. bf16: the training forward runs under autocast, while
    validation and the test evaluation (eval mode) run in fp32 whatever the training precision."""
    run = get_run("linformer-010522").with_overrides(**TINY)
    opts = TrainOptions(out=tmp_path / "run", epochs=1, workers=0, results_file=None, progress=False)
    if precision:
        opts.precision = precision
    records: list = []
    handle = record_linear_outputs(records)
    try:
        train(run, DataConfig(kind="gz2", dataset=str(tiny)), opts)
    finally:
        handle.remove()
    training = {(autocast, dtype) for is_training, autocast, dtype in records if is_training}
    evaluation = {(autocast, dtype) for is_training, autocast, dtype in records if not is_training}
    assert evaluation == {(False, torch.float32)}
    if precision is None:
        assert training == {(False, torch.float32)}
    else:
        assert training == {(True, torch.bfloat16)}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == (precision or "fp32")


def test_fp16_on_cpu_is_a_clear_error(tiny, tmp_path, capsys):
    args = ["train", "linformer-010522", "--data", "gz2", "--dataset", str(tiny), "--out", str(tmp_path / "o")]
    assert cli_main([*args, "--precision", "fp16", "--device", "cpu"]) == 2
    assert "fp16 training needs a CUDA device" in capsys.readouterr().err
