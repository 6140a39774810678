"""Linformer-ViT: the ViT shell of training/vit.py around `linformer.Linformer` (Wang et al. 2020).

As in 2021 vit-pytorch's `efficient.ViT`, which the study used: no embedding dropout, and the
Linformer's own feed-forward (4x dim) replaces the MLP, so `mlp_dim` plays no part. The shell adds
no dropout of its own; the run's `dropout` goes to the linformer package (its attention weights,
feed-forward), whose internals are the package's, as they were for the study. `state_dict()` keys
are the 2021 `efficient.ViT` ones: `to_patch_embedding.1.*`, `pos_embedding`, `cls_token`,
`transformer.<the Linformer's own keys>`, `mlp_head.0.*`, `mlp_head.1.*`.
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
