"""What a training run reports as it goes: its settings and class weights at the start, then per epoch
one history.csv row, TensorBoard scalars and a printed line."""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from training import class_weights as cw
from training.data import Data
from training.distributed import Processes
from training.registry import Run


@dataclass
class EpochRecord:
    """One epoch of training: a row of history.csv."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    train_images: int
    images_per_s: float
    seconds: float


TB_TAGS = {
    "train_loss": "loss/train",
    "valid_loss": "loss/valid",
    "train_acc": "accuracy/train",
    "valid_acc": "accuracy/valid",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


def write_history(path: Path, history: list[EpochRecord]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(EpochRecord)])
        writer.writeheader()
        writer.writerows(asdict(record) for record in history)
    os.replace(tmp, path)


class RunLog:
    """history.csv, the TensorBoard events in tb/ and the printed epoch lines of one run (rank 0 only)."""

    def __init__(self, out: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.writer = SummaryWriter(str(out / "tb"), purge_step=first_epoch)  # a resume drops later events

    def epoch(self, history: list[EpochRecord], best: bool) -> None:
        record = history[-1]
        write_history(self.out / "history.csv", history)
        for key, tag in TB_TAGS.items():
            self.writer.add_scalar(tag, getattr(record, key), record.epoch)
        self.writer.flush()
        print(
            f"epoch {record.epoch}: train loss {record.train_loss:.4f} acc {100 * record.train_acc:.2f}% | "
            f"valid loss {record.valid_loss:.4f} acc {100 * record.valid_acc:.2f}% | "
            f"{record.images_per_s:.1f} img/s" + (" | best" if best else ""),
            file=sys.stderr,
        )

    def close(self) -> None:
        self.writer.close()


def epoch_record(
    epoch: int, lr: float, train_sums: list[float], valid_loss: float, valid_acc: float, seconds: float
) -> EpochRecord:
    """The history row of epoch index `epoch` from the training sums (added over processes) and the validation."""
    loss_sum, correct, seen = train_sums
    return EpochRecord(
        epoch=epoch + 1,
        lr=lr,
        train_loss=round(loss_sum / max(seen, 1), 6),
        train_acc=round(correct / max(seen, 1), 6),
        valid_loss=round(valid_loss, 6),
        valid_acc=round(valid_acc, 6),
        train_images=int(seen),
        images_per_s=round(seen / max(seconds, 1e-9), 2),
        seconds=round(seconds, 2),
    )


def announce_run(
    run: Run, data: Data, dev: torch.device, procs: Processes, precision: str, loss_weights: tuple[float, ...]
) -> None:
    n = {name: len(split) for name, split in data.splits.items()}
    print(
        f"{run.id}: {data.kind} data {data.path} ({n['train']}/{n['valid']}/{n['test']} images), {dev}, "
        f"{procs.world} process(es), batch {run.batch_size}, up to {run.epochs} epochs, {precision}",
        file=sys.stderr,
    )
    spec = run.class_weights if isinstance(run.class_weights, str) else "custom"
    print(f"class weights ({spec}): {cw.describe(loss_weights, data.class_names)}", file=sys.stderr)
