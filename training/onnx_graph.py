"""Export-only module swaps that give ONNX Runtime a faster graph computing the same function.

`export_ready(model)` returns a rewritten deep copy; training code and checkpoints are untouched,
and the export's parity gate compares the ONNX output with the *original* PyTorch model.

1. Patch embedding (vit, linformer): `patchify` is a 6-D permute whose innermost axis is the
   colour channel; ORT's generic Transpose for that layout took ~15% of a batch-32 Linformer
   forward on this CPU. A Conv2d(kernel=stride=patch) with the Linear's weights reordered to
   (dim, c, p, p) is the same affine map and runs as one im2col GEMM.

2. Linformer attention: the linformer package projects keys and values along the sequence with
`einsum('bnd,nk->bkd')` and multiplies heads with two more einsums. Exported as-is, the graph
has 4 Einsum nodes per layer; ONNX Runtime's CPU Einsum transposes its inputs into scratch
buffers and then runs a batched GEMM, so the Linformer ran *slower* in ORT than in PyTorch eager.

The rewrite keeps the same weights and computes the same function:
  keys   = (x W_k^T) projected by P_k  ==  (P_k^T x) W_k^T      (associativity; fold the projection first)
  values = (x W_v^T) projected by P_v  ==  (P_v^T x) W_v^T
so the sequence projection is one MatMul of the constant (k, n) matrix P^T against x, and the
key/value Linear then runs on k rows instead of n (fewer FLOPs). The head products are MatMuls.
"""

from __future__ import annotations

import copy

import torch
from linformer.linformer import LinformerSelfAttention
from torch import nn

from training.vit import Attention, PatchEmbedding


class MatMulLinformerAttention(nn.Module):
    """Same parameters and outputs as LinformerSelfAttention (self-attention, full sequence), MatMul-only."""

    def __init__(self, attn: LinformerSelfAttention):
        super().__init__()
        if attn.to_k.out_features != attn.dim_head * attn.heads:
            raise ValueError("one_kv_head Linformer attention is not supported by the ONNX rewrite")
        self.seq_len, self.heads, self.dim_head = attn.seq_len, attn.heads, attn.dim_head
        self.to_q, self.to_k, self.to_out = attn.to_q, attn.to_k, attn.to_out
        self.share_kv = attn.share_kv
        self.to_v = attn.to_k if attn.share_kv else attn.to_v
        # (k, n) constants: P^T, so that P^T @ x is a plain (broadcast) MatMul
        self.register_buffer("proj_k_t", attn.proj_k.detach().t().contiguous())
        proj_v = attn.proj_k if attn.share_kv else attn.proj_v
        self.register_buffer("proj_v_t", proj_v.detach().t().contiguous())
        self.scale = attn.dim_head**-0.5

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        n, h, d_h = self.seq_len, self.heads, self.dim_head
        q = self.to_q(x).reshape(-1, n, h, d_h).transpose(1, 2)  # (b, h, n, d_h)
        x_k = torch.matmul(self.proj_k_t, x)  # (b, k, dim)
        keys = self.to_k(x_k)
        values = self.to_v(x_k if self.share_kv else torch.matmul(self.proj_v_t, x))
        k_len = self.proj_k_t.shape[0]
        keys = keys.reshape(-1, k_len, h, d_h).permute(0, 2, 3, 1)  # (b, h, d_h, k)
        values = values.reshape(-1, k_len, h, d_h).transpose(1, 2)  # (b, h, k, d_h)
        attn = (torch.matmul(q, keys) * self.scale).softmax(dim=-1)
        out = torch.matmul(attn, values).transpose(1, 2).reshape(-1, n, h * d_h)
        return self.to_out(out)


class SplitQKVAttention(nn.Module):
    """training.vit.Attention with to_qkv split into three Linears and explicit MatMul attention.

    The original reshapes the fused qkv projection to 5-D, permutes it and unbinds q, k, v: in ONNX a
    5-D Transpose plus a Split per layer. Here each of q, k, v comes from its own slice of the same
    weight and goes straight into the layout its MatMul wants (k as (b, h, d, n): no transpose later).
    """

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads = attn.heads
        inner = attn.to_qkv.out_features // 3
        self.dim_head = inner // attn.heads
        self.scale = self.dim_head**-0.5
        self.to_q, self.to_k, self.to_v = (
            _linear_from(attn.to_qkv.weight[i * inner : (i + 1) * inner]) for i in range(3)
        )
        self.to_out = attn.to_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, d = x.shape[1], self.heads, self.dim_head
        q = self.to_q(x).reshape(-1, n, h, d).transpose(1, 2)  # (b, h, n, d)
        k = self.to_k(x).reshape(-1, n, h, d).permute(0, 2, 3, 1)  # (b, h, d, n)
        v = self.to_v(x).reshape(-1, n, h, d).transpose(1, 2)  # (b, h, n, d)
        attn = (torch.matmul(q, k) * self.scale).softmax(dim=-1)
        return self.to_out(torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, h * d))


def _linear_from(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


class ConvPatchEmbedding(nn.Module):
    """training.vit.PatchEmbedding as a strided Conv2d: (B, C, H, W) -> (B, N, dim), same weights."""

    def __init__(self, embed: PatchEmbedding):
        super().__init__()
        linear = embed[1]
        p, dim = embed.patch_size, linear.out_features
        channels = linear.in_features // (p * p)
        self.conv = nn.Conv2d(channels, dim, kernel_size=p, stride=p)
        with torch.no_grad():
            # Linear input order is (p1, p2, c) (see patchify); Conv2d wants (c, p1, p2)
            self.conv.weight.copy_(linear.weight.reshape(dim, p, p, channels).permute(0, 3, 1, 2))
            self.conv.bias.copy_(linear.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).flatten(2).transpose(1, 2)


def export_ready(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with the swaps above applied where they fit (vitbase: none)."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LinformerSelfAttention):
                setattr(module, name, MatMulLinformerAttention(child))
            elif isinstance(child, Attention):
                setattr(module, name, SplitQKVAttention(child))
            elif isinstance(child, PatchEmbedding):
                setattr(module, name, ConvPatchEmbedding(child))
    return model
