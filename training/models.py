"""Build the model of any registered run."""

from __future__ import annotations

import torch
from torch import nn

from galaxyvit.classes import NUM_CLASSES
from training.linformer_vit import build_linformer_vit
from training.registry import Run
from training.vit import build_vit
from training.vitbase import DEFAULT_WEIGHTS, build_vitbase


def build_model(
    run: Run, *, num_classes: int = NUM_CLASSES, pretrained: bool = True, weights: str | None = None
) -> nn.Module:
    """The run's architecture. For vitbase, `pretrained`/`weights` choose where the backbone comes from."""
    if run.family == "vit":
        return build_vit(
            image_size=run.image_size,
            patch_size=run.patch_size,
            num_classes=num_classes,
            dim=run.dim,
            depth=run.depth,
            heads=run.heads,
            mlp_dim=run.mlp_dim,
            dropout=run.dropout or 0.0,
            emb_dropout=run.emb_dropout or 0.0,
        )
    if run.family == "linformer":
        return build_linformer_vit(
            image_size=run.image_size,
            patch_size=run.patch_size,
            num_classes=num_classes,
            dim=run.dim,
            depth=run.depth,
            heads=run.heads,
            k=run.k,
            shared_kv=bool(run.shared_kv),
            dropout=run.dropout or 0.0,
        )
    if run.family == "vitbase":
        return build_vitbase(
            num_classes=num_classes,
            fine_tune=run.fine_tune is not False,
            weights=weights or DEFAULT_WEIGHTS,
            pretrained=pretrained,
        )
    raise ValueError(f"unknown model family {run.family!r}")


def count_trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_params(run: Run) -> int:
    """Trainable parameters of a run's model, built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        model = build_model(run, pretrained=False)
    return count_trainable_params(model)
