"""Rotation and flip averaging for `galaxyvit evaluate --tta 8`: the 8 dihedral views of a batch, in torch.

The views are those of galaxyvit/tta.py (same order, identity first), taken of the preprocessed
crops; each goes through the model like any batch, and the answer is the mean of the views'
probabilities. `tta_summary` says what averaging changed: accuracy of the identity view alone
against the mean of all 8, and the spread (standard deviation across views of the winning class's
probability).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from galaxyvit.tta import DIHEDRAL, N_VIEWS, tta_probabilities

TTA_CHOICES = (1, N_VIEWS)


def dihedral_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (8, B, C, H, W): flip left-right (if the view flips), then rotate counter-clockwise,
    as galaxyvit.tta.dihedral on CHW arrays."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"the 8 views need square crops, got {tuple(images.shape[-2:])}")
    return torch.stack([torch.rot90(images.flip(-1) if flip else images, turns, (-2, -1)) for turns, flip in DIHEDRAL])


@torch.no_grad()
def view_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 8, K) softmax probabilities of each view (one forward pass per view: 8 batches of B)."""
    probs = [torch.softmax(model(view).float(), dim=1) for view in dihedral_batch(images)]
    return torch.stack(probs, dim=1)


def tta_summary(view_probs: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Accuracy of the identity view and of the 8-view mean, their difference, and the mean spread."""
    labels = np.asarray(labels)
    mean, spread = tta_probabilities(view_probs)
    one = float((view_probs[:, 0].argmax(1) == labels).mean()) if len(labels) else 0.0
    eight = float((mean.argmax(1) == labels).mean()) if len(labels) else 0.0
    return {
        "views": N_VIEWS,
        "n_images": len(labels),
        "accuracy_1_view": one,
        "accuracy_8_views": eight,
        "change": eight - one,
        "mean_spread": float(spread.mean()) if len(labels) else 0.0,
    }
