"""Linformer-ViT: the ViT shell of training/vit.py around `linformer.Linformer` (Wang et al. 2020).

As in vit-pytorch's `efficient.ViT`, which the study used: no embedding dropout, and the
Linformer's own feed-forward (4x dim) replaces the MLP, so `mlp_dim` plays no part.
"""

from __future__ import annotations

from linformer import Linformer

from training.vit import ViT


def build_linformer_vit(
    *,
    image_size: int,
    patch_size: int,
    num_classes: int,
    dim: int,
    depth: int,
    heads: int,
    k: int,
    shared_kv: bool,
    dropout: float = 0.0,
) -> ViT:
    seq_len = (image_size // patch_size) ** 2 + 1  # patches + cls token
    transformer = Linformer(
        dim=dim, seq_len=seq_len, depth=depth, heads=heads, k=k, share_kv=shared_kv, dropout=dropout
    )
    return ViT(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, transformer=transformer)
