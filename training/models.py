"""Build the model of any registered run (the family registry, training/families.py, knows how)."""

from __future__ import annotations

import torch
from torch import nn

from galaxyvit.classes import NUM_CLASSES
from training.families import family
from training.registry import Run


def build_model(
    run: Run, *, num_classes: int = NUM_CLASSES, pretrained: bool = True, weights: str | None = None
) -> nn.Module:
    """The run's architecture. For vitbase, `pretrained`/`weights` choose where the backbone comes from."""
    return family(run.family).build(run, num_classes, pretrained, weights)


def count_trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_params(run: Run) -> int:
    """Trainable parameters of a run's model, built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        model = build_model(run, pretrained=False)
    return count_trainable_params(model)
