"""Rotation and flip averaging (test-time augmentation) over the 8 symmetries of the square (numpy only).

A galaxy has no preferred orientation on the sky, so a model's answer for a crop should not depend on
which of its 8 dihedral views it is shown: rotations by 0, 90, 180 and 270 degrees, each with and
without a mirror flip. `dihedral_views` makes the 8 views of a crop (or of a batch of crops), the
model scores each like any other image, and `tta_probabilities` averages their class probabilities
and reports the spread: the standard deviation across views of the top class's probability.
"""

from __future__ import annotations

import numpy as np

# (quarter turns counter-clockwise, flipped left-right first): identity first, then rotations, then the mirrors.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((turns, flip) for flip in (False, True) for turns in range(4))
N_VIEWS = len(DIHEDRAL)


def _spatial_axes(array: np.ndarray, channels_last: bool) -> tuple[int, int]:
    if array.ndim < 2:
        raise ValueError(f"need an image, got shape {array.shape}")
    if array.ndim == 2:
        return 0, 1
    return (array.ndim - 3, array.ndim - 2) if channels_last else (array.ndim - 2, array.ndim - 1)


def dihedral(array: np.ndarray, turns: int, flip: bool, channels_last: bool = True) -> np.ndarray:
    """One symmetry of the square applied to the image axes: flip left-right (if `flip`), then rotate by
    `turns` quarter turns counter-clockwise. HWC (channels_last) or CHW, with any leading batch axes;
    a 2-D array is one plane."""
    rows, cols = _spatial_axes(array, channels_last)
    if array.shape[rows] != array.shape[cols]:
        raise ValueError(f"the 8 views need a square crop, got {array.shape[rows]}x{array.shape[cols]}")
    if flip:
        array = np.flip(array, axis=cols)
    return np.rot90(array, k=turns, axes=(rows, cols))


def dihedral_views(crop: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """The 8 views of a square crop stacked on a new first axis: (8, *crop.shape), contiguous.

    For a batch (B, ...) the result is (8, B, ...); `reshape(8 * B, ...)` sends them through a model as
    8B images, and `tta_probabilities(probs.reshape(8, B, C).swapaxes(0, 1))` averages them back.
    """
    return np.stack([dihedral(crop, turns, flip, channels_last) for turns, flip in DIHEDRAL])


def tta_probabilities(views_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities over views and the spread of the winning class.

    views_probs: (V, C) for one image or (B, V, C) for a batch (V views, usually 8; V = 1 is allowed).
    Returns (mean (C,) or (B, C), spread () or (B,)): spread is the population standard deviation
    across the views of the probability of the class that wins on the mean.
    """
    probs = np.asarray(views_probs, dtype=np.float64)
    if probs.ndim not in (2, 3) or probs.shape[-2] < 1:
        raise ValueError(f"expected (views, classes) or (batch, views, classes), got shape {probs.shape}")
    mean = probs.mean(axis=-2)
    top = mean.argmax(axis=-1)
    top_probs = np.take_along_axis(probs, top[..., None, None], axis=-1)[..., 0]  # (..., V)
    return mean, top_probs.std(axis=-1)
