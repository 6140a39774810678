"""Attention maps of the three model families: what the CLS token looks at, on the patch grid.

For ViT (training/vit.py) and ViT-Base (Hugging Face) two maps per image:
  heads:   the last layer's attention from the CLS token to every patch, one (g, g) map per head;
  rollout: attention rollout over all layers (Abnar & Zuidema 2020, "Quantifying Attention Flow in
           Transformers"): average the heads of each layer, add the identity for the residual path,
           renormalise the rows, and multiply the layers' matrices; the CLS row, patches only.
g is image_size / patch_size (14 for patch 16 at 224).

The scratch ViT computes attention with `scaled_dot_product_attention`, which returns no weights, so
a forward hook on every attention layer recomputes softmax(q k^T / sqrt(d)) from the layer's own
input with the layer's own `to_qkv`; the model's forward (and so its logits) is untouched. ViT-Base
is run with `output_attentions=True` under eager attention (switched on for the call, then back).

The Linformer (linformer==0.2.3) has no patch-to-patch attention: each layer projects the n keys
and values along the sequence to k tokens with learned (n, k) matrices E (keys, `proj_k`) and F
(values, `proj_v`; F = E with shared_kv), and the CLS token attends over those k mixtures. See
`linformer_patch_map` for how the CLS attention is carried back to patches and what that map means.
It has no rollout: there its overview map is the head mean of the last layer's patch maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from linformer.linformer import Linformer, LinformerSelfAttention
from torch import nn

from training.vit import Attention, Transformer, ViT


def attention_rollout(layers: list[torch.Tensor]) -> torch.Tensor:
    """(B, N, N) rollout of per-layer attentions [(B, H, N, N), first layer first]; every row sums to 1."""
    rollout = None
    for attn in layers:
        mixed = attn.mean(dim=1)  # average the heads
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)  # residual path
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else torch.matmul(mixed, rollout)
    if rollout is None:
        raise ValueError("attention rollout needs at least one layer")
    return rollout


def cls_patch_grid(matrix: torch.Tensor, grid: int) -> torch.Tensor:
    """The CLS row of (..., N, N) attention without the CLS column (nor a distillation token, last: training/
    distill.py), as (..., grid, grid) in patch order."""
    if matrix.shape[-1] - 1 - grid * grid not in (0, 1):
        raise ValueError(f"{matrix.shape[-1] - 1} tokens after the CLS do not form a {grid}x{grid} grid")
    row = matrix[..., 0, 1 : 1 + grid * grid]
    return row.reshape(*row.shape[:-1], grid, grid)


def linformer_patch_map(cls_attention: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Carry CLS attention over k projected tokens back to the n tokens: (..., k) x (n, k) -> (..., n).

    weight[t] = sum_j attention[j] * projection[t, j].

    With the value projection F this is exact bookkeeping: the head's CLS output is
    sum_j attention[j] * (sum_t F[t, j] v_t) = sum_t weight[t] v_t, so weight[t] is how much of
    token t's value the CLS token takes in this layer. With the key projection E it says which
    tokens make up the keys the CLS query matched. Either way, unlike softmax attention, the
    weights are signed and need not sum to 1 (E and F are free learned matrices): a large
    negative weight is as strong a use of a patch as a large positive one, with the opposite
    sign. It is not a distribution over patches, it is one layer only, and it says nothing about
    how the other layers mixed the tokens before (which is why there is no Linformer rollout).
    """
    return torch.matmul(cls_attention, projection.transpose(0, 1))


@dataclass
class AttentionMaps:
    """Maps for a batch: logits (B, C); heads (B, H, g, g); rollout (B, g, g), None for the Linformer."""

    logits: np.ndarray
    heads: np.ndarray
    rollout: np.ndarray | None
    method: str  # "rollout" or "linformer-<value|key>-projection"

    @property
    def overview(self) -> np.ndarray:
        """(B, g, g): the rollout, or for the Linformer the head mean of the last layer's maps."""
        return self.rollout if self.rollout is not None else self.heads.mean(axis=1)


class _Recorder:
    """Forward hooks that record, per attention layer, the CLS row needed for the maps.

    vit: the full softmax attention (B, H, N, N) of every layer (rollout needs all of it).
    linformer: the CLS attention over the k projected tokens (B, H, k) and the chosen projection.
    """

    def __init__(self, model: ViT, projection: str):
        self.layers: list[torch.Tensor] = []
        self.projections: list[torch.Tensor] = []
        self.projection = projection
        if isinstance(model.transformer, Transformer):
            kind, hook = Attention, self._vit_hook
        elif isinstance(model.transformer, Linformer):
            kind, hook = LinformerSelfAttention, self._linformer_hook
        else:
            raise TypeError(f"no attention maps for a ViT around {type(model.transformer).__name__}")
        self.handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kind)]

    def _vit_hook(self, module: Attention, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0]
        b, n, _ = x.shape
        q, k, _ = module.to_qkv(x).reshape(b, n, 3, module.heads, -1).permute(2, 0, 3, 1, 4)
        self.layers.append(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1))

    def _linformer_hook(self, module: LinformerSelfAttention, inputs: tuple[torch.Tensor], output) -> None:
        x = inputs[0]
        b, n, _ = x.shape
        h, d_h, k = module.heads, module.dim_head, module.k
        queries = module.to_q(x[:, :1]).reshape(b, 1, h, d_h).transpose(1, 2)  # CLS only: (b, h, 1, d_h)
        keys = torch.einsum("bnd,nk->bkd", module.to_k(x), module.proj_k[:n])
        keys = keys.reshape(b, k, -1, d_h).transpose(1, 2).expand(-1, h, -1, -1)  # (b, h, k, d_h)
        self.layers.append(torch.softmax(torch.matmul(queries, keys.transpose(-1, -2)) * d_h**-0.5, dim=-1)[:, :, 0])
        use_key = self.projection == "key" or module.share_kv
        self.projections.append((module.proj_k if use_key else module.proj_v)[:n].detach())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _grid_of(model: nn.Module) -> int:
    if hasattr(model, "hf"):
        config = model.hf.config
        return config.image_size // config.patch_size
    return int(round((model.pos_embedding.shape[1] - 1) ** 0.5))


def family_of(model: nn.Module) -> str:
    """'vitbase', 'vit' or 'linformer', from the module structure."""
    if hasattr(model, "hf"):
        return "vitbase"
    if isinstance(model, ViT) and isinstance(model.transformer, Transformer):
        return "vit"
    if isinstance(model, ViT) and isinstance(model.transformer, Linformer):
        return "linformer"
    raise TypeError(f"no attention maps for {type(model).__name__}")


def _hf_attentions(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ViT-Base logits and per-layer attentions (B, H, N, N), under eager attention for this call only."""
    hf = model.hf
    before = hf.config._attn_implementation
    if before != "eager":
        hf.set_attn_implementation("eager")
    try:
        out = hf(pixel_values=images, output_attentions=True)
    finally:
        if before != "eager":
            hf.set_attn_implementation(before)
    return out.logits, list(out.attentions)


@torch.no_grad()
def record_attention(
    model: nn.Module, images: torch.Tensor | np.ndarray, projection: str = "value"
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The model's logits and, per layer (first first), what its attention did on `images`.

    vit, vitbase: layers are the softmax attentions (B, H, N, N); projections is empty.
    linformer: layers are the CLS attentions over the k projected tokens (B, H, k); projections the
    matching (n, k) value (or key) projections.
    """
    if projection not in ("value", "key"):
        raise ValueError(f"projection must be 'value' or 'key', not {projection!r}")
    if model.training:
        raise ValueError("attention maps need the model in eval mode (no dropout): call model.eval()")
    images = torch.as_tensor(images, dtype=torch.float32)
    if family_of(model) == "vitbase":
        logits, layers = _hf_attentions(model, images)
        return logits, layers, []
    recorder = _Recorder(model, projection)
    try:
        logits = model(images)
    finally:
        recorder.close()
    return logits, recorder.layers, recorder.projections


class AttentionMapsModule(nn.Module):
    """`model` with its maps as outputs: forward(images) -> (logits (B, C), heads (B, H, g, g), overview (B, g, g)).

    overview is the rollout, or for the Linformer the head mean of the last layer's maps. The model's
    own forward computes the logits. It traces to ONNX (torch.onnx.export with dynamo=False, dynamic
    batch): the hooks run while tracing, so the graph holds the recomputed softmax and the rollout.
    """

    def __init__(self, model: nn.Module, projection: str = "value"):
        super().__init__()
        if model.training:
            raise ValueError("attention maps need the model in eval mode (no dropout): call model.eval()")
        self.model, self.projection = model, projection
        self.family, self.grid = family_of(model), _grid_of(model)
        self.eval()  # like the model; an exporter restores this mode afterwards

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, layers, projections = record_attention(self.model, images, self.projection)
        if self.family == "linformer":
            last = linformer_patch_map(layers[-1], projections[-1])  # (B, H, n) over CLS + patches
            patches = last[..., 1 : 1 + self.grid**2]  # without the CLS and a distillation token
            heads = patches.reshape(last.shape[0], last.shape[1], self.grid, self.grid)
            return logits, heads, heads.mean(dim=1)
        return logits, cls_patch_grid(layers[-1], self.grid), cls_patch_grid(attention_rollout(layers), self.grid)


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor | np.ndarray, projection: str = "value") -> AttentionMaps:
    """Logits and attention maps of a batch of preprocessed images (B, 3, H, W), model in eval mode.

    `projection` ("value" or "key") is the Linformer matrix used to carry attention back to patches
    (see `linformer_patch_map`); with shared_kv both are the same matrix. Other families ignore it.
    """
    module = AttentionMapsModule(model, projection)
    logits, heads, overview = (t.float().numpy() for t in module(torch.as_tensor(images, dtype=torch.float32)))
    if module.family == "linformer":
        return AttentionMaps(logits, heads, None, f"linformer-{projection}-projection")
    return AttentionMaps(logits, heads, overview, "rollout")


def upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """A (g, g) map as (size, size), each patch a constant block (nearest), for overlays at crop resolution."""
    g = grid_map.shape[-1]
    if size % g:
        raise ValueError(f"size {size} is not a multiple of the {g}x{g} grid")
    return np.kron(grid_map, np.ones((size // g, size // g), grid_map.dtype))
