"""Evaluate a checkpoint (best.pt) on a test split: accuracy, per-class accuracy, macro recall/F1,
the normalised confusion matrix PNG, predictions.csv and metrics.json, written to --out.

The images go through galaxyvit.preprocess.eval_array, the same transform that export and serving use.
With --tta 8 every crop is scored in its 8 rotated/flipped views (training/tta_eval.py): the figures
and predictions are those of the mean probabilities, and tta.json records the accuracy of one view
against eight.

  galaxyvit evaluate runs/linformer-010522/best.pt --data synthetic --limit 500 --out /tmp/eval
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from galaxyvit.preprocess import Preprocessing
from training.checkpoint import CheckpointError, model_from_checkpoint
from training.data import Data, DataConfig, DataError, Split, add_data_arguments, data_config
from training.loader import make_loader
from training.metrics import RunMetrics, plot_confusion, summarize, write_predictions
from training.prepared import dataset_for, load_training_data
from training.registry import Run
from training.study_comparison import write_study_comparison
from training.tta_eval import TTA_CHOICES, tta_summary, view_probabilities


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    prep: Preprocessing,
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    indices: list[int] | None = None,
    progress: bool = True,
    desc: str = "eval",
    tta: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Softmax probabilities of the readable images: (dataset indices, probs (N, K), unreadable indices).
    With tta=8, probs is (N, 8, K): each of the 8 dihedral views (galaxyvit.tta.DIHEDRAL order).

    Always in fp32 (no autocast), whatever precision the model was trained in: validation accuracy
    chooses the best epoch, and the test figures must be what the fp32 ONNX export serves.
    """
    dataset = dataset_for(split, prep, train=False)
    indices = list(range(len(split))) if indices is None else indices
    loader = make_loader(dataset, batch_size, indices, workers, device)
    was_training = model.training
    model.eval()
    all_idx, all_probs, bad = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        bad.extend(batch.bad)
        if not len(batch.labels):
            continue
        images = batch.images.to(device, non_blocking=True)
        if tta == 8:
            all_probs.append(view_probabilities(model, images).cpu())
        else:
            all_probs.append(torch.softmax(model(images).float(), dim=1).cpu())
        all_idx.append(batch.indices)
    model.train(was_training)
    if not all_idx:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), bad
    return torch.cat(all_idx).numpy(), torch.cat(all_probs).numpy(), bad


@dataclass
class TrainingOutcome:
    """What only the trainer knows about a run, for its metrics.json."""

    train_acc: float  # at the best epoch
    epochs_trained: int
    precision: str


def report_split(
    checkpoint: Path,
    data: Data,
    out_dir: Path,
    *,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    progress: bool = True,
    split_name: str = "test",
    training: TrainingOutcome | None = None,
    tta: int = 1,
) -> RunMetrics:
    """Evaluate a best.pt on one split; write confusion_matrix.png, predictions.csv and metrics.json.

    The one report of a split, for `galaxyvit evaluate` and the end of `galaxyvit train` alike.
    """
    model, ckpt = model_from_checkpoint(checkpoint)
    run = Run.from_dict(ckpt["run"])
    if list(data.class_names) != list(ckpt.get("class_names", data.class_names)):
        raise DataError(f"{checkpoint} was trained on classes {ckpt['class_names']}, the data has {data.class_names}")
    split = data.splits[split_name]
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    model.to(device)
    idx, probs, bad = predict(
        model,
        split,
        prep,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        desc=split_name,
        tta=tta,
    )
    view_probs = None
    if probs.ndim == 3:  # tta: every figure below is that of the mean over the views
        view_probs, probs = probs, probs.mean(axis=1)
    if bad:
        first = ", ".join(split.ids[i] for i in bad[:5])
        print(
            f"warning: {len(bad)} unreadable images in split {split_name!r} skipped (first ids: {first})",
            file=sys.stderr,
        )
    ids = [split.ids[i] for i in idx]
    y_true = [split.labels[i] for i in idx]
    y_pred = probs.argmax(axis=1).tolist() if len(idx) else []
    summary = summarize(y_true, y_pred, data.num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        summary.confusion_matrix,
        data.class_names,
        out_dir / "confusion_matrix.png",
        f"{run.id} on {data.kind} {split_name} (accuracy {100 * summary.accuracy:.2f}%)",
    )
    write_predictions(out_dir / "predictions.csv", ids, y_true, y_pred, probs, data.class_names)
    metrics = RunMetrics(
        run_id=run.id,
        family=run.family,
        split=split_name,
        test_acc=summary.accuracy,
        per_class_acc=summary.per_class_acc,
        macro_recall=summary.macro_recall,
        macro_f1=summary.macro_f1,
        confusion_matrix=summary.confusion_matrix,
        confusion_counts=summary.confusion_counts,
        n_evaluated=len(idx),
        n_unreadable=len(bad),
        class_names=list(data.class_names),
        data=data.summary(),
        train_acc=training.train_acc if training else None,
        valid_acc=ckpt.get("valid_acc"),
        epochs_trained=training.epochs_trained if training else None,
        best_epoch=ckpt.get("epoch"),
        class_weights=ckpt.get("class_weights"),
        precision=training.precision if training else None,
        checkpoint=str(checkpoint),
    )
    metrics.save(out_dir / "metrics.json")
    if view_probs is not None:
        summary_tta = tta_summary(view_probs, np.asarray(y_true))
        (out_dir / "tta.json").write_text(json.dumps(summary_tta, indent=2) + "\n")
        print(
            f"{tta}-view averaging on {split_name}: accuracy {100 * summary_tta['accuracy_1_view']:.2f}% (1 view) -> "
            f"{100 * summary_tta['accuracy_8_views']:.2f}% ({tta} views), mean spread {summary_tta['mean_spread']:.3f}",
            file=sys.stderr,
        )
    if split_name == "test":
        comparison = write_study_comparison(out_dir, ids, y_true, y_pred, class_names=data.class_names)
        if comparison is not None:
            print(f"compared with the study's ViT-Base galaxy by galaxy: {comparison}", file=sys.stderr)
    return metrics


def evaluate_checkpoint(
    checkpoint: Path,
    data_cfg: DataConfig,
    out_dir: Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    split: str = "test",
    progress: bool = True,
    tta: int = 1,
) -> RunMetrics:
    """Evaluate a best.pt on a split of the data; write the report files and metrics.json."""
    data = load_training_data(data_cfg, progress=progress)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return report_split(
        checkpoint,
        data,
        out_dir,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        split_name=split,
        tta=tta,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a best.pt written by `galaxyvit train`")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test", help="split to evaluate")
    parser.add_argument("--out", type=Path, help="output folder (default: <checkpoint folder>/eval-<split>)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--tta",
        type=int,
        choices=TTA_CHOICES,
        default=1,
        help="views per image: 1, or 8 (rotations by 0/90/180/270 degrees, each also flipped; mean probabilities)",
    )


def main(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.parent / f"eval-{args.split}"
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            data_config(args),
            out,
            batch_size=args.batch_size,
            workers=args.workers,
            split=args.split,
            progress=not args.no_progress,
            tta=args.tta,
        )
    except (CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    views = " (mean of 8 views)" if args.tta == 8 else ""
    print(
        f"{metrics.run_id} on {args.split}{views}: accuracy {100 * metrics.test_acc:.2f}%, "
        f"macro recall {100 * metrics.macro_recall:.2f}%, macro F1 {100 * metrics.macro_f1:.2f}% -> {out}"
    )
    return 0
