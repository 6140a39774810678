"""Write a synthetic dataset of the 8 galaxy classes in the GZ2 layout, so everything runs without
the Galaxy Zoo 2 images.

Each image is a procedural 424x424 RGB JPEG made to look like an SDSS gri cutout as GZ2 shows it: a
galaxy near the centre with foreground stars, background galaxies and sometimes a neighbour, observed
as in training/sky.py (GZ2 cutout scale, seeing PSF, sky and Poisson noise, Lupton asinh colour display;
`galaxyvit synth --stats` compares its pixel statistics with real cutouts, docs/synthetic.md):
  round / in-between / cigar-shaped ellipticals: red Sersic profiles with axis ratio q about
    0.75-1 / 0.40-0.85 / 0.15-0.50 (ranges overlap, so neighbours are confusable);
  edge-on spiral: thin exponential disc with a bulge and (often) a dust lane, some of them
    not quite edge-on;
  barred / unbarred spiral: exponential discs with logarithmic spiral arms and star-forming
    knots, with or without a (sometimes weak) bar; faint-armed ones look like ellipticals;
  irregular: clumpy, asymmetric, blue; merger: two overlapping galaxies with tidal tails.

Output (the GZ2 layout that training reads; see `galaxyvit train --help`):
  DIR/gz2_train.csv, DIR/gz2_valid.csv, DIR/gz2_test.csv   galaxyID,label1,label2,label3,label4
  DIR/images/<galaxyID>.jpg                                424x424 RGB, JPEG quality 75
Split sizes follow the GZ2 split ratio 99,808 / 24,952 / 31,191; class balance defaults to the
GZ2 training split. The CSVs are written last: a directory without them is an unfinished run.
The same --n, --seed and --proportions give byte-identical files for any number of --workers.

Examples:
  galaxyvit synth --n 2000 --out data/synth --seed 0
  galaxyvit synth --n 800 --out data/balanced --proportions uniform --workers 2
  galaxyvit synth --preview synth_preview.png            # montage only, no dataset
  galaxyvit synth --n 400 --out data/s --preview s.png   # dataset + montage of its images
  galaxyvit synth --stats --n 200 --seed 0               # realism table: synthetic vs real pixel statistics
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from galaxyvit.classes import CLASS_NAMES, GZ2_TRAIN_COUNTS, NUM_CLASSES
from training.sky import JPEG_QUALITY, Observation, observe, to_display

SIZE = 424
SPLITS = ("train", "valid", "test")
GZ2_SPLIT_SIZES = (99_808, 24_952, 31_191)
MIN_IMAGES = NUM_CLASSES
CSV_HEADER = ("galaxyID", "label1", "label2", "label3", "label4")

# Colours as relative (R, G, B) = (i, r, g band) flux, mean 1. Ellipticals and bulges are red, arms and clumps blue.
RED = np.array([1.36, 1.0, 0.66], np.float32)
DISC = np.array([1.24, 1.0, 0.8], np.float32)
BLUE = np.array([0.88, 0.97, 1.16], np.float32)

BRIGHTNESS = 2.0  # all galaxy fluxes, to match the real cutouts' centre brightness
PITCH_DEG = (18.0, 7.0)  # spiral arm pitch angle, mean and spread (degrees; docs/synthetic.md)
DUST_K = np.array([0.72, 0.86, 1.0], np.float32)  # dust dims blue more than red

Array = np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Drawing primitives (float32, linear flux in units of the sky noise sigma, channels last)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.indices((size, size), dtype=np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=8)
def _taper(size: int) -> Array:
    """(size, size, 1) weights: 1 inside radius 0.3*size, falling smoothly to 0 at the inscribed circle, so profile
    wings cut off by the window leave no visible edge (a square one would be an easy, false cue)."""
    yy, xx = _grid(size)
    r = np.hypot(yy - size / 2, xx - size / 2) / size
    ramp = np.clip((r - 0.3) / 0.2, 0.0, 1.0)
    taper = (0.5 + 0.5 * np.cos(math.pi * ramp)).astype(np.float32)[..., None]
    taper.flags.writeable = False
    return taper


def _colour(rng: np.random.Generator, base: Array, spread: float = 0.06) -> Array:
    """base, made randomly redder or bluer (along the red-blue axis, as real colours vary, never green)."""
    t = spread * rng.standard_normal()
    c = base * np.exp(np.array([t, 0.0, -t]) + 0.01 * rng.standard_normal(3))
    return (c / c.mean()).astype(np.float32)


def _rotate(dx: Array, dy: Array, pa: float) -> tuple[Array, Array]:
    """Coordinates along (x) and across (y) a major axis at position angle pa (radians)."""
    c, s = math.cos(pa), math.sin(pa)
    return dx * c + dy * s, dy * c - dx * s


def _sersic_b(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 0.009876 / n


def _sersic(dx: Array, dy: Array, re: float, n: float, q: float, pa: float, peak: float) -> Array:
    """Sersic profile with central intensity `peak`, effective radius re (pixels), axis ratio q."""
    x, y = _rotate(dx, dy, pa)
    r = np.sqrt(x * x + (y / q) ** 2) / re
    return peak * np.exp(-_sersic_b(n) * r ** (1.0 / n))


def _add_gaussian(
    img: Array, x: float, y: float, flux: Array, sx: float, sy: float | None = None, pa: float = 0.0
) -> None:
    """Add an elliptical Gaussian of total flux `flux` (per channel) at (x, y) on a small patch of img, in place."""
    sy = sx if sy is None else sy
    h, w = img.shape[:2]
    rad = 4.0 * max(sx, sy)
    x0, x1 = max(int(x - rad), 0), min(int(x + rad) + 2, w)
    y0, y1 = max(int(y - rad), 0), min(int(y + rad) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    u, v = _rotate((xx - x).astype(np.float32), (yy - y).astype(np.float32), pa)
    g = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) / (2.0 * math.pi * sx * sy)
    img[y0:y1, x0:x1] += g[..., None].astype(np.float32) * flux


def _blur(img: Array, sigma: float) -> Array:
    """Gaussian PSF blur of an (H, W, 3) window via FFT (the window is padded with dark sky, so wrap-around is nil)."""
    h, w = img.shape[:2]
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    transfer = np.exp(-2.0 * math.pi**2 * sigma**2 * (fx * fx + fy * fy)).astype(np.float32)
    spectrum = np.fft.rfft2(img, axes=(0, 1))
    spectrum *= transfer[..., None]
    return np.fft.irfft2(spectrum, s=(h, w), axes=(0, 1)).astype(np.float32)


def _add(img: Array, profile: Array, colour: Array) -> None:
    img += profile[..., None] * colour


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _add_tail(img: Array, rng: np.random.Generator, x: float, y: float, direction: float, s: float, sb: float) -> None:
    """Tidal tail: a curved, widening, fading chain of Gaussians starting at (x, y)."""
    length = rng.uniform(35, 110) * s
    curvature = rng.choice([-1.0, 1.0]) * rng.uniform(0.008, 0.03) / s
    colour = _colour(rng, DISC, 0.08)
    step = 2.0 * s
    t = 0.0
    while t < length:
        frac = t / length
        sigma = (1.5 + 4.5 * frac) * s
        surface = sb * math.exp(-1.6 * frac) * (1.0 - math.exp(-t / (6.0 * s)))
        flux = surface * sigma * math.sqrt(2.0 * math.pi) * step
        _add_gaussian(img, x, y, colour * flux, sigma)
        x += step * math.cos(direction)
        y += step * math.sin(direction)
        direction += curvature * step
        t += step


# ----------------------------------------------------------------------------------------------------------------
# The 8 classes. Each draws into a window (flux before PSF), centred at (0, 0) of dx, dy.


def _elliptical(img: Array, dx: Array, dy: Array, rng: np.random.Generator, s: float, q_range: tuple[float, float]):
    q = rng.uniform(*q_range)
    n = rng.uniform(2.0, 5.0) if q > 0.5 else rng.uniform(1.2, 4.0)  # flat ones are often S0-like
    re = rng.uniform(10, 24) * s
    surface_re = _loguniform(rng, 20, 120)  # intensity at re
    peak = surface_re * math.exp(_sersic_b(n))
    _add(img, _sersic(dx, dy, re, n, q, rng.uniform(0, math.pi), peak), _colour(rng, RED))


def _round(img, dx, dy, rng, s):
    _elliptical(img, dx, dy, rng, s, (0.74, 1.0))


def _in_between(img, dx, dy, rng, s):
    _elliptical(img, dx, dy, rng, s, (0.40, 0.85))


def _cigar(img, dx, dy, rng, s):
    _elliptical(img, dx, dy, rng, s, (0.15, 0.50))


def _edge_on(img: Array, dx: Array, dy: Array, rng: np.random.Generator, s: float) -> None:
    pa = rng.uniform(0, math.pi)
    x, y = _rotate(dx, dy, pa)
    h = rng.uniform(11, 21) * s
    z0 = h * (rng.uniform(0.07, 0.2) if rng.random() < 0.75 else rng.uniform(0.2, 0.36))  # some not quite edge-on
    i0 = _loguniform(rng, 200, 800)
    e = np.exp(-2.0 * np.abs(y) / z0)
    disc = i0 * np.exp(-np.sqrt(x * x + s * s) / h) * 4.0 * e / (1.0 + e) ** 2  # exp(-R/h) sech^2(z/z0)
    n_b = rng.uniform(1.0, 3.0)
    bulge = _sersic(dx, dy, rng.uniform(2.5, 7) * s, n_b, rng.uniform(0.55, 0.9), pa, i0 * rng.uniform(0.5, 4.0))
    flux = disc[..., None] * _colour(rng, DISC) + bulge[..., None] * _colour(rng, RED)
    if rng.random() < 0.7:  # dust lane, slightly off the mid-plane when the disc is inclined
        depth = rng.uniform(0.3, 0.9)
        width = z0 * rng.uniform(0.25, 0.5) + 0.3 * s
        offset = rng.normal(0, 0.3) * z0
        lane = depth * np.exp(-(((y - offset) / width) ** 2) - (x / (2.2 * h)) ** 2)
        flux *= 1.0 - lane[..., None] * DUST_K
    img += flux


def _spiral(img: Array, dx: Array, dy: Array, rng: np.random.Generator, s: float, barred: bool) -> None:
    q = rng.uniform(0.45, 1.0)  # cos(inclination)
    pa = rng.uniform(0, math.pi)
    u, v = _rotate(dx, dy, pa)
    v = v / q  # disc-plane coordinates
    r = np.sqrt(u * u + v * v) + 0.5 * s
    theta = np.arctan2(v, u)
    h = rng.uniform(10, 17) * s
    i0 = _loguniform(rng, 120, 600)
    disc = i0 * np.exp(-r / h)

    m = int(rng.choice([2, 2, 2, 3, 4]))
    pitch = math.radians(float(np.clip(rng.normal(*PITCH_DEG), 6, 40)))
    amp = rng.uniform(0.15, 0.85)  # low amplitude: faint arms, looks like an elliptical or S0
    sharp = rng.uniform(2.0, 6.0)
    mean_pattern = math.exp(math.lgamma(sharp + 0.5) - math.lgamma(sharp + 1.0)) / math.sqrt(math.pi)
    if barred:
        bar_len = rng.uniform(1.0, 2.0) * h
        r0 = bar_len
    else:
        bar_len = 0.0
        r0 = rng.uniform(0.3, 1.0) * h
    phi0 = rng.uniform(0, 2 * math.pi)
    phase = m * (theta - phi0) - (m / math.tan(pitch)) * np.log(r / r0)
    pattern = ((1.0 + np.cos(phase)) * 0.5) ** sharp / mean_pattern
    fade = 1.0 - np.exp(-((r / r0) ** 4))  # no arms inside r0 (the bar)
    arms = amp * fade * disc
    _add(img, disc - arms, _colour(rng, DISC))
    _add(img, arms * pattern, _colour(rng, (DISC + BLUE) / 2))

    bulge_n = rng.uniform(1.0, 3.5)
    bulge_q = max(q, rng.uniform(0.7, 1.0))
    _add(img, _sersic(dx, dy, rng.uniform(2, 5.5) * s, bulge_n, bulge_q, pa, i0 * rng.uniform(1.0, 8.0)), RED)

    if barred:  # bar along phi0 in the disc plane, so the arms start at its ends
        strength = _loguniform(rng, 0.7, 4.0)  # weak bars exist
        bq = rng.uniform(0.2, 0.4)
        bu, bv = _rotate(u, v, phi0)
        rb2 = (bu / bar_len) ** 2 + (bv / (bq * bar_len)) ** 2
        bar = i0 * strength * np.exp(-1.5 * rb2 * rb2)  # flat-topped, sharp ends
        _add(img, bar, _colour(rng, (RED + DISC) / 2))

    c, sn = math.cos(pa), math.sin(pa)
    cx, cy = -float(dx[0, 0]), -float(dy[0, 0])  # window position of the centre
    for _ in range(rng.poisson(amp * 30)):  # star-forming knots along the arms
        rk = r0 + rng.exponential(1.2 * h)
        tk = phi0 + 2 * math.pi * rng.integers(m) / m + math.log(rk / r0) / math.tan(pitch) + rng.normal(0, 0.1)
        ku, kv = rk * math.cos(tk), rk * math.sin(tk) * q
        x, y = ku * c - kv * sn, ku * sn + kv * c
        flux = _loguniform(rng, 20, 150) * i0 / 20 * math.exp(-rk / (2 * h))
        _add_gaussian(img, cx + x, cy + y, _colour(rng, BLUE) * flux, 1.2 * s)


def _barred(img, dx, dy, rng, s):
    _spiral(img, dx, dy, rng, s, barred=True)


def _unbarred(img, dx, dy, rng, s):
    _spiral(img, dx, dy, rng, s, barred=False)


def _irregular(img: Array, dx: Array, dy: Array, rng: np.random.Generator, s: float) -> None:
    cx, cy = -float(dx[0, 0]), -float(dy[0, 0])  # window position of the centre
    h = rng.uniform(9, 18) * s
    ox, oy = rng.normal(0, 3 * s, 2)
    base = _sersic(dx - ox, dy - oy, h * 1.68, 1.0, rng.uniform(0.4, 1.0), rng.uniform(0, math.pi), 1.0)
    _add(img, base * _loguniform(rng, 30, 100), _colour(rng, DISC))
    sx, sy = h * rng.uniform(0.6, 1.6), h * rng.uniform(0.6, 1.6)
    skew = rng.normal(0, 0.5 * h, 2)
    for _ in range(rng.integers(5, 20)):
        x = cx + rng.normal(0, sx) + skew[0] * rng.random()
        y = cy + rng.normal(0, sy) + skew[1] * rng.random()
        sigma = _loguniform(rng, 1.2, 6.0) * s
        flux = _loguniform(rng, 15, 150) * 2 * math.pi * sigma * sigma
        _add_gaussian(img, x, y, _colour(rng, BLUE if rng.random() < 0.5 else (BLUE + DISC) / 2, 0.1) * flux, sigma)


def _merger(img: Array, dx: Array, dy: Array, rng: np.random.Generator, s: float) -> None:
    cx, cy = -float(dx[0, 0]), -float(dy[0, 0])
    sep = rng.uniform(10, 50) * s
    angle = rng.uniform(0, 2 * math.pi)
    split = rng.uniform(0.3, 0.6)
    centres = [
        (-sep * split * math.cos(angle), -sep * split * math.sin(angle)),
        (sep * (1 - split) * math.cos(angle), sep * (1 - split) * math.sin(angle)),
    ]
    for k, (ox, oy) in enumerate(centres):
        scale = 1.0 if k == 0 else rng.uniform(0.4, 1.0)
        pa, q = rng.uniform(0, math.pi), rng.uniform(0.5, 1.0)
        if rng.random() < 0.6:
            n, re = rng.uniform(2, 4.5), rng.uniform(6, 14) * s * scale
            peak = _loguniform(rng, 20, 100) * math.exp(_sersic_b(n)) * scale
            _add(img, _sersic(dx - ox, dy - oy, re, n, q, pa, peak), _colour(rng, RED))
        else:
            i0 = _loguniform(rng, 120, 500) * scale
            _add(img, _sersic(dx - ox, dy - oy, rng.uniform(10, 20) * s * scale, 1.0, q, pa, i0), _colour(rng, DISC))
            _add(img, _sersic(dx - ox, dy - oy, 3 * s * scale, 2.0, q, pa, 3 * i0), RED)
        if rng.random() < 0.8:
            direction = angle + (math.pi if k == 0 else 0.0) + rng.normal(0, 0.8)
            _add_tail(img, rng, cx + ox, cy + oy, direction, s, _loguniform(rng, 8.0, 40.0))
    if rng.random() < 0.6:  # common diffuse envelope
        mx, my = (centres[0][0] + centres[1][0]) / 2, (centres[0][1] + centres[1][1]) / 2
        env = _sersic(dx - mx, dy - my, sep * 0.8 + 10 * s, 1.0, rng.uniform(0.5, 1), angle, _loguniform(rng, 10, 40))
        _add(img, env, _colour(rng, DISC))


CLASS_RENDERERS: tuple[Callable[..., None], ...] = (
    _round,
    _in_between,
    _cigar,
    _edge_on,
    _barred,
    _unbarred,
    _irregular,
    _merger,
)
assert len(CLASS_RENDERERS) == NUM_CLASSES


# Field objects per cutout of a galaxy with R90 = 10 arcsec (the cutout covers (8.48 R90)^2 of sky, so the counts
# grow with R90^2); matched to what the three real cutouts in data/gz2_real_samples show.
FIELD_STARS = 7.0
FIELD_GALAXIES = 14.0
NEIGHBOUR = 0.35  # chance of a resolved neighbour galaxy in the cutout


def _add_field(img: Array, rng: np.random.Generator, s: float, obs: Observation) -> None:
    """Foreground stars and small background galaxies anywhere in the cutout (already PSF-blurred)."""
    size = img.shape[0]
    psf = obs.psf_sigma
    arcsec = SIZE / size * obs.r90_arcsec * 0.02  # arcsec per pixel of this image
    area = (obs.r90_arcsec / 10.0) ** 2

    def position() -> tuple[float, float]:
        while True:  # mostly keep them off the target galaxy
            x, y = rng.uniform(0, size, 2)
            if math.hypot(x - size / 2, y - size / 2) > 45 * s or rng.random() < 0.1:
                return float(x), float(y)

    for _ in range(rng.poisson(FIELD_GALAXIES * area)):
        x, y = position()
        sigma = rng.uniform(0.3, 1.5) / arcsec  # faint background galaxies are 0.5-3 arcsec across
        q = rng.uniform(0.3, 1.0)
        flux = _loguniform(rng, 150, 6000)
        col = _colour(rng, RED if rng.random() < 0.6 else BLUE, 0.1)
        _add_gaussian(
            img, x, y, col * flux, math.hypot(sigma, psf), math.hypot(sigma * q, psf), rng.uniform(0, math.pi)
        )
    if rng.random() < NEIGHBOUR:  # a resolved neighbour: a small disc or spheroid 60-180 px from the centre
        r, angle = rng.uniform(60, 180) * s, rng.uniform(0, 2 * math.pi)
        x, y = size / 2 + r * math.cos(angle), size / 2 + r * math.sin(angle)
        re, n = rng.uniform(3, 12) * s, rng.choice([1.0, 4.0])
        half = int(min(6 * re + 3 * psf, size / 4))
        x0, y0 = int(x) - half, int(y) - half
        yy, xx = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
        profile = _sersic(xx - x, yy - y, math.hypot(re, psf), n, rng.uniform(0.3, 1.0), rng.uniform(0, math.pi), 1.0)
        col = _colour(rng, RED if n > 2 else DISC) * _loguniform(rng, 5, 80) * math.exp(_sersic_b(n))
        ys, xs = slice(max(y0, 0), min(y0 + 2 * half, size)), slice(max(x0, 0), min(x0 + 2 * half, size))
        img[ys, xs] += profile[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0, None] * col
    for _ in range(rng.poisson(FIELD_STARS * area)):
        x, y = position()
        flux = _loguniform(rng, 300, 300_000)
        t = rng.random()  # along the stellar colour locus, hot/blue to cool/red
        col = _colour(
            rng, (1 - t) * np.array([0.8, 0.95, 1.25], np.float32) + t * np.array([1.4, 1.0, 0.6], np.float32)
        )
        _add_gaussian(img, x, y, col * flux * 0.9, psf)
        _add_gaussian(img, x, y, col * flux * 0.1, 3 * psf)  # PSF wings


def render_galaxy(
    label: int,
    rng: np.random.Generator,
    size: int = SIZE,
    extra: Callable[[Array, Observation, np.random.Generator], None] | None = None,
) -> Array:
    """One synthetic cutout of class `label` (index into CLASS_NAMES): (size, size, 3) uint8. `extra` may add
    flux (an artefact, training/oddities.py) to the PSF-blurred (size, size, 3) flux image before the display."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"label must be in 0..{NUM_CLASSES - 1}, got {label}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    s = size / SIZE
    window = min(size, 2 * round((384 if label in (6, 7) else 288) * s / 2))
    jitter = np.clip(rng.normal(0, 2.0 * s, 2), -6 * s, 6 * s)
    centre = window / 2 + jitter
    yy, xx = _grid(window)
    dx, dy = xx - np.float32(centre[0]), yy - np.float32(centre[1])
    flux = np.zeros((window, window, 3), np.float32)
    CLASS_RENDERERS[int(label)](flux, dx, dy, rng, s)
    obs = observe(rng, size)
    flux *= _taper(window) * np.float32(BRIGHTNESS * _loguniform(rng, 0.5, 2.0))  # soft edge, overall brightness
    flux = _blur(flux, obs.psf_sigma)
    img = np.zeros((size, size, 3), np.float32)
    o = (size - window) // 2
    img[o : o + window, o : o + window] = flux
    _add_field(img, rng, s, obs)
    if extra is not None:
        extra(img, obs, rng)
    return to_display(img, rng, obs)


# ----------------------------------------------------------------------------------------------------------------
# Dataset


def _apportion(total: int, weights: Sequence[float], at_least_one: bool = False) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder). With at_least_one, every
    positive weight gets at least 1 when total allows it (taken from the largest share)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    if at_least_one and total >= int((w > 0).sum()):
        for k in np.flatnonzero((w > 0) & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[k] = 1
    return [int(c) for c in counts]


def parse_proportions(spec: str | Sequence[float] | None) -> list[float]:
    """`None`/"gz2" (GZ2 training split), "uniform", "a,b,...", or 8 numbers -> 8 non-negative weights."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "gz2"):
        return [float(c) for c in GZ2_TRAIN_COUNTS]
    if isinstance(spec, str):
        if spec.strip().lower() == "uniform":
            return [1.0] * NUM_CLASSES
        try:
            values = [float(v) for v in spec.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"proportions must be 'gz2', 'uniform' or {NUM_CLASSES} numbers, got {spec!r}") from None
    else:
        values = [float(v) for v in spec]
    if len(values) != NUM_CLASSES:
        raise ValueError(f"proportions need {NUM_CLASSES} values (one per class, label order), got {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"proportions must be finite, non-negative and not all zero, got {values}")
    return values


def plan_dataset(
    n: int, seed: int = 0, proportions: str | Sequence[float] | None = None
) -> dict[str, list[tuple[int, int]]]:
    """Which (galaxyID, label) goes to which split. Class counts follow `proportions` over the whole dataset (every
    class with a positive weight at least once), split sizes the GZ2 ratio, each class spread over the splits in
    that ratio; IDs are 1..n."""
    weights = parse_proportions(proportions)
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"n must be an integer, got {n!r}")
    if n < MIN_IMAGES:
        raise ValueError(f"n must be at least {MIN_IMAGES} (one image per class), got {n}")
    remaining = np.array(_apportion(n, weights, at_least_one=True))
    sizes = _apportion(n, GZ2_SPLIT_SIZES, at_least_one=True)
    rng = np.random.default_rng([seed, n, 0x5EED])
    plan: dict[str, list[tuple[int, int]]] = {}
    next_id = 1
    for j, (split, size) in enumerate(zip(SPLITS, sizes)):
        if j == len(SPLITS) - 1:
            counts = remaining.copy()
        else:  # this split's share of what is left, rounded so the split size is exact
            counts = np.array(_apportion(size, remaining, at_least_one=(split == "train")))
        remaining -= counts
        labels = np.repeat(np.arange(NUM_CLASSES), counts)
        rng.shuffle(labels)
        plan[split] = [(next_id + i, int(label)) for i, label in enumerate(labels)]
        next_id += len(labels)
    return plan


def _write_image(task: tuple[str, int, int, int]) -> None:
    """Worker: render image `galaxy_id` with its own RNG (seed, id) and write it atomically."""
    images_dir, seed, galaxy_id, label = task
    rng = np.random.default_rng([seed, galaxy_id])
    path = Path(images_dir) / f"{galaxy_id}.jpg"
    tmp = path.with_suffix(".jpg.tmp")
    Image.fromarray(render_galaxy(label, rng)).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} is not empty; choose a new directory or pass --force (force=True) to replace "
                "the synthetic dataset in it"
            )
        for split in SPLITS:  # CSVs first: from here on the directory reads as unfinished
            (out / f"gz2_{split}.csv").unlink(missing_ok=True)
        if (out / "images").is_dir():
            shutil.rmtree(out / "images")
    (out / "images").mkdir(parents=True, exist_ok=True)


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    proportions: str | Sequence[float] | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write n synthetic cutouts and the three split CSVs (written last) to out_dir; returns out_dir.
    Byte-identical output for the same (n, seed, proportions), whatever `workers` is."""
    plan = plan_dataset(n, seed, proportions)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare_out_dir(out, force)
    images_dir = str(out / "images")
    tasks = [(images_dir, int(seed), gid, label) for split in SPLITS for gid, label in plan[split]]
    bar = tqdm(total=len(tasks), desc="synth", unit="img", disable=not progress)
    if workers == 1:
        for task in tasks:
            _write_image(task)
            bar.update()
    else:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_image, tasks, chunksize=4):
                bar.update()
    bar.close()
    for split in SPLITS:
        path = out / f"gz2_{split}.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows((gid, label, label, label, label) for gid, label in plan[split])
        os.replace(tmp, path)
    return out


def write_preview(
    png_path: str | os.PathLike,
    dataset: str | os.PathLike | None = None,
    seed: int = 0,
    per_class: int = 6,
    with_real: bool = False,
) -> Path:
    """Montage of `per_class` examples of each class (one row per class, labelled), from `dataset` (its train split,
    then valid and test) or, without it, freshly rendered from `seed`; `with_real` adds a first row with the
    three real GZ2 cutouts of data/gz2_real_samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[list[np.ndarray]] = [[] for _ in range(NUM_CLASSES)]
    if dataset is not None:
        root = Path(dataset)
        for split in SPLITS:
            with open(root / f"gz2_{split}.csv", newline="") as f:
                for row in csv.DictReader(f):
                    label = int(row["label1"])
                    if len(rows[label]) < per_class:
                        rows[label].append(np.asarray(Image.open(root / "images" / f"{row['galaxyID']}.jpg")))
    else:
        for label in range(NUM_CLASSES):
            rows[label] = [
                render_galaxy(label, np.random.default_rng([seed, label, j, 0xF00])) for j in range(per_class)
            ]
    names = [f"{label}: {CLASS_NAMES[label]}" for label in range(NUM_CLASSES)]
    if with_real:
        from training.realism import real_images

        rows.insert(0, real_images()[:per_class])
        names.insert(0, "real GZ2 (data/)")
    fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 2.0, len(rows) * 2.0), squeeze=False)
    for label, images in enumerate(rows):
        for j in range(per_class):
            ax = axes[label][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j])
            else:
                ax.set_facecolor("0.5")
            if j == 0:
                ax.set_ylabel(names[label], fontsize=8)
    fig.suptitle("galaxyvit synthetic galaxies (424x424 cutouts)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, help=f"number of images over all three splits (at least {MIN_IMAGES})")
    parser.add_argument("--out", type=Path, help="output directory (must be empty or new unless --force)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument(
        "--proportions",
        default="gz2",
        help="class balance: 'gz2' (GZ2 training split, default), 'uniform', or 8 comma-separated weights "
        "in label order",
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPU cores)")
    parser.add_argument("--force", action="store_true", help="replace the CSVs and images/ of a non-empty --out")
    parser.add_argument(
        "--preview", type=Path, metavar="PNG", help="also write a labelled montage of 6 examples per class"
    )
    parser.add_argument("--with-real", action="store_true", help="--preview: a first row of the real GZ2 cutouts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print the realism table (pixel statistics of --n images, default 200, rendered in memory, beside the "
        "real cutouts'); exit status 1 if a median is outside the tolerance",
    )


def main(args: argparse.Namespace) -> int:
    if args.stats and args.out is None and args.preview is None:
        from training.realism import print_report

        return print_report(args.n or 200, args.seed, args.proportions)
    if args.out is None and args.preview is None:
        print("error: give --out DIR (with --n) to write a dataset, --preview PNG, or --stats", file=sys.stderr)
        return 2
    try:
        if args.out is not None:
            if args.n is None:
                print("error: --out needs --n (number of images)", file=sys.stderr)
                return 2
            start = time.perf_counter()
            write_dataset(args.out, args.n, args.seed, args.proportions, args.workers, not args.quiet, args.force)
            elapsed = time.perf_counter() - start
            print(f"wrote {args.n} images to {args.out} in {elapsed:.1f} s ({args.n / elapsed:.1f} images/s)")
        if args.preview is not None:
            path = write_preview(args.preview, dataset=args.out, seed=args.seed, with_real=args.with_real)
            print(f"wrote preview {path}")
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
