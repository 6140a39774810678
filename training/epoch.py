"""One training epoch: the batches of this process's shard from where the epoch stands (a resume may
start mid-epoch), augmented in the loader or per batch (`--augment-device`), the forward pass in the
chosen precision, the global weighted loss, the update."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from training.distill import DistillationLoss, merged_logits
from training.distributed import GlobalWeightedLoss, Processes
from training.gpu_augment import BatchAugment, CropBatch
from training.loader import BadImages, Batch, EpochSampler, make_loader

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The training forward pass's precision. fp32 (the study's) runs without autocast; bf16 and fp16
    run under torch.autocast, fp16 with loss scaling. Validation and testing are always fp32."""

    name: str
    device_type: str

    @classmethod
    def for_training(cls, name: str, device: torch.device) -> Precision:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
        if name == "fp16" and device.type != "cuda":
            raise ValueError(f"fp16 training needs a CUDA device (loss scaling); on {device.type} use bf16 or fp32")
        return cls(name, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Scales the fp16 loss so small gradients do not underflow; a no-op for fp32 and bf16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


@dataclass
class Learner:
    """The model and what updates it; all of it goes into last.pt and comes back on --resume."""

    model: nn.Module
    net: nn.Module  # `model`, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # absent from last.pt files of fp32-only versions
            self.scaler.load_state_dict(state["scaler"])


@dataclass
class EpochSums:
    """This process's running totals of the epoch in progress (saved per process in last.pt)."""

    loss: float = 0.0  # sum over steps of (global mean loss x images), this process's share
    correct: float = 0.0
    images: float = 0.0

    def to_list(self) -> list[float]:
        return [self.loss, self.correct, self.images]


@dataclass(frozen=True)
class EpochPlan:
    """How the epochs of a run go through their batches on this process (the same every epoch)."""

    epochs: int  # the run's maximum
    steps: int  # batches per epoch and process
    batch_size: int  # per process
    seed: int
    processes: Processes
    device: torch.device
    workers: int
    progress: bool
    precision: Precision
    loss_fn: GlobalWeightedLoss | DistillationLoss  # the latter takes (class, distillation, teacher) logits
    augment: BatchAugment | None = None  # per-batch augmentation (the dataset yields crops), or in the loader


def epoch_batches(
    dataset: torch.utils.data.Dataset, plan: EpochPlan, epoch: int, start_step: int = 0
) -> Iterator[tuple[Batch | CropBatch, torch.Tensor]]:
    """This process's batches of epoch `epoch` from batch `start_step` on, each with the model's input on the
    device: the loader's normalised images, or the crops augmented per batch by `plan.augment`."""
    procs, device = plan.processes, plan.device
    dataset.set_epoch(epoch)
    start_image = start_step * plan.batch_size
    sampler = EpochSampler(
        len(dataset), seed=plan.seed, epoch=epoch, rank=procs.rank, world=procs.world, start=start_image
    )
    size = dataset.prep.size
    for batch in make_loader(dataset, plan.batch_size, sampler, plan.workers, device):
        if plan.augment is not None:
            images = plan.augment(batch, device)
        elif len(batch.labels):
            images = batch.images.to(device, non_blocking=True)
        else:
            images = torch.zeros(0, 3, size, size, device=device)
        yield batch, images


def train_epoch(
    learner: Learner,
    dataset: torch.utils.data.Dataset,
    plan: EpochPlan,
    epoch: int,
    start_step: int,
    sums: EpochSums,
    bad_images: BadImages,
    on_step: Callable[[int], None],
) -> list[str]:
    """Train on epoch `epoch` from batch `start_step` on, adding to `sums`; call `on_step(step)` after each
    batch; return the ids of unreadable images seen for the first time."""
    procs, device = plan.processes, plan.device
    learner.net.train()
    start, images_done, new_bad = time.perf_counter(), 0, []
    desc, show = f"epoch {epoch + 1}/{plan.epochs}", plan.progress and procs.is_main
    bar = tqdm(total=plan.steps, initial=start_step, desc=desc, unit="batch", disable=not show, leave=False)
    for step, (batch, images) in enumerate(epoch_batches(dataset, plan, epoch, start_step), start=start_step + 1):
        new_bad += bad_images.add(dataset.split, batch.bad)
        n = len(batch.labels)
        if n or procs.world > 1:  # with DDP every process joins each step, even with no readable image
            labels = batch.labels.to(device, non_blocking=True)
            with plan.precision.autocast():
                outputs = learner.net(images)
            loss, loss_share = plan.loss_fn(outputs, labels)  # type: ignore[arg-type]
            logits = merged_logits(outputs)
            learner.optimizer.zero_grad(set_to_none=True)
            learner.scaler.scale(loss).backward()
            learner.scaler.step(learner.optimizer)
            learner.scaler.update()
            sums.loss += loss_share
            sums.correct += (logits.argmax(1) == labels).sum().item()
            sums.images += n
            images_done += n
        bar.update(1)
        rate = images_done / max(time.perf_counter() - start, 1e-9)
        seen = max(sums.images, 1)
        bar.set_postfix(loss=f"{sums.loss / seen:.4f}", acc=f"{sums.correct / seen:.3f}", ips=f"{rate:.1f}")
        on_step(step)
    bar.close()
    return new_bad


def steps_per_epoch(n_images: int, batch_size: int, processes: Processes) -> int:
    """Batches per epoch and process (the shards are padded to equal length, as DistributedSampler does)."""
    shard = len(EpochSampler(n_images, seed=0, epoch=0, rank=processes.rank, world=processes.world))
    return -(-shard // batch_size)
