"""Non-galaxy images, CLS embeddings, the feature-space OOD score, and the flag on a briefly trained tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from galaxyvit.ood import (
    FeatureGaussians,
    OODRule,
    auroc,
    choose_method,
    fit_feature_gaussians,
    fit_ood_rule,
)
from galaxyvit.preprocess import Preprocessing, eval_array, eval_crop
from training.embeddings import head_of, logits_and_embeddings
from training.ood_images import OOD_KINDS, ood_images, write_ood_images
from training.synthetic import render_galaxy
from training.vit import build_vit


def test_every_kind_is_a_reproducible_rgb_image(tmp_path):
    first, again = ood_images(2, seed=5, size=128), ood_images(2, seed=5, size=128)
    assert [k for k, _ in first] == [k for k in OOD_KINDS for _ in range(2)]
    for (kind, image), (_, same) in zip(first, again):
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8, kind
        np.testing.assert_array_equal(image, same)
    assert not np.array_equal(first[0][1], first[1][1])  # two draws of a kind differ
    paths = write_ood_images(tmp_path, n_per_kind=1, size=64)
    assert sorted(p.name for p in paths) == sorted(f"{k}_0.png" for k in OOD_KINDS)
    with pytest.raises(ValueError, match="unknown kind"):
        ood_images(1, kinds=("cat",))


def test_kinds_look_like_what_they_claim():
    images = dict(ood_images(1, seed=0))
    assert images["flat_grey"].min() == images["flat_grey"].max()
    assert images["pure_noise"].std() > 60 and images["blank_sky"].max() < 60  # faint sky, no source
    star = images["single_star"].astype(float).sum(2)
    assert np.hypot(*(np.array(np.unravel_index(star.argmax(), star.shape)) - 212)) < 20  # star near the centre
    assert (images["saturated_star"].max(axis=2) >= 245).sum() > 50  # a core at the display's ceiling
    assert images["natural_scene"].mean() > 60  # daylight, not night sky
    crop = eval_crop(Image.fromarray(images["galaxy_edge"]), Preprocessing()).astype(float).sum(2)
    profile = [crop[:, :20].mean(), crop[:, -20:].mean(), crop[:20].mean(), crop[-20:].mean()]
    assert max(profile) > 2 * crop[92:132, 92:132].mean()  # the light is at one edge of the crop, not the centre


def tiny_vit(image_size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vit(image_size=image_size, patch_size=8, num_classes=8, dim=16, depth=2, heads=2, mlp_dim=16).eval()


def test_embeddings_are_the_head_input():
    model = tiny_vit()
    images = torch.randn(5, 3, 32, 32)
    logits, embeddings = logits_and_embeddings(model, images, batch_size=2)
    assert logits.shape == (5, 8) and embeddings.shape == (5, 16)
    np.testing.assert_allclose(logits, model(images).detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(head_of(model)(torch.from_numpy(embeddings)).detach().numpy(), logits, atol=1e-5)
    assert not model.mlp_head._forward_hooks


def test_vitbase_embeddings_are_the_classifier_input():
    from transformers import ViTConfig

    from training.vitbase import build_vitbase

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=16
    )
    model = build_vitbase(num_classes=8, pretrained=False, config=config).eval()
    images = torch.randn(3, 3, 32, 32)
    logits, embeddings = logits_and_embeddings(model, images)
    assert embeddings.shape == (3, 32)
    np.testing.assert_allclose(model.hf.classifier(torch.from_numpy(embeddings)).detach().numpy(), logits, atol=1e-5)


def test_feature_gaussians_measure_mahalanobis_distance(tmp_path):
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0])  # the second feature varies 10x more: a step along it counts 10x less
    labels = np.repeat([0, 1], 5000)
    centres = np.array([[0.0, 0.0], [100.0, 0.0]])
    embeddings = centres[labels] + rng.standard_normal((10000, 2)) * scale
    gaussians = fit_feature_gaussians(embeddings, labels)
    np.testing.assert_allclose(gaussians.means, centres, atol=0.5)
    scores = gaussians.score(np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 30.0], [100.0, 0.0]]))
    np.testing.assert_allclose(scores, [0, -9, -9, 0], atol=0.5)
    gaussians.save(tmp_path / "ood.npz")
    loaded = FeatureGaussians.load(tmp_path / "ood.npz")
    np.testing.assert_array_equal(loaded.precision, gaussians.precision)
    rule = fit_ood_rule(None, "mahalanobis", valid_embeddings=embeddings, gaussians=loaded)
    assert rule.valid_pass_rate >= 0.95 and OODRule.from_dict(rule.to_dict(), loaded) == rule
    assert not rule.in_distribution(None, np.array([[50.0, 0.0]]))[0]  # between the classes, far from both
    with pytest.raises(ValueError, match="needs its FeatureGaussians"):
        OODRule.from_dict(rule.to_dict())
    with pytest.raises(ValueError, match="CLS embeddings"):
        rule.scores(np.zeros((1, 8)))


def test_fewer_images_than_dimensions_still_invert():
    rng = np.random.default_rng(1)
    gaussians = fit_feature_gaussians(rng.normal(size=(20, 64)), np.arange(20) % 4)
    assert np.isfinite(gaussians.precision).all()


# ------------------------------------------------------------------- the flag on a briefly trained tiny model

RENDER = 212  # half-size cutouts; the crop keeps the study's 224/424 share of the field
PREP = Preprocessing(crop=112, size=112)


def galaxies(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(n) % 8
    images = [eval_array(Image.fromarray(render_galaxy(int(label), rng, RENDER)), PREP) for label in labels]
    return torch.from_numpy(np.stack(images)), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def trained_tiny_vit():
    """A 2-layer ViT trained for 30 epochs on 400 synthetic galaxies (random dihedral views), fixed seeds."""
    rng = np.random.default_rng(0)
    train, valid, test = galaxies(400, rng), galaxies(160, rng), galaxies(80, rng)
    torch.manual_seed(0)
    model = build_vit(image_size=112, patch_size=16, num_classes=8, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    order = torch.Generator().manual_seed(0)
    for _ in range(30):
        model.train()
        for batch in torch.randperm(len(train[0]), generator=order).split(32):
            images = torch.rot90(train[0][batch], int(torch.randint(4, (1,), generator=order)), (2, 3))
            if torch.rand(1, generator=order) < 0.5:
                images = images.flip(3)
            loss = torch.nn.functional.cross_entropy(model(images), train[1][batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval(), train, valid, test


def test_ood_flag_of_a_trained_tiny_model_rejects_blank_sky_and_noise(trained_tiny_vit):
    model, train, valid, test = trained_tiny_vit
    valid_logits, valid_embeddings = logits_and_embeddings(model, valid[0])
    assert (valid_logits.argmax(1) == valid[1].numpy()).mean() > 0.4  # it learned something (chance: 12.5%)
    _, train_embeddings = logits_and_embeddings(model, train[0])
    gaussians = fit_feature_gaussians(train_embeddings, train[1].numpy())

    kinds, images = zip(*ood_images(4, seed=0, size=RENDER))
    ood_batch = np.stack([eval_array(Image.fromarray(image), PREP) for image in images])
    ood_logits, ood_embeddings = logits_and_embeddings(model, ood_batch)
    method, aurocs = choose_method(valid_logits, ood_logits, valid_embeddings, ood_embeddings, gaussians)
    assert set(aurocs) == {"energy", "max_softmax", "mahalanobis"} and aurocs[method] == max(aurocs.values())

    rule = fit_ood_rule(valid_logits, method, valid_embeddings=valid_embeddings, gaussians=gaussians)
    assert rule.valid_pass_rate >= 0.95
    flags = rule.in_distribution(ood_logits, ood_embeddings)
    for kind in ("blank_sky", "pure_noise"):
        assert not any(flag for k, flag in zip(kinds, flags) if k == kind), (kind, method, aurocs)
    # and it is not rejecting everything: unseen test galaxies mostly pass
    test_logits, test_embeddings = logits_and_embeddings(model, test[0])
    assert rule.in_distribution(test_logits, test_embeddings).mean() >= 0.8
    galaxy_scores = rule.scores(test_logits, test_embeddings)
    assert auroc(galaxy_scores, rule.scores(ood_logits, ood_embeddings)) > 0.75
