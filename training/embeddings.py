"""The CLS embedding of an image: the vector the classification head reads (for similarity search, anomaly
hunting and the feature-space OOD score in galaxyvit/ood.py).

vit, linformer: the transformer's output at the CLS token, before the head's LayerNorm (`mlp_head`'s input).
vitbase: the final LayerNorm's output at the CLS token (the `classifier` Linear's input).
Both are taken with a forward hook on the head, so the logits are those of the model's own forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def head_of(model: nn.Module) -> nn.Module:
    """The module that turns the CLS embedding into logits."""
    if hasattr(model, "hf"):
        return model.hf.classifier
    if hasattr(model, "mlp_head"):
        return model.mlp_head
    raise TypeError(f"no classification head known for {type(model).__name__}")


@torch.no_grad()
def logits_and_embeddings(
    model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) logits and (N, D) CLS embeddings of preprocessed images (N, 3, H, W), in batches, eval mode."""
    if model.training:
        raise ValueError("embeddings need the model in eval mode (no dropout): call model.eval()")
    images = torch.as_tensor(images, dtype=torch.float32)
    seen: list[torch.Tensor] = []
    handle = head_of(model).register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    logits = []
    try:
        for start in range(0, len(images), batch_size):
            logits.append(model(images[start : start + batch_size]))
    finally:
        handle.remove()
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).float().numpy(), torch.cat(seen).float().numpy()
