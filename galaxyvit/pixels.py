"""Pixel statistics of an evaluation crop that tell a galaxy from what is not one (numpy only).

The model's not-a-galaxy scores (galaxyvit/ood.py) look at logits and embeddings, which do not see what
some non-galaxies lack (docs/synthetic.md): a source at the centre, a filled cutout, colour planes that
line up. These features see it in the (S, S, 3) uint8 evaluation crop, the input every path shares
(service, catalogue, OIP `images`). Each is oriented so that larger = less like a galaxy:
  faint_centre   minus log(1 + significance of the central 32x32 box above the sky of the 16-px border),
                 in sky sigmas per pixel: blank sky has none;
  compact        log(flux-weighted area of the source near the centre / area above half its peak)...: a
                 star is all core, a galaxy has an extended profile;
  saturated      share of the central half's pixels white-saturated (all channels >= 250): bright stars;
  flat           share of 14x14 blocks that are constant (range <= 2 in every channel): empty survey edge,
                 flat images, pages;
  band_offset    largest shift (px) between the R or B plane and G at the peak of their cross-correlation
                 on the central 96x96: misregistered bands;
  column         strongest column (or row) whose median departs from its neighbours', in sigmas of a
                 column median: bleed trails and bad columns (the crop may be a rotated view, so rows too).
All are invariant under the 8 rotations/flips of galaxyvit.tta (up to the border box's pixel grid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

FEATURES = ("faint_centre", "compact", "white", "flat", "band_offset", "column")
BORDER = 16  # sky from this frame of the crop
CENTRE = 32  # the central box whose mean is the source's significance
BLOCK = 14  # flat-block size (224 = 16 x 14)
CORR = 96  # cross-correlation window
PIXEL_KEEP = 0.99  # share of the fitted galaxies the pixel rule passes
MIN_SCALE = 0.25  # floor of a feature's robust sigma (features that are 0 for nearly every galaxy)
WHITE = 240  # a pixel is white-saturated when all its channels reach this


def _robust_sigma(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    median = np.median(values, axis=axis, keepdims=True)
    return 1.4826 * np.median(np.abs(values - median), axis=axis)


def _border(x: np.ndarray) -> np.ndarray:
    """(P, 3) pixels of the BORDER-wide frame."""
    b = BORDER
    return np.concatenate(
        [x[:b].reshape(-1, 3), x[-b:].reshape(-1, 3), x[b:-b, :b].reshape(-1, 3), x[b:-b, -b:].reshape(-1, 3)]
    )


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


def _column(x: np.ndarray, sigma: np.ndarray) -> float:
    """Largest |column median - median of its neighbours 4-8 columns away| of a channel, in sigmas of a column
    median (columns and rows: the crop may be a rotated view)."""
    worst = 0.0
    for plane in (x, np.swapaxes(x, 0, 1)):
        medians = np.median(plane, axis=0)  # (W, 3)
        w = medians.shape[0]
        pad = np.pad(medians, ((8, 8), (0, 0)), mode="edge")
        neighbours = np.median(np.stack([pad[8 + d : 8 + d + w] for d in (-8, -6, -4, 4, 6, 8)]), axis=0)
        noise = 1.2533 * np.maximum(sigma, 1.0) / np.sqrt(plane.shape[0])  # sigma of a median of H pixels
        worst = max(worst, float((np.abs(medians - neighbours) / noise).max()))
    return worst


def crop_features(crop: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) float64 features of one (S, S, 3) uint8 crop (S = 224 for the study's models; >= 128)."""
    x = np.asarray(crop, np.float32)
    border = _border(x)
    sky, sigma = np.median(border, axis=0), _robust_sigma(border, axis=0)
    sigma_y = max(float(np.sqrt((sigma**2).mean() / 3)), 0.5)  # of the channel mean, for independent channels
    y = (x - sky).mean(axis=2) / sigma_y  # luminance over the sky, in sky sigmas
    significance = max(float(_box(y, CENTRE // 2).mean()), 0.0)
    region = _box(y, x.shape[0] // 4)  # the central half
    peak = float(np.percentile(region, 99.9))
    half_area = float((region >= 0.5 * peak).sum()) if peak > 0 else float(region.size)
    white = float((x.min(axis=2) >= WHITE).sum())
    s = x.shape[0] // BLOCK * BLOCK
    blocks = x[:s, :s].reshape(s // BLOCK, BLOCK, s // BLOCK, BLOCK, 3)
    ranges = blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))
    flat = float((ranges.max(axis=-1) <= 2).sum())
    window = _box(x, CORR // 2) - sky
    planes = [window[..., c] - window[..., c].mean() for c in range(3)]
    offset = max(_shift(planes[0], planes[1]), _shift(planes[2], planes[1]))
    values = [-np.log1p(significance), -np.log1p(half_area), white, flat, offset, _column(x, sigma)]
    return np.array([values[0], values[1], *np.log1p(values[2:])], np.float64)


def pixel_features(crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """(N, len(FEATURES)) features of N evaluation crops ((N, S, S, 3) uint8 or a list of (S, S, 3))."""
    return np.stack([crop_features(c) for c in crops]) if len(crops) else np.zeros((0, len(FEATURES)))


@dataclass(frozen=True)
class PixelRule:
    """Robust bounds on the pixel features of galaxies: distance = the largest (feature - median) / scale, in
    robust sigmas (1.4826 MAD, at least MIN_SCALE); a crop passes at a distance of at most `threshold`, the
    `keep` quantile of the galaxies it was fitted on. `model_scale` (the validation galaxies' robust sigma of
    the model's OOD score) puts the model's margin in the same units when galaxyvit.ood combines the two."""

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
        """(N,) largest robust z of (N, K) features (larger = less like the galaxies fitted on)."""
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
    """Medians and robust sigmas of galaxies' features (training images: the model never fitted pixel
    statistics, so its own training galaxies are as good as new ones here); the threshold lets `keep` of them
    pass; the pass rate is measured on the validation galaxies."""
    f = np.asarray(fit_features, np.float64)
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or len(f) < 2:
        raise ValueError(f"expected (N >= 2, {len(FEATURES)}) features, got {f.shape}")
    centre = np.median(f, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(f - centre), axis=0), MIN_SCALE)
    unfitted = PixelRule(tuple(centre), tuple(scale), 0.0, keep, len(f), 0.0)
    threshold = float(np.quantile(unfitted.distance(f), keep, method="higher"))
    valid = unfitted.distance(valid_features) <= threshold
    return PixelRule(tuple(centre), tuple(scale), threshold, keep, len(f), float(valid.mean()))
