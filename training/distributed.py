"""Data-parallel training across processes launched by torchrun (one process alone otherwise).

Every process trains on its shard of each global batch; the loss each one backpropagates is scaled
so that DistributedDataParallel's gradient average equals the gradient of the *global* weighted
mean loss (sum over processes of the weighted per-image losses / sum over processes of the
weights), exactly what one process computes on the whole batch, whatever the class weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from training.data import Data, DataConfig, ensure_synthetic


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_of_batch(self, batch_size: int) -> int:
        """Images per process and step: the run's batch size is the global one."""
        if batch_size % self.world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {self.world} processes")
        return batch_size // self.world

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: `model` itself, or its DistributedDataParallel wrapper."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def all_reduce(self, values: list[float], device: torch.device) -> list[float]:
        """The sum over processes of each value (float64)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: object) -> list:
        """Every process's `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> Processes:
    """Initialise the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Processes(
        rank=dist.get_rank(),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def setup_device(device: str | None, threads: int | None, deterministic: bool, procs: Processes) -> torch.device:
    """The device of this process (its own GPU under torchrun), and the CPU threads it may use."""
    dev = torch.device(device or (f"cuda:{procs.local_rank}" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // procs.local_world))
    if deterministic:
        torch.use_deterministic_algorithms(True)
    return dev


def load_data_once(cfg: DataConfig, procs: Processes, progress: bool) -> Data:
    """The data; with several processes, only rank 0 writes the cached synthetic dataset (the others wait)."""
    if procs.world > 1 and cfg.kind == "synthetic":
        if procs.is_main:
            ensure_synthetic(cfg, progress=progress)
        procs.barrier()
    from training.prepared import load_training_data

    return load_training_data(cfg, quiet=not procs.is_main, progress=progress)


def default_workers(device: torch.device, local_world: int) -> int:
    """DataLoader workers per process: up to 8 on CUDA, one on CPU when there is a core to spare."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cpus // local_world - 1))
    return 1 if cpus // local_world >= 2 else 0


class GlobalWeightedLoss:
    """Weighted cross-entropy whose DDP-averaged gradient is that of the global weighted mean.

    Process r backpropagates world * sum_r(w_i * loss_i) / W, with W the weights summed over all
    processes; DDP divides the summed gradients by world, leaving the gradient of
    sum_all(w_i * loss_i) / W. With one process this is nn.CrossEntropyLoss(weight=w).
    """

    def __init__(self, class_weights: torch.Tensor, processes: Processes):
        self.class_weights = class_weights
        self.processes = processes

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(the loss to backpropagate, this process's share of global mean loss x images in the step).

        The shares summed over processes give mean loss x images, so the epoch's train loss comes out
        the same as with one process. A process with no readable image still joins the step.
        """
        per_image = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        weights = self.class_weights[labels]
        weight_sum, images = float(weights.sum()), float(len(labels))
        if self.processes.world > 1:
            weight_sum, images = self.processes.all_reduce([weight_sum, images], logits.device)
        weighted = (weights * per_image).sum()
        loss = weighted * self.processes.world / max(weight_sum, 1e-12)
        return loss, weighted.item() / max(weight_sum, 1e-12) * images
