"""The survey artefacts among the non-galaxy kinds (training/oddities.py) and the leave-one-kind-out measure."""

from __future__ import annotations

import numpy as np
import pytest

from galaxyvit.ood import FeatureGaussians, leave_one_kind_out
from training.oddities import KINDS
from training.ood_images import OOD_KINDS, ood_images


def test_the_artefact_kinds_are_non_galaxy_kinds_and_look_like_what_they_claim() -> None:
    assert set(KINDS) <= set(OOD_KINDS) and len(OOD_KINDS) == 14
    images = dict(ood_images(1, seed=0, kinds=tuple(KINDS)))
    page = images["text_page"].astype(float)
    assert (page.mean() > 150) != (page.mean() < 80)  # a light or a dark page, not a sky
    edge = images["survey_edge"]
    assert (edge.max(axis=2) == 0).mean() > 0.3  # a large part of it is empty
    trail = images["satellite_trail"].astype(float)
    assert (trail.max(axis=2) > 60).mean() > 0.01  # a line crosses the field
    shifted = images["misregistered"].astype(float)
    centre = shifted[162:262, 162:262]
    peaks = [np.unravel_index(centre[..., k].argmax(), centre.shape[:2]) for k in range(3)]
    assert max(np.hypot(*np.subtract(a, b)) for a in peaks for b in peaks) >= 4  # a band's peak is elsewhere
    assert (images["star_on_galaxy"].min(axis=2) >= 245).sum() > 20  # a saturated star on the galaxy
    bleed = images["bleed_trail"].min(axis=2) >= 245
    assert bleed.any(axis=1).sum() > 3 * bleed.any(axis=0).sum()  # saturated along a column: taller than wide


def test_leave_one_kind_out_fits_without_the_kind_and_scores_it() -> None:
    rng = np.random.default_rng(0)
    galaxies = rng.normal(0, 1, (200, 4))
    near = rng.normal(0, 1, (20, 4)) + [6, 0, 0, 0]  # far in features, but the logits of a confident galaxy
    far = rng.normal(0, 1, (20, 4)) + [0, 9, 0, 0]
    gaussians = FeatureGaussians(means=np.zeros((1, 4)), precision=np.eye(4))
    logits = np.zeros((200, 3)) + [5, 0, 0]
    ood_logits = np.concatenate([np.zeros((20, 3)) + [5, 0, 0], np.zeros((20, 3))])
    held = leave_one_kind_out(
        logits, ood_logits, ["near"] * 20 + ["far"] * 20, galaxies, np.concatenate([near, far]), gaussians
    )
    near_out, far_out = held
    assert (near_out.kind, far_out.kind) == ("near", "far")
    # without "near", the logits separate the rest ("far") as well as the features do, so the earlier score of
    # METHODS (energy) wins, and it cannot tell "near" from a galaxy: the blind spot this measure exists to show
    assert near_out.method == "energy" and near_out.auroc == 0.5 and near_out.flagged == 0.0
    # without "far", only the features separate "near": the Mahalanobis score is chosen and catches "far" too
    assert far_out.method == "mahalanobis" and far_out.auroc > 0.99 and far_out.flagged == 1.0
    with pytest.raises(ValueError, match="kinds for"):
        leave_one_kind_out(logits, ood_logits, ["near"] * 3)
