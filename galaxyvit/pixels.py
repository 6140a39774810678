"""Pixel statistics of an evaluation crop that tell a galaxy from what is not one (numpy only).

The model's not-a-galaxy scores (galaxyvit/ood.py) look at logits and embeddings, which do not see what some
non-galaxies lack (docs/synthetic.md): a source at the centre, a filled cutout, colour planes that line up.
These features see it in the (S, S, 3) uint8 evaluation crop, the one input every path shares (service,
catalogue, OIP `images`). Sky level and sigma come from the crop's 16-px border (every 4th line of it); L is
the luminance, the sum of the three channels (int16); each feature is oriented so that larger = less like a
galaxy:
  faint_centre  -log(1 + mean of the central 32x32 box over the sky, in grey levels): blank sky has no source;
  compact       -log(1 + area of the central half at or above half its peak): a star is all core;
  peaky         log(peak / that central mean): a point source is a high peak in a faint box;
  white         log(1 + pixels with every channel >= 240): the display shows a galaxy's saturated core in its
                colour, a saturated star (or text page) white;
  flat          log(1 + 14x14 blocks of range <= 2 in every channel): the empty part of a survey-edge cutout,
                flat images, pages;
  band_offset   log(1 + the larger shift (px) of the R or B plane against G at the peak of their circular
                cross-correlation, over the central 64x64 source pixels in 2x2 means, refined by a parabola):
                misregistered bands;
  column        log(1 + the largest |median of L minus the mean of L 6 px to either side| of a column or row, over
                every 8th line and its mirror image (the 8 views sample alike), in the noise of that median, at
                least 3 levels of L (a grey level a channel)): bleed trails and bad columns;
  spikes        log(1 + brightness of four rays at right angles from the brightest source, above the rays
                next to them; 2-degree steps, every 2nd px of radius): the diffraction spikes of a bright star.
The peak (the 99.9% level), the half-peak area and the sky come from histograms, the medians from small
partitions of uint8/int16 values: no float copy of the crop. pixel_features is vectorised over up to CHUNK
crops. The features are the same for the 8 rotated/flipped views of galaxyvit.tta up to pixel rounding. Cost
(benchmarks/bench_pixels.py, 2-core box at load 2.5): 0.7-0.8 ms for one crop, 0.5-0.6 ms a crop in batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

FEATURES = ("faint_centre", "compact", "peaky", "white", "flat", "band_offset", "column", "spikes")
BORDER = 16  # sky from this frame of the crop
CENTRE = 32  # the central box whose mean is the central brightness
BLOCK = 14  # flat-block size (224 = 16 x 14)
CORR = 64  # cross-correlation window (in 2x2 means: 32x32)
LINE_STEP = 8  # column/row medians over lines 0, 8, 16, ... and their mirror images S-1, S-9, ...
COLUMN_GAP = 6  # a column against the columns this far to either side
PIXEL_KEEP = 0.99  # share of the fitted galaxies the pixel rule passes
SCALE_QUANTILE = 0.995  # a feature's scale: from the galaxies' median to this quantile of theirs, at least
# floors of the scales: a factor 2 for the log features, 3 white pixels, 1 flat block, 1.5 px, and a quarter
# for the column and spike logs
MIN_SCALE = (np.log(2), np.log(2), np.log(2), np.log1p(3), np.log1p(1), np.log1p(1.5), 0.25, 0.25)
MIN_CROP = 128  # smallest crop the features are defined on (the study's models take 224)
SPIKE_RADII = (24, 100)  # px from the brightest source where diffraction spikes are looked for
WHITE = 240  # a pixel is white-saturated when all its channels reach this
LEVELS = 3 * 255 + 1  # values of L
CHUNK = 64  # crops computed at once (memory: a few MB a crop)
STEPS_Y, STEPS_X = np.array([0, -1, 1, 0, 0]), np.array([0, 0, 0, -1, 1])  # a correlation peak and its neighbours


def _sky(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) median level and robust sigma (1.4826 MAD) per channel of the BORDER-wide frame of (N, S, S, 3)
    uint8 crops (every 4th line of it), both from one histogram per crop and channel."""
    b, n = BORDER, len(crops)
    parts = (crops[:, :b:4], crops[:, -b::4], crops[:, b:-b:4, :b], crops[:, b:-b:4, -b:])
    frame = np.concatenate([p.reshape(n, -1, 3) for p in parts], axis=1)
    frame = frame + 256 * np.arange(3 * n).reshape(n, 1, 3)  # one histogram of 256 levels per crop and channel
    cdf = np.cumsum(np.bincount(frame.ravel(), minlength=768 * n).reshape(3 * n, 256), axis=1)
    half = (cdf[:, -1:] + 1) // 2
    level = (cdf < half).sum(axis=1)  # the (lower) median
    padded = np.zeros((3 * n, 768), cdf.dtype)  # cdf with 0 before it and the total after it
    padded[:, 256:512] = cdf
    padded[:, 512:] = cdf[:, -1:]
    at = (768 * np.arange(3 * n) + 256 + level)[:, None]  # in padded.ravel()
    t = np.arange(256)
    within = padded.ravel().take(at + t) - padded.ravel().take(at - 1 - t)  # pixels within t of the level
    mad = (within < half).sum(axis=1)
    return level.reshape(n, 3).astype(np.float64), 1.4826 * mad.reshape(n, 3)


def _luminance(crops: np.ndarray) -> np.ndarray:
    """(N, S, S) int16 sum of the three channels (signed: the column differences need no other copy)."""
    lum = crops[..., 0].astype(np.int16)
    lum += crops[..., 1]
    lum += crops[..., 2]
    return lum


def _box(x: np.ndarray, half: int) -> np.ndarray:
    """The central (2 half, 2 half) box of the images (axes 1 and 2) of x."""
    cy, cx = x.shape[1] // 2, x.shape[2] // 2
    return x[:, cy - half : cy + half, cx - half : cx + half]


def _histograms(values: np.ndarray, levels: int) -> np.ndarray:
    """(N, levels) histograms of the non-negative integers of each of N arrays."""
    if len(values) == 1:
        return np.bincount(values.ravel(), minlength=levels)[None]
    offsets = levels * np.arange(len(values)).reshape(-1, *[1] * (values.ndim - 1))
    return np.bincount((values + offsets).ravel(), minlength=levels * len(values)).reshape(len(values), levels)


def _centre(lum: np.ndarray, sky: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """(N, 3) faint_centre, compact and peaky from L over its sky level `sky` in units `unit` (a grey level)."""
    box = _box(lum, CENTRE // 2)
    central = np.maximum((box.sum(axis=(1, 2)) / box[0].size - sky) / unit, 0.0)
    region = _box(lum, lum.shape[1] // 4)  # the central half
    size = region[0].size
    cdf = np.cumsum(_histograms(region, LEVELS), axis=1)
    level = (cdf < 0.999 * size).sum(axis=1)  # the 99.9% level
    peak = (level - sky) / unit
    half = np.maximum(np.ceil(sky + 0.5 * (level - sky)).astype(np.intp) - 1, 0)  # below half the peak (<= level)
    half_area = size - cdf[np.arange(len(cdf)), half] * (peak > 0)
    peaky = np.log(np.maximum(peak, 1.0) / np.maximum(central, 1.0))
    return np.stack([-np.log1p(central), -np.log1p(half_area), peaky], axis=1)


def _white(crops: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """(N,) pixels with every channel >= WHITE (only those with L >= 3 WHITE can be)."""
    if lum.max() < 3 * WHITE:
        return np.zeros(len(crops))
    which, rows, cols = np.nonzero(lum >= 3 * WHITE)
    white = crops[which, rows, cols].min(axis=1) >= WHITE
    return np.bincount(which[white], minlength=len(crops)).astype(np.float64)


def _flat(crops: np.ndarray) -> np.ndarray:
    """(N,) BLOCK x BLOCK blocks of range <= 2 in every channel: 5 pixels of each block (corners, centre) screen
    it, the blocks that pass are checked whole."""
    n = crops.shape[1] // BLOCK
    size = n * BLOCK
    corners = [(0, 0), (0, BLOCK - 1), (BLOCK - 1, 0), (BLOCK - 1, BLOCK - 1), (BLOCK // 2, BLOCK // 2)]
    views = [crops[:, i:size:BLOCK, j:size:BLOCK] for i, j in corners]  # (N, n, n, 3) each
    high, low = views[0].copy(), views[0].copy()
    for view in views[1:]:
        np.maximum(high, view, out=high)
        np.minimum(low, view, out=low)
    which, rows, cols = np.nonzero(((high - low) <= 2).all(axis=3))
    if not len(which):
        return np.zeros(len(crops))
    blocks = crops[:, :size, :size].reshape(len(crops), n, BLOCK, n, BLOCK, 3)[which, rows, :, cols]
    blocks = blocks.reshape(len(which), BLOCK * BLOCK, 3)
    flat = (blocks.max(axis=1) - blocks.min(axis=1)).max(axis=1) <= 2
    return np.bincount(which[flat], minlength=len(crops)).astype(np.float64)


def _band_offset(crops: np.ndarray, sky: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(N,) larger offset (px) of R or B against G: the peak of the circular cross-correlation of the source
    pixels of the central CORR window in 2x2 means (above 3 sigma of such a mean: sky noise can correlate),
    refined by a parabola on each axis."""
    window = _box(crops, CORR // 2)
    sums = window[:, 0::2, 0::2].astype(np.uint16)
    for view in (window[:, 1::2, 0::2], window[:, 0::2, 1::2], window[:, 1::2, 1::2]):
        sums += view
    # 4 x (mean - 1.5 sigma); no need to subtract the planes' means: that moves a circular correlation by a constant
    source = np.maximum(sums.transpose(0, 3, 1, 2) - (4 * sky + 6 * sigma).astype(np.float32)[..., None, None], 0)
    spectra = np.fft.rfft2(source)
    corr = np.fft.irfft2(spectra[:, [0, 2]] * np.conj(spectra[:, 1:2]), s=source.shape[2:])  # (N, 2, m, m)
    m = corr.shape[-1]
    planes = corr.reshape(-1, m * m)  # (N * 2, m * m)
    iy, ix = np.divmod(planes.argmax(axis=1), m)
    rows, cols = (iy[:, None] + STEPS_Y) % m, (ix[:, None] + STEPS_X) % m  # the peak, then y - 1, y + 1, x - 1, x + 1
    values = planes.ravel().take(rows * m + cols + (m * m * np.arange(len(planes)))[:, None])
    at, before, after = values[:, :1], values[:, 1::2], values[:, 2::2]  # (N * 2, 1 or 2): y, x
    curve = before - 2 * at + after
    refine = np.divide(0.5 * (before - after), curve, out=np.zeros_like(curve), where=curve < 0)
    offsets = (np.stack([iy, ix], axis=1) + m // 2) % m - m // 2 + refine
    return 2 * np.hypot(offsets[:, 0], offsets[:, 1]).reshape(-1, 2).max(axis=1)


@lru_cache
def _lines(size: int) -> np.ndarray:
    """The lines the column/row medians use: every LINE_STEP-th and its mirror image."""
    return np.array(sorted({*range(0, size, LINE_STEP), *(size - 1 - i for i in range(0, size, LINE_STEP))}))


def _column(lum: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """(N,) largest |median over the _lines of (L - the mean of L COLUMN_GAP px to either side)| of a column or
    row (the crop may be a rotated view), in the noise of that median (L's sky sigma `unit`), at least 3 levels
    (a grey level a channel: the display's clipped sky can make sigma small): a galaxy's smooth light cancels in
    the difference, and crosses few of the lines."""
    lines, g = _lines(lum.shape[1]), COLUMN_GAP
    n, middle = len(lines), len(lines) // 2
    across = [lum[:, lines].transpose(0, 2, 1), lum[:, :, lines]]  # (N, S, n): columns, rows
    excess = np.concatenate([2 * a[:, g:-g] - a[:, : -2 * g] - a[:, 2 * g :] for a in across], axis=1)  # twice
    medians = np.partition(excess, middle, axis=2)[..., middle]
    noise = np.maximum(1.2533 * np.sqrt(1.5) * unit / np.sqrt(n), 3.0)
    return 0.5 * np.abs(medians).max(axis=1) / noise


@lru_cache
def _rays(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(180, R) row and column offsets of the spike rays (2-degree steps, every 2nd radius of SPIKE_RADII) and
    their offsets in a flattened (size, size) image."""
    angles, radii = np.deg2rad(np.arange(0, 360, 2)), np.arange(*SPIKE_RADII, 2)
    dy = np.rint(radii[None, :] * np.sin(angles)[:, None]).astype(np.intp)
    dx = np.rint(radii[None, :] * np.cos(angles)[:, None]).astype(np.intp)
    return dy, dx, dy * size + dx


def _spikes(lum: np.ndarray, sky: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """(N,) diffraction spikes: four bright rays at right angles from the brightest source near the centre. For
    each angle (2-degree steps), the median of L along the ray (SPIKE_RADII px from the pixel nearest the
    centroid of the central half's pixels within 90% of its peak over the sky) above the median of the rays
    4-8 degrees away; the weakest of four at right angles, the strongest such four, in grey levels (`unit`)."""
    n, size = len(lum), lum.shape[1]
    quarter = size // 4
    region = lum[:, quarter:-quarter, quarter:-quarter]
    top = region.max(axis=(1, 2)).astype(np.float64)
    threshold = np.minimum(sky + 0.9 * (top - sky), top)  # the peak itself when the centre is below the sky
    which, rows, cols = np.nonzero(region >= threshold[:, None, None])
    sums = np.stack([np.bincount(which, rows, n), np.bincount(which, cols, n)])
    cy, cx = np.rint(sums / np.bincount(which, minlength=n)).astype(np.intp) + quarter
    dy, dx, flat = _rays(size)
    base = (np.arange(n) * size * size)[:, None, None]
    reach = SPIKE_RADII[1]
    if min(cy.min(), cx.min()) >= reach and max(cy.max(), cx.max()) + reach < size:  # every ray inside
        index = base + (cy * size + cx)[:, None, None] + flat
    else:
        rows_at = np.minimum(np.maximum(cy[:, None, None] + dy, 0), size - 1)
        index = base + rows_at * size + np.minimum(np.maximum(cx[:, None, None] + dx, 0), size - 1)
    values = lum.ravel().take(index)  # (N, 180, R)
    middle = values.shape[2] // 2
    ray = np.partition(values, middle, axis=2)[..., middle] / unit[:, None]  # (N, 180)
    ring = np.concatenate([ray[:, -4:], ray, ray[:, :4]], axis=1)
    around = np.sort(np.stack([ring[:, 4 + d : 184 + d] for d in (-4, -3, -2, 2, 3, 4)]), axis=0)  # 4-8 degrees
    excess = (ray - 0.5 * (around[2] + around[3])).reshape(n, 4, 45).min(axis=1).max(axis=1)
    return np.maximum(excess, 0.0)


def pixel_features(crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """(N, len(FEATURES)) float64 features of N evaluation crops ((N, S, S, 3) uint8 or a list of (S, S, 3); S =
    224 for the study's models, >= 128), computed CHUNK crops at a time, vectorised over them."""
    if not len(crops):
        return np.zeros((0, len(FEATURES)))
    crops = np.asarray(crops, np.uint8)
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or crops.shape[3] != 3 or crops.shape[1] < MIN_CROP:
        raise ValueError(f"pixel features need square (S >= {MIN_CROP}, S, 3) crops, not {crops.shape[1:]}")
    if len(crops) <= CHUNK:
        return _features(crops)
    return np.concatenate([_features(crops[i : i + CHUNK]) for i in range(0, len(crops), CHUNK)])


def _features(crops: np.ndarray) -> np.ndarray:
    sky, sigma = _sky(crops)
    unit = 3 * np.maximum(np.sqrt((sigma**2).mean(axis=1) / 3), 0.5)  # sigma of L, for independent channels
    lum, lum_sky = _luminance(crops), sky.sum(axis=1)
    counts = [_white(crops, lum), _flat(crops), _band_offset(crops, sky, sigma), _column(lum, unit)]
    grey = np.full(len(crops), 3.0)  # 3 levels of L (a sum of three channels) = one grey level: brightness is
    # measured in grey levels, not sky sigmas, which JPEG quality moves
    counts.append(_spikes(lum, lum_sky, grey))
    return np.concatenate([_centre(lum, lum_sky, grey), np.log1p(np.stack(counts, axis=1))], axis=1)


def crop_features(crop: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) features of one (S, S, 3) uint8 crop."""
    return pixel_features(np.asarray(crop, np.uint8)[None])[0]


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
