"""Attention maps: rollout arithmetic, recorded weights equal the forward's, and maps land on the galaxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from galaxyvit.preprocess import Preprocessing, eval_array
from training.attention import (
    AttentionMapsModule,
    attention_maps,
    attention_rollout,
    cls_patch_grid,
    linformer_patch_map,
    record_attention,
    upsample,
)
from training.linformer_vit import build_linformer_vit
from training.synthetic import render_galaxy
from training.vit import Attention, build_vit


def random_attention(rng: torch.Generator, b: int, h: int, n: int) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(b, h, n, n, generator=rng), dim=-1)


def test_rollout_rows_sum_to_one():
    rng = torch.Generator().manual_seed(0)
    layers = [random_attention(rng, 2, 4, 17) for _ in range(6)]
    rollout = attention_rollout(layers)
    assert rollout.shape == (2, 17, 17)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 17), atol=1e-5, rtol=0)
    assert (rollout >= 0).all()


def test_rollout_follows_a_constructed_attention_pattern_off_centre():
    """Every token keeps to itself except CLS, which looks at patch (2, 11) of a 14x14 grid: the map peaks there."""
    grid, n = 14, 14 * 14 + 1
    target = 1 + 2 * grid + 11
    attn = torch.eye(n).repeat(1, 3, 1, 1)
    attn[0, :, 0] = 0
    attn[0, :, 0, target] = 1.0
    rollout = attention_rollout([attn, attn, attn])
    grid_map = cls_patch_grid(rollout, grid)[0]
    assert grid_map.shape == (grid, grid)
    assert np.unravel_index(int(grid_map.argmax()), grid_map.shape) == (2, 11)
    # identity per layer halves what is mixed: CLS keeps (1/2)^3 of itself, the patch gets the rest
    assert grid_map.sum().item() == pytest.approx(1 - 0.5**3)


def test_rollout_of_uniform_attention_is_flat_over_patches():
    n = 1 + 4 * 4
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    grid_map = cls_patch_grid(attention_rollout([uniform] * 4), 4)[0]
    torch.testing.assert_close(grid_map, torch.full((4, 4), grid_map[0, 0].item()))


def tiny_vit(depth: int = 2, heads: int = 2, image_size: int = 32, patch_size: int = 8):
    torch.manual_seed(0)
    return build_vit(
        image_size=image_size, patch_size=patch_size, num_classes=8, dim=16, depth=depth, heads=heads, mlp_dim=16
    ).eval()


def test_recorded_vit_attention_is_the_one_the_forward_used():
    """softmax(q k^T / sqrt(d)) from the hook, times v, through to_out, gives each layer's actual output."""
    model = tiny_vit(depth=3)
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    images = torch.randn(2, 3, 32, 32)
    logits, layers, _ = record_attention(model, images)
    for h in handles:
        h.remove()
    assert len(layers) == 3
    for attn, (module, x, out) in zip(layers, seen):
        b, n, _ = x.shape
        v = module.to_qkv(x).reshape(b, n, 3, module.heads, -1).permute(2, 0, 3, 1, 4)[2]
        rebuilt = module.to_out(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1))
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model(images))


def test_vit_maps_shapes_and_logits():
    model = tiny_vit()
    images = torch.randn(3, 3, 32, 32)
    maps = attention_maps(model, images)
    assert maps.heads.shape == (3, 2, 4, 4) and maps.rollout.shape == (3, 4, 4)
    np.testing.assert_allclose(maps.logits, model(images).detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(maps.overview, maps.rollout)
    assert (maps.heads >= 0).all() and (maps.heads.sum(axis=(-1, -2)) <= 1 + 1e-6).all()
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_maps_refuse_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        attention_maps(tiny_vit().train(), torch.randn(1, 3, 32, 32))


def brightness_seeking_vit(contrast: float = 200.0, offset: float = 50.0):
    """A 224/16 ViT whose head 0 sends the CLS token to the brightest patch and head 1 (softly) to dark sky.

    Patch embedding: (mean pixel of the patch, offset, 0...). The attention layers change nothing
    (zero values, zero output), so every layer sees the same tokens and attends the same way.
    """
    torch.manual_seed(0)
    model = build_vit(image_size=224, patch_size=16, num_classes=8, dim=8, depth=2, heads=2, dim_head=4, mlp_dim=8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        embed = model.to_patch_embedding[1]
        embed.weight[0] = 1.0 / embed.in_features
        embed.bias[1] = offset
        model.cls_token[0, 0, 1] = offset
        for block, ff in model.transformer.layers:
            block.norm.weight.fill_(1.0)
            ff.norm.weight.fill_(1.0)
            qkv = block.fn.to_qkv.weight  # rows: q (head 0, head 1), k (head 0, head 1), v
            qkv[0, 1] = contrast  # head 0 query: +offset channel
            qkv[4, 1] = -contrast / 10  # head 1 query: -offset channel, softer
            qkv[8, 0] = qkv[12, 0] = 1.0  # keys: the brightness channel
        model.mlp_head[0].weight.fill_(1.0)
    return model.eval()


def sky_with_galaxy(top: int, left: int, size: int = 64, seed: int = 3) -> np.ndarray:
    """224x224 dark noisy sky with a synthetic galaxy cutout (its own field included) pasted at (top, left)."""
    rng = np.random.default_rng(seed)
    sky = np.clip(rng.normal((7.0, 6.0, 3.5), 3.0, (224, 224, 3)), 0, 255).astype(np.uint8)
    sky[top : top + size, left : left + size] = render_galaxy(0, rng, size)
    return sky


def test_map_of_an_off_centre_galaxy_peaks_on_it():
    model = brightness_seeking_vit()
    top, left = 20, 130  # patches rows 1-5, columns 8-12; the image centre is patch (7, 7)
    image = eval_array(Image.fromarray(sky_with_galaxy(top, left)), Preprocessing())
    maps = attention_maps(model, image[None])
    galaxy_rows, galaxy_cols = range(top // 16, (top + 64) // 16 + 1), range(left // 16, (left + 64) // 16 + 1)
    for grid_map in (maps.rollout[0], maps.heads[0, 0]):
        row, col = np.unravel_index(int(grid_map.argmax()), grid_map.shape)
        assert row in galaxy_rows and col in galaxy_cols, (row, col)
        assert max(abs(row - 7), abs(col - 7)) >= 3  # really off-centre, not a centre bias
    dark_seeking = maps.heads[0, 1]  # the heads are kept apart: head 1 looks away from the galaxy
    assert dark_seeking[row, col] < np.median(dark_seeking) < maps.heads[0, 0, row, col]
    assert upsample(maps.rollout[0], 224).shape == (224, 224)


def test_linformer_cls_output_is_the_back_projected_map_times_the_values():
    """The exact bookkeeping the value map claims: CLS output of a head = sum_t weight[t] * v_t."""
    torch.manual_seed(0)
    model = build_linformer_vit(
        image_size=32, patch_size=8, num_classes=8, dim=16, depth=2, heads=2, k=5, shared_kv=False
    ).eval()
    seen = []
    for m in model.modules():
        if m.__class__.__name__ == "LinformerSelfAttention":
            m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
    images = torch.randn(2, 3, 32, 32)
    logits, layers, projections = record_attention(model, images)
    assert [a.shape for a in layers] == [(2, 2, 5)] * 2
    for attn, projection, (module, x, out) in zip(layers, projections, seen):
        weights = linformer_patch_map(attn, projection)  # (b, h, n)
        values = module.to_v(x).reshape(2, 17, 2, -1).transpose(1, 2)  # (b, h, n, d_h)
        cls_out = torch.matmul(weights[:, :, None], values)[:, :, 0]  # (b, h, d_h)
        torch.testing.assert_close(module.to_out(cls_out.reshape(2, -1)), out[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model(images))
    maps = attention_maps(model, images)
    assert maps.rollout is None and maps.heads.shape == (2, 2, 4, 4) and maps.overview.shape == (2, 4, 4)
    assert maps.method == "linformer-value-projection"
    assert attention_maps(model, images, projection="key").method == "linformer-key-projection"


def test_linformer_shared_kv_uses_the_one_projection():
    torch.manual_seed(1)
    model = build_linformer_vit(
        image_size=32, patch_size=8, num_classes=8, dim=16, depth=1, heads=2, k=4, shared_kv=True
    ).eval()
    images = torch.randn(1, 3, 32, 32)
    np.testing.assert_allclose(attention_maps(model, images).heads, attention_maps(model, images, "key").heads)


def test_vitbase_attentions_under_eager_give_the_same_logits(tmp_path):
    from transformers import ViTConfig

    from training.vitbase import build_vitbase

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=64, patch_size=16
    )
    model = build_vitbase(num_classes=8, pretrained=False, config=config).eval()
    before = model.hf.config._attn_implementation
    images = torch.randn(2, 3, 64, 64)
    maps = attention_maps(model, images)
    assert model.hf.config._attn_implementation == before  # switched back after the call
    np.testing.assert_allclose(maps.logits, model(images).detach().numpy(), atol=1e-5)
    assert maps.heads.shape == (2, 4, 4, 4) and maps.rollout.shape == (2, 4, 4)
    _, layers, _ = record_attention(model, images)
    assert len(layers) == 3
    torch.testing.assert_close(attention_rollout(layers).sum(-1), torch.ones(2, 17), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["vit", "linformer", "vitbase"])
def test_maps_module_exports_to_onnx_with_the_same_outputs(tmp_path, family):
    """The maps as ONNX outputs (for a serving variant without torch): same numbers, any batch size."""
    import warnings

    import onnxruntime as ort

    torch.manual_seed(0)
    if family == "vit":
        model = tiny_vit()
    elif family == "linformer":
        model = build_linformer_vit(
            image_size=32, patch_size=8, num_classes=8, dim=16, depth=2, heads=2, k=5, shared_kv=False
        )
    else:
        from transformers import ViTConfig

        from training.vitbase import build_vitbase

        config = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        model = build_vitbase(num_classes=8, pretrained=False, config=config)
    module = AttentionMapsModule(model.eval())
    names = ["logits", "heads", "overview"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, 32, 32),),
            str(tmp_path / "maps.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
        )
    session = ort.InferenceSession(str(tmp_path / "maps.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 32, 32)
    onnx_outputs = session.run(names, {"images": images.numpy()})
    maps = attention_maps(model, images)
    expected = [maps.logits, maps.heads, maps.overview]
    for name, got, want in zip(names, onnx_outputs, expected):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
