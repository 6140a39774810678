"""Rotation/flip averaging: the views are exactly the 8 symmetries of the square; invariant models are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from galaxyvit.tta import DIHEDRAL, N_VIEWS, dihedral, dihedral_views, tta_probabilities


def asymmetric_image(size: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def explicit_dihedral_group(img: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries written out by hand with index arithmetic (rows r, columns c of an n x n image)."""
    n = img.shape[0]
    r, c = np.indices((n, n))
    last = n - 1
    maps = [
        (r, c),  # identity
        (c, last - r),  # rotate 90 counter-clockwise: new[r, c] = old[c, n-1-r]
        (last - r, last - c),  # 180
        (last - c, r),  # 270
        (r, last - c),  # mirror left-right
        (last - c, last - r),  # anti-diagonal transpose
        (last - r, c),  # mirror up-down
        (c, r),  # transpose
    ]
    return [img[rows, cols] for rows, cols in maps]


def test_views_are_exactly_the_eight_dihedral_transforms():
    img = asymmetric_image()
    views = dihedral_views(img)
    assert views.shape == (8, 9, 9, 3) and N_VIEWS == 8
    np.testing.assert_array_equal(views[0], img)
    expected = {v.tobytes() for v in explicit_dihedral_group(img)}
    got = {v.tobytes() for v in views}
    assert len(got) == 8 and got == expected


def test_views_are_closed_under_composition():
    img = asymmetric_image(seed=1)
    views = {v.tobytes() for v in dihedral_views(img)}
    for view in dihedral_views(img):
        for turns, flip in DIHEDRAL:
            assert dihedral(view, turns, flip).tobytes() in views
    # the inverse of every view is in the group too: some symmetry takes each view back to the original
    for view in dihedral_views(img):
        assert any(np.array_equal(dihedral(view, t, f), img) for t, f in DIHEDRAL)


def test_chw_and_batched_views_match_hwc():
    img = asymmetric_image(seed=2)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    hwc_views = dihedral_views(img)
    chw_views = dihedral_views(chw, channels_last=False)
    np.testing.assert_array_equal(chw_views.transpose(0, 2, 3, 1), hwc_views)
    batch = np.stack([chw, chw[:, ::-1]])  # (2, 3, 9, 9)
    batch_views = dihedral_views(batch, channels_last=False)
    assert batch_views.shape == (8, 2, 3, 9, 9)
    np.testing.assert_array_equal(batch_views[:, 0], chw_views)


def test_views_need_a_square_crop():
    with pytest.raises(ValueError, match="square"):
        dihedral_views(np.zeros((4, 5, 3)))


def histogram_model(images: np.ndarray) -> np.ndarray:
    """Class probabilities from the pixel histogram only: invariant under any permutation of pixels by construction."""
    flat = images.reshape(len(images), -1, images.shape[-1]).astype(np.float64)
    features = np.concatenate([flat.mean(1), flat.std(1), (flat > 128).mean(1)], axis=1)  # (B, 9)
    weights = np.random.default_rng(0).normal(size=(9, 8)) * 0.05
    logits = features @ weights
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_tta_of_a_rotation_invariant_model_changes_nothing():
    images = np.stack([asymmetric_image(16, seed) for seed in range(5)])  # (5, 16, 16, 3)
    plain = histogram_model(images)
    views = dihedral_views(images)  # (8, 5, 16, 16, 3)
    probs = histogram_model(views.reshape(-1, 16, 16, 3)).reshape(8, 5, 8).swapaxes(0, 1)
    mean, spread = tta_probabilities(probs)
    np.testing.assert_allclose(mean, plain, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(spread, 0.0, atol=1e-12)


def test_tta_probabilities_mean_and_spread_of_the_top_class():
    views = np.array([[0.6, 0.4], [0.8, 0.2], [0.1, 0.9], [0.7, 0.3]])
    mean, spread = tta_probabilities(views)
    np.testing.assert_allclose(mean, [0.55, 0.45])
    assert spread == pytest.approx(np.std([0.6, 0.8, 0.1, 0.7]))
    batch_mean, batch_spread = tta_probabilities(np.stack([views, views[:, ::-1]]))
    np.testing.assert_allclose(batch_mean, [[0.55, 0.45], [0.45, 0.55]])
    np.testing.assert_allclose(batch_spread, [spread, spread])
    one_mean, one_spread = tta_probabilities(views[:1])
    np.testing.assert_allclose(one_mean, views[0])
    assert one_spread == 0.0
