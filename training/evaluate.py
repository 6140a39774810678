"""Evaluate a checkpoint (best.pt) on a test split: accuracy, per-class accuracy, macro recall/F1,
the normalised confusion matrix PNG, predictions.csv and metrics.json, written to --out.

The images go through galaxyvit.preprocess.eval_array, the same transform that export and serving use.

  galaxyvit evaluate runs/linformer-010522/best.pt --data synthetic --limit 500 --out /tmp/eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from galaxyvit.preprocess import Preprocessing, preprocessing_for
from training.checkpoint import CheckpointError, model_from_checkpoint
from training.data import Data, DataConfig, DataError, ImageDataset, Split, collate, load_data
from training.metrics import plot_confusion, summarize, write_json, write_predictions
from training.registry import Run


def loader_for(dataset: ImageDataset, batch_size: int, indices: list[int], workers: int, pin: bool):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator(),  # iterator seeds come from here, never from the global RNG
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader workers decode JPEGs; the main process owns the cores for compute


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
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Softmax probabilities of the readable images: (dataset indices, probs (N, K), unreadable indices)."""
    dataset = ImageDataset(split, prep, train=False)
    indices = list(range(len(split))) if indices is None else indices
    loader = loader_for(dataset, batch_size, indices, workers, device.type == "cuda")
    was_training = model.training
    model.eval()
    all_idx, all_probs, bad = [], [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        bad.extend(batch.bad)
        if not len(batch.labels):
            continue
        with autocast:
            logits = model(batch.images.to(device, non_blocking=True))
        all_probs.append(torch.softmax(logits.float(), dim=1).cpu())
        all_idx.append(batch.indices)
    model.train(was_training)
    if not all_idx:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), bad
    return torch.cat(all_idx).numpy(), torch.cat(all_probs).numpy(), bad


def split_report(
    model: nn.Module,
    run: Run,
    data: Data,
    out_dir: Path,
    *,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    progress: bool = True,
    split_name: str = "test",
) -> dict:
    """Evaluate on a split and write confusion_matrix.png and predictions.csv; return the summary dict."""
    split = data.splits[split_name]
    prep = preprocessing_for(run.family, run.image_size)
    idx, probs, bad = predict(
        model, split, prep, device=device, batch_size=batch_size, workers=workers, progress=progress, desc=split_name
    )
    if bad:
        first = ", ".join(split.ids[i] for i in bad[:5])
        print(
            f"warning: {len(bad)} unreadable images in split {split_name!r} skipped (first ids: {first})",
            file=sys.stderr,
        )
    y_true = [split.labels[i] for i in idx]
    y_pred = probs.argmax(axis=1).tolist() if len(idx) else []
    summary = summarize(y_true, y_pred, data.num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        summary["confusion_matrix"],
        data.class_names,
        out_dir / "confusion_matrix.png",
        f"{run.id} on {data.kind} {split_name} (accuracy {100 * summary['accuracy']:.2f}%)",
    )
    write_predictions(out_dir / "predictions.csv", [split.ids[i] for i in idx], y_true, y_pred, probs, data.class_names)
    summary["n_evaluated"] = len(idx)
    summary["n_unreadable"] = len(bad)
    return summary


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data", choices=("synthetic", "gz2", "folder"), default="synthetic", help="dataset kind (default: synthetic)"
    )
    g.add_argument("--dataset", help="dataset folder (split CSVs + images/); for synthetic: where to cache it")
    g.add_argument("--splits", help="gz2: folder with gz2_{train,valid,test}.csv")
    g.add_argument("--images", help="gz2: folder with <galaxyID>.jpg")
    g.add_argument("--classes", help="folder: class names file (JSON list or TOML classes = [...])")
    g.add_argument("--limit", type=int, help="use at most N images of each split")
    g.add_argument("--synth-n", type=int, default=3000, help="synthetic: number of images (default 3000)")
    g.add_argument("--synth-seed", type=int, default=0, help="synthetic: generator seed (default 0)")


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        kind=args.data,
        dataset=args.dataset,
        splits=args.splits,
        images=args.images,
        classes=args.classes,
        limit=args.limit,
        synth_n=args.synth_n,
        synth_seed=args.synth_seed,
    )


def evaluate_checkpoint(
    checkpoint: Path,
    data_cfg: DataConfig,
    out_dir: Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    split: str = "test",
) -> dict:
    """Rebuild the model of a best.pt, evaluate it, write the report files and metrics.json."""
    model, ckpt = model_from_checkpoint(checkpoint)
    run = Run.from_dict(ckpt["run"])
    data = load_data(data_cfg)
    if list(data.class_names) != list(ckpt.get("class_names", data.class_names)):
        raise DataError(f"{checkpoint} was trained on classes {ckpt['class_names']}, the data has {data.class_names}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    summary = split_report(
        model, run, data, out_dir, device=device, batch_size=batch_size, workers=workers, split_name=split
    )
    metrics = {
        "run_id": run.id,
        "family": run.family,
        "checkpoint": str(checkpoint),
        "split": split,
        "train_acc": None,
        "valid_acc": ckpt.get("valid_acc"),
        "test_acc": summary["accuracy"],
        **{k: v for k, v in summary.items() if k != "accuracy"},
        "epochs_trained": None,
        "best_epoch": ckpt.get("epoch"),
        "data": data.summary(),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a best.pt written by `galaxyvit train`")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test", help="split to evaluate")
    parser.add_argument("--out", type=Path, help="output folder (default: <checkpoint folder>/eval-<split>)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def main(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.parent / f"eval-{args.split}"
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint, data_config(args), out, batch_size=args.batch_size, workers=args.workers, split=args.split
        )
    except (CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{metrics['run_id']} on {args.split}: accuracy {100 * metrics['test_acc']:.2f}%, "
        f"macro recall {100 * metrics['macro_recall']:.2f}%, macro F1 {100 * metrics['macro_f1']:.2f}% -> {out}"
    )
    return 0
