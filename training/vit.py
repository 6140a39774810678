"""ViT in the 2021 vit-pytorch layout (Dosovitskiy et al.), as trained from scratch in the study.

The study used vit-pytorch 0.19-0.26 (runs from October 2021 to January 2022): patch flatten + one
Linear, a cls token, a learned position embedding, pre-norm blocks (to_qkv without bias, output
Linear with bias, dim_head 64, GELU MLP), no final norm, and a LayerNorm + Linear head.

Training mode matches that version too: dropout after the attention output projection, in the
feed-forward and on the embeddings, but none on the attention weights (vit-pytorch added that in
0.30.0, March 2022, after the study).

`state_dict()` keys are those of 2021 `vit_pytorch.vit.ViT` (and `vit_pytorch.efficient.ViT` for the
Linformer shell), so a checkpoint saved by the study's notebooks loads with `load_state_dict`:
  to_patch_embedding.1.{weight,bias}, pos_embedding, cls_token,
  transformer.layers.<i>.0.norm.*, .0.fn.to_qkv.weight, .0.fn.to_out.0.*,
  transformer.layers.<i>.1.norm.*, .1.fn.net.0.*, .1.fn.net.3.*, mlp_head.0.*, mlp_head.1.*
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), the order of einops 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class Patchify(nn.Module):
    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)


class PatchEmbedding(nn.Sequential):
    """Patchify then Linear, as 2021 vit-pytorch's Sequential(Rearrange, Linear): keys `1.weight`, `1.bias`."""

    def __init__(self, patch_size: int, channels: int, dim: int):
        super().__init__(Patchify(patch_size), nn.Linear(channels * patch_size * patch_size, dim))
        self.patch_size = patch_size
        self.register_load_state_dict_pre_hook(_rename_earlier_linear_keys)


def _rename_earlier_linear_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written by earlier versions of this file named the Linear `linear`; load them too."""
    for name in ("weight", "bias"):
        old = f"{prefix}linear.{name}"
        if old in state_dict:
            state_dict[f"{prefix}1.{name}"] = state_dict.pop(old)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout)) if project_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # no dropout on the attention weights (2021)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout=dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class ViT(nn.Module):
    """Vision transformer with a cls-token head. `transformer` may be any (B, N, dim) -> (B, N, dim) module."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        num_classes: int,
        dim: int,
        transformer: nn.Module,
        channels: int = 3,
        emb_dropout: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.to_patch_embedding = PatchEmbedding(patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = transformer
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.to_patch_embedding(images)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1) + self.pos_embedding
        x = self.transformer(self.dropout(x))
        return self.mlp_head(x[:, 0])


def build_vit(
    *,
    image_size: int,
    patch_size: int,
    num_classes: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    dim_head: int = 64,
    dropout: float = 0.0,
    emb_dropout: float = 0.0,
) -> ViT:
    transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
    return ViT(
        image_size=image_size,
        patch_size=patch_size,
        num_classes=num_classes,
        dim=dim,
        transformer=transformer,
        emb_dropout=emb_dropout,
    )
