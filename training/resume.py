"""last.pt: everything an interrupted run needs to continue to the very weights of an uninterrupted one.

Besides the model, optimiser, scheduler and loss scaler, last.pt holds the loop's progress (epoch,
step, best accuracy, history: TrainState.shared() of training/train.py) and, for every process,
its RNG states and running sums. Data order and augmentation derive from (seed, epoch, index), so
with the RNG states restored the resumed run draws what the uninterrupted one would have drawn.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import cast

import numpy as np
import torch

from training.checkpoint import CheckpointError, load_resumable, previous_path, save_resumable
from training.distributed import Processes
from training.epoch import Learner
from training.registry import Run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states as tensors and plain lists (torch.load(weights_only=True) safe)."""
    name, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state(legacy=True))
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_last(
    path: Path, learner: Learner, progress: dict, sums: list[float], processes: Processes, *, about: dict
) -> None:
    """Write last.pt (rank 0), with every process's RNG states and running sums.

    `progress` is the loop's state (the same on every process), `about` the run, data, seed and precision.
    """
    ranks = processes.gather({"rng": rng_state(), "sums": list(sums)})
    if processes.is_main:
        save_resumable({**about, **learner.state_dict(), "ranks": ranks, **progress}, path)


def load_last(path: Path, run: Run, precision: str, learner: Learner, processes: Processes) -> dict | None:
    """Restore the learner and this process's RNG states from last.pt (or last.prev.pt); return the
    saved state, or None when there is nothing to resume. A different run configuration, precision or
    number of processes is an error: the run would not continue as it started."""
    if not (path.exists() or previous_path(path).exists()):
        if processes.is_main:
            print(f"nothing to resume in {path.parent}; starting {run.id} from scratch", file=sys.stderr)
        return None
    saved, used = load_resumable(path)
    if Run.from_dict(saved["run"]).with_overrides(epochs=run.epochs) != run:
        raise CheckpointError(f"{used} belongs to a different run configuration than {run.id} with these options")
    if saved.get("precision", precision) != precision:  # files of older versions do not say
        raise CheckpointError(f"{used} was trained in {saved['precision']}, not in --precision {precision}")
    learner.load_state_dict(saved)
    if len(saved["ranks"]) != processes.world:
        raise CheckpointError(f"{used} was written by {len(saved['ranks'])} processes, this run has {processes.world}")
    set_rng_state(saved["ranks"][processes.rank]["rng"])
    if processes.is_main:
        print(f"resuming {run.id} from {used}: epoch {saved['epoch']}, step {saved['step']}", file=sys.stderr)
    return saved
