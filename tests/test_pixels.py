"""The pixel check of the not-a-galaxy flag (galaxyvit/pixels.py): each feature reacts to the kind of image it is
for and not to galaxies; the pixel rule in an OOD rule; an export fits it and flags blank sky and survey edges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from galaxyvit.card import load_card
from galaxyvit.ood import OODRule, load_ood_rule
from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS
from galaxyvit.pixels import FEATURES, PixelRule, fit_pixel_rule, pixel_features
from galaxyvit.preprocess import Preprocessing, denormalize, eval_crop, normalize
from galaxyvit.store import stored_model_dir
from inference.scoring import Scorer
from training.ood_images import ood_images
from training.synthetic import NUM_CLASSES, render_galaxy

PREP = Preprocessing()


def crop_of(image: np.ndarray | Image.Image) -> np.ndarray:
    return eval_crop(image if isinstance(image, Image.Image) else Image.fromarray(image), PREP)


@pytest.fixture(scope="module")
def galaxies() -> np.ndarray:
    """(96, 224, 224, 3) crops of synthetic galaxies, every class (JPEG-free: the features must not need JPEG)."""
    rng = np.random.default_rng(3)
    return np.stack([crop_of(render_galaxy(i % NUM_CLASSES, rng)) for i in range(96)])


@pytest.fixture(scope="module")
def rule(galaxies: np.ndarray) -> PixelRule:
    """Fitted on 80 galaxies; the other 16 are new ones."""
    return fit_pixel_rule(pixel_features(galaxies[:80]), pixel_features(galaxies[80:]))


def sky(rng: np.random.Generator) -> np.ndarray:
    """Sky as the real cutouts show it: level about 5, sigma about 4.5 (docs/synthetic.md)."""
    return np.clip(rng.normal(5, 4.5, (224, 224, 3)), 0, 255)


def as_crop(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def hand_made(galaxy: np.ndarray) -> dict[str, np.ndarray]:
    """One crop per feature, made to have what that feature looks for (mostly a galaxy with something done to it)."""
    rng = np.random.default_rng(0)
    yy, xx = np.indices((224, 224)) - 111.5
    star = sky(rng) + 150 * np.exp(-0.5 * (yy**2 + xx**2) / 1.5**2)[..., None] * np.array([1.0, 0.9, 0.8])
    white = galaxy.copy()
    white[np.hypot(yy, xx) < 6] = 255
    edge = galaxy.copy()
    edge[:, :90] = 0
    shifted = galaxy.copy()
    shifted[..., 0] = np.roll(galaxy[..., 0], (8, 5), axis=(0, 1))
    column = galaxy.astype(float)
    column[:, 30:32, 2] += 120  # a bad column in one band
    spikes = galaxy.astype(float)
    for angle in np.deg2rad([20, 110, 200, 290]):  # four rays at right angles from the centre, 3 px wide
        r = np.arange(8, 110)
        for across in (-1, 0, 1):
            rows = np.rint(112 + r * np.sin(angle) + across * np.cos(angle)).astype(int)
            cols = np.rint(112 + r * np.cos(angle) - across * np.sin(angle)).astype(int)
            spikes[rows, cols] = np.maximum(spikes[rows, cols], 150)
    return {
        "faint_centre": as_crop(sky(rng)),
        "compact": as_crop(star),
        "peaky": as_crop(star),
        "white": white,
        "flat": edge,
        "band_offset": shifted,
        "column": as_crop(column),
        "spikes": as_crop(spikes),
    }


def test_each_feature_reacts_to_its_kind_and_not_to_galaxies(galaxies, rule):
    scale, centre = np.asarray(rule.scale), np.asarray(rule.centre)
    every_galaxy = (pixel_features(galaxies) - centre) / scale
    assert rule.n_fit == 80 and rule.valid_pass_rate >= 15 / 16  # new galaxies pass
    made = hand_made(galaxies[82])
    assert set(made) == set(FEATURES)
    for feature, crop in made.items():
        k = FEATURES.index(feature)
        z = (pixel_features([crop])[0] - centre) / scale
        assert z[k] > rule.threshold, (feature, z[k], rule.threshold)  # flagged by its feature
        assert z[k] > every_galaxy[:, k].max(), (feature, z[k], every_galaxy[:, k].max())  # beyond any galaxy


def test_features_are_the_same_for_the_eight_views(galaxies):
    from galaxyvit.tta import dihedral_views

    views = [np.ascontiguousarray(v) for v in dihedral_views(galaxies[0])]
    features = pixel_features(views)
    np.testing.assert_allclose(features, features[:1].repeat(8, axis=0), atol=0.1)
    with pytest.raises(ValueError, match="square"):  # too small for the features (the export fits no pixel rule)
        pixel_features(np.zeros((1, 64, 64, 3), np.uint8))


def test_crops_come_back_exactly_from_normalised_arrays(galaxies):
    """The catalogue engines score normalised batches: denormalize gives the service's uint8 crops back."""
    for prep in (PREP, Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))):
        every_value = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2).repeat(2, axis=0)
        for crop in (galaxies[:4], every_value):
            np.testing.assert_array_equal(denormalize(normalize(crop, prep), prep), crop)


def test_the_pixel_rule_joins_the_model_rule(rule, galaxies):
    model = OODRule("energy", threshold=2.0, keep=0.95, valid_pass_rate=0.95, n_valid=8)
    combined = OODRule("energy", 2.0, 0.95, 0.95, 8, pixels=PixelRule(**{**rule.__dict__, "model_scale": 0.5}))
    logits = np.log(np.full((3, 8), np.exp(3.0) / 8))  # logsumexp = 3: the energy score is 3, above 2
    logits[2] = np.log(np.exp(1.0) / 8)  # the third scores 1: below the model's threshold
    crops = np.stack([galaxies[41], as_crop(sky(np.random.default_rng(1))), galaxies[43]])
    assert model.pass_level == 2.0 and combined.pass_level == 0.0
    np.testing.assert_allclose(model.ood_scores(logits), [3.0, 3.0, 1.0])  # no pixel rule: today's score
    margins = rule.margin(crops)
    assert margins[0] >= 0 and margins[1] < 0 <= margins[2]
    scores = combined.ood_scores(logits, crops=crops)
    np.testing.assert_allclose(scores, np.minimum([2.0, 2.0, -2.0], margins))  # (score - 2) / 0.5 against margin
    assert combined.in_distribution(logits, crops=crops).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="crops"):
        combined.ood_scores(logits)
    again = OODRule.from_dict(json.loads(json.dumps(combined.to_dict())))
    assert again.pixels == combined.pixels
    assert OODRule.from_dict(model.to_dict()).pixels is None  # an older card's rule: no pixel rule
    stale = {**rule.to_dict(), "features": ["faint_centre"]}
    with pytest.raises(ValueError, match="features"):
        PixelRule.from_dict(stale)


def test_an_export_fits_the_pixel_rule_and_flags_blank_sky_and_survey_edges(tmp_path):
    """A tiny ViT exported with --valid-data on synthetic galaxies: its card holds the pixel rule, which passes
    the three real GZ2 cutouts and flags blank sky and survey-edge crops whatever the (untrained) model says."""
    import torch

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run
    from training.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", 120, seed=2, workers=1, progress=False)
    run = get_run("vit-110421").with_overrides(depth=1, dim=16, heads=2, mlp_dim=16)
    torch.manual_seed(0)
    save_model(tmp_path / "best.pt", build_model(run, pretrained=False).eval(), run, epoch=1, valid_acc=0.0)
    home = tmp_path / "home"
    export_checkpoint(tmp_path / "best.pt", tmp_path / "models", "px", valid_dir=data, ood_per_kind=1, home=home,
                      quiet=True, explain=False)  # fmt: skip
    folder = stored_model_dir("px", home)
    card = load_card(folder / "fp32.card.json")
    assert card.ood is not None and "pixels" in card.ood
    ood = load_ood_rule(folder, card)
    assert ood is not None and ood.pixels is not None
    pixels = ood.pixels
    assert pixels.n_fit > 50 and pixels.valid_pass_rate >= 0.9 and math.isfinite(pixels.model_scale)
    assert pixels.both_pass_rate is not None and pixels.both_pass_rate <= ood.valid_pass_rate
    real = np.stack([crop_of(Image.open(REAL_SAMPLE_IMAGES / name)) for name in REAL_SAMPLE_LABELS])
    assert (pixels.margin(real) >= 0).all()
    kinds = ("blank_sky", "survey_edge")
    odd = np.stack([crop_of(image) for _, image in ood_images(3, seed=1, kinds=kinds)])
    assert (pixels.margin(odd) < 0).all()
    scorer = Scorer.for_card(folder, card, calibrate=True)
    assert scorer.needs_crops
    logits = np.zeros((len(odd), len(card.class_names)), np.float32)
    embeddings = np.zeros((len(odd), 16), np.float32)
    answers = scorer.score(logits, embeddings, odd)
    assert [a["in_distribution"] for a in answers] == [False] * len(odd)
    assert all(a["ood_score"] < 0 for a in answers)
    # with 8-view averaging only the identity views are scored: the same scores, from their crops alone
    scored = [row % 2 == 0 for row in range(len(odd))]
    partial = scorer.score(logits, embeddings, odd[::2], scored)
    assert [a["ood_score"] for a in partial] == [a["ood_score"] if s else None for a, s in zip(answers, scored)]
    assert [a["in_distribution"] for a in partial] == [False if s else None for s in scored]
    assert [a["p"].tolist() for a in partial] == [a["p"].tolist() for a in answers]
