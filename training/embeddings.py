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
    if hasattr(model, "fc"):  # resnet50
        return model.fc
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


class WithEmbedding(nn.Module):
    """`module` whose forward also returns the CLS embedding, second: (logits, embedding, *the other outputs).

    `module` returns the logits, or a tuple whose first element is the logits; `head` is the module its
    forward passes the CLS embedding to (`head_of(model)`). It traces to ONNX (the hook runs while tracing).
    """

    def __init__(self, module: nn.Module, head: nn.Module):
        super().__init__()
        self.module, self.head = module, head
        self.eval()  # the exporter restores a module's mode afterwards, and with it every submodule's

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            out = self.module(images)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"the head ran {len(seen)} times in one forward, expected once")
        first, rest = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
        return (first, seen[0], *rest)
