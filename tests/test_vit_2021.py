"""The scratch ViT and Linformer-ViT against the 2021 vit-pytorch (0.19-0.26) that the study trained with.

The 2021 key layout below was read from the released vit-pytorch 0.19.6, 0.22.0 and 0.26.7 wheels
(vit_pytorch/vit.py and vit_pytorch/efficient.py are identical in layout across them). The reference
forwards are written here from that layout with einops and torch.nn.functional, independently of
training/vit.py.
"""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from linformer import Linformer
from torch import nn

from training.linformer_vit import build_linformer_vit
from training.models import build_model
from training.registry import get_run
from training.vit import build_vit

TINY = dict(image_size=32, patch_size=8, num_classes=8, dim=32, depth=2, heads=4, mlp_dim=48, dim_head=16)


def vit_2021_shapes(*, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, dim_head, channels=3):
    """Every key of 2021 `vit_pytorch.vit.ViT(...).state_dict()` with its shape."""
    patch_dim = channels * patch_size**2
    num_patches = (image_size // patch_size) ** 2
    inner = heads * dim_head
    shapes = {
        "pos_embedding": (1, num_patches + 1, dim),
        "cls_token": (1, 1, dim),
        "to_patch_embedding.1.weight": (dim, patch_dim),
        "to_patch_embedding.1.bias": (dim,),
    }
    for i in range(depth):
        layer = f"transformer.layers.{i}"
        shapes |= {
            f"{layer}.0.norm.weight": (dim,),
            f"{layer}.0.norm.bias": (dim,),
            f"{layer}.0.fn.to_qkv.weight": (3 * inner, dim),
            f"{layer}.0.fn.to_out.0.weight": (dim, inner),
            f"{layer}.0.fn.to_out.0.bias": (dim,),
            f"{layer}.1.norm.weight": (dim,),
            f"{layer}.1.norm.bias": (dim,),
            f"{layer}.1.fn.net.0.weight": (mlp_dim, dim),
            f"{layer}.1.fn.net.0.bias": (mlp_dim,),
            f"{layer}.1.fn.net.3.weight": (dim, mlp_dim),
            f"{layer}.1.fn.net.3.bias": (dim,),
        }
    shapes |= {
        "mlp_head.0.weight": (dim,),
        "mlp_head.0.bias": (dim,),
        "mlp_head.1.weight": (num_classes, dim),
        "mlp_head.1.bias": (num_classes,),
    }
    return shapes


def random_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.2 for k, shape in shapes.items()}


def embed_2021(sd: dict, images: torch.Tensor, patch_size: int) -> torch.Tensor:
    x = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
    x = F.linear(x, sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"])
    cls = sd["cls_token"].expand(x.shape[0], -1, -1)
    return torch.cat((cls, x), dim=1) + sd["pos_embedding"]


def head_2021(sd: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.layer_norm(x[:, 0], x.shape[-1:], sd["mlp_head.0.weight"], sd["mlp_head.0.bias"])
    return F.linear(x, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


def vit_2021_forward(sd: dict, images: torch.Tensor, *, patch_size: int, depth: int, heads: int) -> torch.Tensor:
    """Eval-mode 2021 vit_pytorch.vit.ViT, computed from its state_dict."""
    x = embed_2021(sd, images, patch_size)
    dim = x.shape[-1]
    for i in range(depth):
        p = f"transformer.layers.{i}"
        h = F.layer_norm(x, (dim,), sd[f"{p}.0.norm.weight"], sd[f"{p}.0.norm.bias"])
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (h @ sd[f"{p}.0.fn.to_qkv.weight"].T).chunk(3, -1)
        )
        attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        out = rearrange(attn @ v, "b h n d -> b n (h d)")
        x = F.linear(out, sd[f"{p}.0.fn.to_out.0.weight"], sd[f"{p}.0.fn.to_out.0.bias"]) + x
        h = F.layer_norm(x, (dim,), sd[f"{p}.1.norm.weight"], sd[f"{p}.1.norm.bias"])
        h = F.gelu(F.linear(h, sd[f"{p}.1.fn.net.0.weight"], sd[f"{p}.1.fn.net.0.bias"]))
        x = F.linear(h, sd[f"{p}.1.fn.net.3.weight"], sd[f"{p}.1.fn.net.3.bias"]) + x
    return head_2021(sd, x)


def zero_dropout(model: nn.Module) -> int:
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in dropouts:
        m.p = 0.0
    return len(dropouts)


@pytest.mark.parametrize("run_id", ["vit-110321", "linformer-010522"])
def test_training_mode_has_no_dropout_outside_nn_dropout(run_id):
    """With every nn.Dropout at p=0, training mode is deterministic: no hidden dropout on attention weights."""
    run = get_run(run_id)
    assert run.dropout and run.dropout > 0  # the run's dropout is really there to switch off
    torch.manual_seed(0)
    model = build_model(run).train()
    images = torch.randn(2, 3, run.image_size, run.image_size)
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))  # the run's dropout is live in training mode
        assert zero_dropout(model) > 0
        assert torch.equal(model(images), model(images))


def test_run_dropout_stays_on_output_projection_feedforward_and_embeddings():
    run = get_run("vit-110321")
    model = build_model(run)
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert rates["dropout"] == run.emb_dropout
    assert rates["transformer.layers.0.0.fn.to_out.1"] == run.dropout
    assert rates["transformer.layers.0.1.fn.net.2"] == rates["transformer.layers.0.1.fn.net.4"] == run.dropout
    assert len(rates) == 1 + 3 * run.depth


def test_vit_state_dict_is_the_2021_layout():
    model = build_vit(**TINY)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == vit_2021_shapes(**TINY)


@pytest.mark.parametrize("batch", [1, 3])
def test_vit_2021_state_dict_round_trip(batch):
    state = random_state(vit_2021_shapes(**TINY), seed=1)
    model = build_vit(**TINY).eval()
    model.load_state_dict(state, strict=True)
    images = torch.randn(batch, 3, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        ours = model(images)
        reference = vit_2021_forward(state, images, patch_size=8, depth=TINY["depth"], heads=TINY["heads"])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    again = build_vit(**TINY)
    again.load_state_dict(model.state_dict())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())


def test_linformer_vit_2021_state_dict_round_trip():
    """2021 vit_pytorch.efficient.ViT(transformer=Linformer(...)): the shell's keys and the package's own."""
    cfg = dict(image_size=32, patch_size=8, num_classes=8, dim=32, depth=2, heads=4, k=8)
    seq_len = (32 // 8) ** 2 + 1
    torch.manual_seed(2)
    linformer = Linformer(dim=32, seq_len=seq_len, depth=2, heads=4, k=8, share_kv=False).eval()
    shell = vit_2021_shapes(**{**TINY, "depth": 0})
    state = random_state(shell, seed=3) | {f"transformer.{k}": v for k, v in linformer.state_dict().items()}

    model = build_linformer_vit(**cfg, shared_kv=False).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = head_2021(state, linformer(embed_2021(state, images, 8)))
        torch.testing.assert_close(model(images), reference, rtol=1e-5, atol=1e-5)


def test_checkpoints_with_the_earlier_patch_embedding_name_still_load():
    model = build_vit(**TINY).eval()
    old = {k.replace("to_patch_embedding.1.", "to_patch_embedding.linear."): v for k, v in model.state_dict().items()}
    assert "to_patch_embedding.linear.weight" in old
    again = build_vit(**TINY).eval()
    again.load_state_dict(old, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
