"""Model checkpoints: atomic writes, `weights_only=True` loads, and rebuilding a model from one.

`best.pt` (what export and evaluation consume) holds only tensors and plain data:
  format, model (state_dict), run (Run.to_dict()), epoch, valid_acc, class_names, class_weights
  (the loss weights used, or None), preprocessing (Preprocessing.to_dict()), hf_config (JSON string,
  vitbase only, else None).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from galaxyvit.classes import CLASS_NAMES
from training.families import family
from training.registry import Run

MODEL_FORMAT = "galaxyvit-model-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or not one of ours."""


def atomic_save(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (no pickle code execution); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong file type, unsafe pickle...
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {exc}") from None
    if not isinstance(data, dict) or "model" not in data or "run" not in data:
        raise CheckpointError(f"{path} is not a galaxyvit checkpoint (no 'model' and 'run' entries)")
    return data


def model_payload(
    model: nn.Module,
    run: Run,
    *,
    epoch: int,
    valid_acc: float,
    class_names: Sequence[str] = CLASS_NAMES,
    class_weights: Sequence[float] | None = None,
) -> dict:
    """The content of best.pt for a model of `run` (weights on CPU)."""
    hf = getattr(model, "hf", None)
    return {
        "format": MODEL_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "run": run.to_dict(),
        "epoch": int(epoch),
        "valid_acc": float(valid_acc),
        "class_names": list(class_names),
        "class_weights": None if class_weights is None else [float(w) for w in class_weights],
        "preprocessing": family(run.family).preprocessing(run).to_dict(),
        "hf_config": hf.config.to_json_string() if hf is not None else None,
    }


def save_model(
    path: str | Path,
    model: nn.Module,
    run: Run,
    *,
    epoch: int,
    valid_acc: float,
    class_names: Sequence[str] = CLASS_NAMES,
    class_weights: Sequence[float] | None = None,
) -> None:
    payload = model_payload(
        model, run, epoch=epoch, valid_acc=valid_acc, class_names=class_names, class_weights=class_weights
    )
    atomic_save(payload, path)


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in a checkpoint (eval mode, CPU) and return it with the checkpoint dict."""
    data = load_checkpoint(path)
    run = Run.from_dict(data["run"])
    model = family(run.family).rebuild(run, data)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit run {run.id}: {exc}") from None
    return model.eval(), data


# ---------------------------------------------------------------- resumable training state (last.pt)
# last.pt is written with a digest of its whole content and the previous one is kept as last.prev.pt:
# a file cut short or damaged after it was written is detected on load and the previous good one is used.

RESUME_FORMAT = "galaxyvit-resume-v1"


def state_digest(obj) -> str:
    """sha256 over every tensor's bytes and every plain value of a nested dict/list, in a fixed order."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for key in sorted(x, key=repr):
                h.update(repr(key).encode())
                feed(x[key])
        elif isinstance(x, list | tuple):
            h.update(f"L{len(x)}".encode())
            for item in x:
                feed(item)
        else:
            h.update(f"V{x!r}".encode())

    feed(obj)
    return h.hexdigest()


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_resumable(state: dict, path: str | Path) -> None:
    """Keep the current file as <name>.prev.pt, then write `state` (plus format and digest) atomically."""
    path = Path(path)
    payload = {**state, "format": RESUME_FORMAT}
    payload["digest"] = state_digest(payload)
    if path.is_file():
        os.replace(path, previous_path(path))
    atomic_save(payload, path)


def verify_resumable(path: str | Path) -> dict:
    """Load a resumable state and check its digest; CheckpointError if it is truncated, damaged or foreign."""
    data = load_checkpoint(path)
    if data.get("format") != RESUME_FORMAT or "digest" not in data:
        raise CheckpointError(f"{path} is not a resumable training state ({RESUME_FORMAT})")
    digest = data.pop("digest")
    if state_digest(data) != digest:
        raise CheckpointError(f"{path} is damaged: its content does not match the digest written with it")
    return data


def load_resumable(path: str | Path) -> tuple[dict, Path]:
    """The newest good state: `path`, or `<name>.prev.pt` if `path` is missing, truncated or damaged."""
    errors = []
    for candidate in (Path(path), previous_path(path)):
        try:
            data = verify_resumable(candidate)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            print(f"warning: {errors[0]}; resuming from {candidate} instead", file=sys.stderr)
        return data, candidate
    raise CheckpointError("no usable training state to resume from: " + "; ".join(errors))
