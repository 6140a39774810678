"""Pixel statistics of an evaluation crop that tell a galaxy from what is not one (numpy only).

The model's not-a-galaxy scores (galaxyvit/ood.py) look at logits and embeddings, which do not see what some
non-galaxies lack (docs/synthetic.md): a source at the centre, a filled cutout, colour planes that line up.
These features see it in the (S, S, 3) uint8 evaluation crop, the one input every path shares (service,
catalogue, OIP `images`). Sky level and sigma come from the crop's 16-px border; each feature is oriented so
that larger = less like a galaxy:
  faint_centre  -log(1 + mean of the central 32x32 box over the sky, in grey levels): blank sky has no source;
  compact       -log(1 + area of the central half at or above half its peak): a star is all core;
  peaky         log(peak / that central mean): a point source is a high peak in a faint box;
  white         log(1 + pixels with every channel >= 240): the display shows a galaxy's saturated core in its
                colour, a saturated star (or text page) white;
  flat          log(1 + 14x14 blocks of range <= 2 in every channel): the empty part of a survey-edge cutout,
                flat images, pages;
  band_offset   log(1 + the larger shift (px) of the R or B plane against G at the peak of their
                cross-correlation, over the central 96x96 source pixels): misregistered bands;
  column        log(1 + the largest departure of a channel's column (or row) median from its neighbours', in
                the noise of such a median, at least 1 grey level): bleed trails and bad columns;
  spikes        log(1 + brightness of four rays at right angles from the brightest source, above the rays
                next to them): the diffraction spikes of a bright star.
They are the same for the 8 rotated/flipped views of galaxyvit.tta up to pixel rounding; 7-16 ms a crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

FEATURES = ("faint_centre", "compact", "peaky", "white", "flat", "band_offset", "column", "spikes")
BORDER = 16  # sky from this frame of the crop
CENTRE = 32  # the central box whose mean is the source's central
BLOCK = 14  # flat-block size (224 = 16 x 14)
CORR = 96  # cross-correlation window
PIXEL_KEEP = 0.99  # share of the fitted galaxies the pixel rule passes
SCALE_QUANTILE = 0.995  # a feature's scale: from the galaxies' median to this quantile of theirs, at least
# floors of the scales: a factor 2 for the log features, 3 white pixels, 1 flat block, 1.5 px, and a quarter
# for the column and spike logs
MIN_SCALE = (np.log(2), np.log(2), np.log(2), np.log1p(3), np.log1p(1), np.log1p(1.5), 0.25, 0.25)
SPIKE_RADII = (24, 100)  # px from the brightest source where diffraction spikes are looked for
WHITE = 240  # a pixel is white-saturated when all its channels reach this
MIN_CROP = 128  # smallest crop the features are defined on (the study's models take 224)


def _level_median(levels: np.ndarray) -> int:
    """The (lower) median of non-negative integers, from their histogram (a few times faster than np.median)."""
    cdf = np.cumsum(np.bincount(levels.ravel()))
    return int(np.searchsorted(cdf, (int(cdf[-1]) + 1) // 2))


def _sky(border: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of (3, P) uint8 border pixels: the median level and the robust sigma (1.4826 MAD)."""
    sky = np.array([_level_median(channel) for channel in border])
    mad = [_level_median(np.abs(channel.astype(np.int16) - level)) for channel, level in zip(border, sky)]
    return sky.astype(np.float32), 1.4826 * np.array(mad, np.float32)


def _border(planes: np.ndarray) -> np.ndarray:
    """(3, P) pixels of the BORDER-wide frame of (3, S, S) planes."""
    b = BORDER
    parts = [planes[:, :b], planes[:, -b:], planes[:, b:-b, :b], planes[:, b:-b, -b:]]
    return np.concatenate([p.reshape(3, -1) for p in parts], axis=1)


def _box(x: np.ndarray, half: int) -> np.ndarray:
    cy, cx = x.shape[0] // 2, x.shape[1] // 2
    return x[cy - half : cy + half, cx - half : cx + half]


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    """Distance (px) of the cross-correlation peak of two zero-mean planes from zero shift."""
    n = a.shape[0]
    fa, fb = np.fft.rfft2(a, s=(2 * n, 2 * n)), np.fft.rfft2(b, s=(2 * n, 2 * n))
    corr = np.fft.irfft2(fa * np.conj(fb), s=(2 * n, 2 * n))
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy, dx = (dy + n) % (2 * n) - n, (dx + n) % (2 * n) - n
    return float(np.hypot(dy, dx))


def _column(planes: np.ndarray, sigma: np.ndarray) -> float:
    """Largest |column median - median of its neighbours 4-8 columns away| of a channel, in the noise of a column
    median, at least 1 grey level (medians of integers move in whole levels); columns and rows: the crop may be
    a rotated view."""
    worst = 0.0
    noise = np.maximum(1.2533 * sigma[:, None] / np.sqrt(planes.shape[1]), 1.0)
    for lines in (planes.transpose(0, 2, 1), planes):  # (3, W, H): columns; (3, H, W): rows
        middle = lines.shape[2] // 2
        medians = np.partition(np.ascontiguousarray(lines), middle, axis=2)[..., middle].astype(np.float32)  # (3, W)
        w = medians.shape[1]
        pad = np.pad(medians, ((0, 0), (8, 8)), mode="edge")
        neighbours = np.median(np.stack([pad[:, 8 + d : 8 + d + w] for d in (-8, -6, -4, 4, 6, 8)]), axis=0)
        worst = max(worst, float((np.abs(medians - neighbours) / noise).max()))
    return worst


def _spikes(y: np.ndarray) -> float:
    """Diffraction spikes: four bright rays at right angles from the brightest source near the centre. For each
    angle (1 degree steps), the median along the ray (SPIKE_RADII px from the centroid of the pixels within 90%
    of the peak) above the median of the rays 4-8 degrees away; the weakest of four at right angles, the
    strongest such four, in grey levels (y: luminance over the sky)."""
    half = y.shape[0] // 4
    centre = _box(y, half)
    rows, cols = np.nonzero(centre >= 0.9 * centre.max())
    cy, cx = rows.mean() + y.shape[0] // 2 - half, cols.mean() + y.shape[1] // 2 - half
    angles, radii = np.deg2rad(np.arange(360)), np.arange(*SPIKE_RADII)
    ys = np.clip(np.rint(cy + radii[None, :] * np.sin(angles)[:, None]), 0, y.shape[0] - 1).astype(int)
    xs = np.clip(np.rint(cx + radii[None, :] * np.cos(angles)[:, None]), 0, y.shape[1] - 1).astype(int)
    ray = np.median(y[ys, xs], axis=1)  # (360,)
    ring = np.concatenate([ray[-8:], ray, ray[:8]])
    around = np.median(np.stack([ring[8 + d : 368 + d] for d in (-8, -6, -4, 4, 6, 8)]), axis=0)
    return max(float((ray - around).reshape(4, 90).min(axis=0).max()), 0.0)


def crop_features(crop: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) float64 features of one (S, S, 3) uint8 crop (S = 224 for the study's models; >= 128)."""
    planes = np.ascontiguousarray(np.asarray(crop, np.uint8).transpose(2, 0, 1))  # (3, S, S)
    size = planes.shape[1]
    if planes.shape != (3, size, size) or size < MIN_CROP:
        raise ValueError(f"pixel features need a square (S >= {MIN_CROP}, S, 3) crop, not {np.shape(crop)}")
    sky, sigma = _sky(_border(planes))
    x = planes.astype(np.float32) - sky[:, None, None]
    y = (x[0] + x[1] + x[2]) / 3  # luminance over the sky, in grey levels (not sky sigmas: JPEG moves those)
    central = max(float(_box(y, CENTRE // 2).mean()), 0.0)
    region = _box(y, size // 4)  # the central half
    peak = float(np.percentile(region, 99.9))
    half_area = float((region >= 0.5 * peak).sum()) if peak > 0 else float(region.size)
    peaky = np.log(max(peak, 1.0) / max(central, 1.0))
    white = float((np.minimum(np.minimum(planes[0], planes[1]), planes[2]) >= WHITE).sum())
    n = size // BLOCK
    blocks = planes[:, : n * BLOCK, : n * BLOCK].reshape(3, n, BLOCK, n, BLOCK)
    flat = float(((blocks.max(axis=(2, 4)) - blocks.min(axis=(2, 4))).max(axis=0) <= 2).sum())
    half = CORR // 2
    window = x[:, size // 2 - half : size // 2 + half, size // 2 - half : size // 2 + half]
    source = np.clip(window - 3 * sigma[:, None, None], 0, None)  # the source only: sky noise can correlate
    source -= source.mean(axis=(1, 2), keepdims=True)
    offset = max(_shift(source[0], source[1]), _shift(source[2], source[1]))
    counts = [white, flat, offset, _column(planes, sigma), _spikes(y)]
    return np.array([-np.log1p(central), -np.log1p(half_area), peaky, *np.log1p(counts)], np.float64)


def pixel_features(crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """(N, len(FEATURES)) features of N evaluation crops ((N, S, S, 3) uint8 or a list of (S, S, 3))."""
    return np.stack([crop_features(c) for c in crops]) if len(crops) else np.zeros((0, len(FEATURES)))


@dataclass(frozen=True)
class PixelRule:
    """Bounds on the pixel features of galaxies: distance = the largest (feature - median) / scale, where scale
    is the distance from the galaxies' median to their SCALE_QUANTILE (at least MIN_SCALE: features that are 0
    for nearly every galaxy), so 1 is about the edge of the galaxies' range of each feature; a crop passes at a
    distance of at most `threshold`, the `keep` quantile of the galaxies it was fitted on. `model_scale` (the
    validation galaxies' robust sigma of the model's OOD score) puts the model's margin in comparable units
    when galaxyvit.ood combines the two."""

    centre: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float
    keep: float
    n_fit: int
    valid_pass_rate: float  # validation galaxies passing this rule alone
    model_scale: float = 1.0  # set by galaxyvit.ood.fit_ood_rule, with:
    both_pass_rate: float | None = None  # validation galaxies passing this rule and the model's
    features: tuple[str, ...] = FEATURES

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) the largest scaled excess of (N, K) features (larger = less like the galaxies fitted on)."""
        f = np.asarray(features, np.float64)
        return ((f - np.asarray(self.centre)) / np.asarray(self.scale)).max(axis=1)

    def margin(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(N,) threshold - distance of N crops: >= 0 passes."""
        return self.threshold - self.distance(pixel_features(crops))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "centre": list(self.centre), "scale": list(self.scale), "features": list(FEATURES)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelRule:
        """Read a rule back; one fitted on other features than this code computes fails here."""
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"pixel rule of features {data['features']}; this version computes {list(FEATURES)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "features"}
        return cls(**{**values, "centre": tuple(data["centre"]), "scale": tuple(data["scale"])})


def fit_pixel_rule(fit_features: np.ndarray, valid_features: np.ndarray, keep: float = PIXEL_KEEP) -> PixelRule:
    """Medians and scales of galaxies' features (training images: the model never fitted pixel statistics, so
    its own training galaxies are as good as new ones here); the threshold lets `keep` of them pass; the pass
    rate is measured on the validation galaxies."""
    f = np.asarray(fit_features, np.float64)
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or len(f) < 2:
        raise ValueError(f"expected (N >= 2, {len(FEATURES)}) features, got {f.shape}")
    centre = np.median(f, axis=0)
    scale = np.maximum(np.quantile(f, SCALE_QUANTILE, axis=0) - centre, MIN_SCALE)
    unfitted = PixelRule(tuple(centre), tuple(scale), 0.0, keep, len(f), 0.0)
    threshold = float(np.quantile(unfitted.distance(f), keep, method="higher"))
    valid = unfitted.distance(valid_features) <= threshold
    return PixelRule(tuple(centre), tuple(scale), threshold, keep, len(f), float(valid.mean()))
