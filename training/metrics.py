"""Test-set metrics and the files that report them: metrics.json (`RunMetrics`), confusion matrix PNG,
predictions CSV, results markdown."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from training.data import DataSummary
from training.registry import Run

RESULTS_HEADER = (
    "| run | data | epochs | train_acc | valid_acc | test_acc | study train_acc | study valid_acc | study test_acc "
    "| date |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """counts[t, p] = how many images of true class t were predicted as p."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return counts


@dataclass
class SplitSummary:
    """How a model did on one split."""

    accuracy: float
    per_class_acc: list[float]  # recall of each class
    macro_recall: float
    macro_f1: float
    confusion_matrix: list[list[float]]  # row-normalised
    confusion_counts: list[list[int]]


def summarize(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> SplitSummary:
    """Overall and per-class accuracy (= recall), macro recall and F1, raw and row-normalised confusion."""
    counts = confusion_counts(y_true, y_pred, num_classes)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    tp = np.diag(counts).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=precision + recall > 0)
    present = support > 0  # macro averages over the classes that occur in the split
    normalised = np.divide(counts, support[:, None], out=np.zeros(counts.shape), where=support[:, None] > 0)
    total = int(counts.sum())
    return SplitSummary(
        accuracy=float(tp.sum() / total) if total else 0.0,
        per_class_acc=[float(v) for v in recall],
        macro_recall=float(recall[present].mean()) if present.any() else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        confusion_matrix=normalised.round(6).tolist(),
        confusion_counts=counts.tolist(),
    )


class MetricsError(ValueError):
    """A metrics.json that is not valid JSON or lacks fields."""


@dataclass
class RunMetrics:
    """metrics.json: the test figures of a run (or of `galaxyvit evaluate`), next to its best.pt.

    Written by `save` and read by `load`, nowhere else. `test_acc` and the per-class figures are on
    `split` (the test split unless `galaxyvit evaluate --split` chose another).
    """

    run_id: str
    family: str
    split: str
    test_acc: float
    per_class_acc: list[float]
    macro_recall: float
    macro_f1: float
    confusion_matrix: list[list[float]]
    confusion_counts: list[list[int]]
    n_evaluated: int  # images scored
    n_unreadable: int  # images skipped as unreadable
    class_names: list[str]
    data: DataSummary
    train_acc: float | None = None  # at the best epoch (None from `galaxyvit evaluate`)
    valid_acc: float | None = None  # at the best epoch
    epochs_trained: int | None = None
    best_epoch: int | None = None
    class_weights: list[float] | None = None  # the loss weights actually used in training
    precision: str | None = None  # training precision (fp32, bf16, fp16); evaluation is always fp32
    checkpoint: str | None = None  # the best.pt evaluated (`galaxyvit evaluate`)

    def save(self, path: str | Path) -> None:
        write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> RunMetrics:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetricsError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MetricsError(f"{path} must hold a JSON object")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise MetricsError(f"{path} lacks field(s): {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def plot_confusion(matrix: Sequence[Sequence[float]], class_names: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as in the study: class names on both axes, values in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 3, 1.1 * k + 2), dpi=110)
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="white" if m[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_predictions(
    path: Path,
    ids: Sequence[str],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """predictions.csv: id, true, predicted, then one probability column per class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "true", "predicted", *(f"p_{name.replace(' ', '_')}" for name in class_names)])
        for galaxy_id, t, p, row in zip(ids, y_true, y_pred, probs):
            writer.writerow([galaxy_id, int(t), int(p), *(f"{v:.6f}" for v in row)])


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _reported(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def append_results(path: Path, run: Run, metrics: RunMetrics, data_label: str, compare_with_study: bool) -> str:
    """Append one row to the results markdown (header written if new): ours in percent, and the study's
    reported figures beside them when `compare_with_study` (a GZ2 run on the study's 8 classes), else '-'."""
    study = [run.reported_train_acc, run.reported_valid_acc, run.reported_test_acc]
    if not compare_with_study:
        study = [None, None, None]
    row = (
        f"| {run.id} | {data_label} | {metrics.epochs_trained} | {_pct(metrics.train_acc)} "
        f"| {_pct(metrics.valid_acc)} | {_pct(metrics.test_acc)} | {' | '.join(_reported(v) for v in study)} "
        f"| {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} |\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "" if path.is_file() and path.stat().st_size > 0 else RESULTS_HEADER
    with open(path, "a") as f:
        f.write(header + row)
    return row
