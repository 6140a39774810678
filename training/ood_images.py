"""Images that are not galaxies, for testing and measuring the out-of-distribution flag.

A survey pipeline sends a galaxy classifier more than galaxies. Each kind below is a square RGB
uint8 image of the synthetic cutouts' size (424 by default), drawn with the same sky, PSF and
asinh display as training/synthetic.py where the kind is astronomical:
  blank_sky        sky noise only, no source;
  single_star      one star (PSF core and wings) near the centre, on sky;
  saturated_star   a very bright star: core saturated at the display's ceiling, halo, four diffraction spikes;
  pure_noise       uniform random pixels over 0..255;
  flat_grey        one grey level everywhere;
  natural_scene    a daylight-like scene: sky gradient, horizon, textured 1/f ground;
  galaxy_edge      a synthetic galaxy shown 2x larger with its centre just outside the model's
                   centre crop, so only an edge of it is in view;
and the survey artefacts of training/oddities.py: satellite_trail, aeroplane_trail, bleed_trail, survey_edge,
misregistered, star_on_galaxy, text_page.
`ood_images(n_per_kind, seed)` gives a reproducible set; `write_ood_images` saves one as PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from training.oddities import KINDS as ODDITIES
from training.sky import to_display as _to_display
from training.synthetic import SIZE, _add_gaussian, _colour, _loguniform, render_galaxy

STAR_COLOUR = np.array([1.0, 1.0, 1.0], np.float32)


def _star_colour(rng: np.random.Generator) -> np.ndarray:
    t = rng.random()  # along the stellar colour locus, hot/blue to cool/red (as synthetic.py's field stars)
    base = (1 - t) * np.array([0.8, 0.95, 1.25], np.float32) + t * np.array([1.4, 1.0, 0.6], np.float32)
    return _colour(rng, base)


def _add_star(flux: np.ndarray, rng: np.random.Generator, x: float, y: float, total: float, psf: float) -> None:
    colour = _star_colour(rng)
    _add_gaussian(flux, x, y, colour * total * 0.9, psf)
    _add_gaussian(flux, x, y, colour * total * 0.1, 3 * psf)  # PSF wings


def blank_sky(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    return _to_display(np.zeros((size, size, 3), np.float32), rng)


def single_star(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    s = size / SIZE
    flux = np.zeros((size, size, 3), np.float32)
    x, y = size / 2 + rng.normal(0, 4 * s, 2)
    _add_star(flux, rng, float(x), float(y), _loguniform(rng, 2_000, 40_000), rng.uniform(1.0, 2.6) * s)
    return _to_display(flux, rng)


def saturated_star(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    s = size / SIZE
    flux = np.zeros((size, size, 3), np.float32)
    x, y = (float(v) for v in size / 2 + rng.normal(0, 6 * s, 2))
    psf = rng.uniform(1.2, 2.6) * s
    total = _loguniform(rng, 3e6, 3e7)
    _add_star(flux, rng, x, y, total, psf)
    _add_gaussian(flux, x, y, STAR_COLOUR * total * 0.02, 25 * s)  # scattered-light halo
    angle = rng.uniform(0, math.pi / 2)
    for spike in range(4):  # diffraction spikes of the secondary-mirror vanes, at right angles
        direction = angle + spike * math.pi / 2
        length = rng.uniform(0.25, 0.45) * size
        cx, cy = x + 0.5 * length * math.cos(direction), y + 0.5 * length * math.sin(direction)
        _add_gaussian(flux, cx, cy, STAR_COLOUR * total * 0.004, 0.25 * length, 0.6 * psf, direction)
    return _to_display(flux, rng)


def pure_noise(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def flat_grey(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), rng.integers(60, 200), np.uint8)


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) noise with a 1/f amplitude spectrum (the statistics of natural images), scaled to std 1."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size)
    phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(size, size))
    return (field - field.mean()) / field.std()


def natural_scene(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    rows = np.linspace(0, 1, size)[:, None, None]
    level = rng.uniform(0.35, 0.65)
    horizon = level + 0.05 * _pink_noise(rng, size)[0][None, :, None]  # a ragged skyline
    sky_top, sky_low = np.array([70, 120, 200]), np.array([170, 200, 230])
    ground_colour = np.array([[90, 110, 50], [120, 95, 60], [70, 90, 70]])[rng.integers(3)]
    sky = sky_top + (sky_low - sky_top) * np.clip(rows / level, 0, 1)
    ground = ground_colour * (1 + 0.35 * _pink_noise(rng, size)[..., None])
    clouds = 40 * np.clip(_pink_noise(rng, size), 0, None)[..., None] * (rows < horizon)
    image = np.where(rows < horizon, sky + clouds, ground)
    return np.clip(image, 0, 255).astype(np.uint8)


def galaxy_edge(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A 2x-scale synthetic galaxy whose centre lies just outside the left edge of the centre crop (224 of 424),
    turned by a random multiple of 90 degrees so the edge can be on any side."""
    big = render_galaxy(int(rng.integers(8)), rng, 2 * size)  # galaxy centred at (size, size)
    left = size - int(0.22 * size)  # the centre sits at 0.22 * size in the window; the crop starts at 0.236
    top = size // 2 + int(rng.integers(-size // 20, size // 20 + 1))
    window = big[top : top + size, left : left + size]
    return np.ascontiguousarray(np.rot90(window, k=int(rng.integers(4))))


OOD_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "blank_sky": blank_sky,
    "single_star": single_star,
    "saturated_star": saturated_star,
    "pure_noise": pure_noise,
    "flat_grey": flat_grey,
    "natural_scene": natural_scene,
    "galaxy_edge": galaxy_edge,
    **ODDITIES,  # survey artefacts and mishaps (training/oddities.py)
}


def ood_images(
    n_per_kind: int = 4, seed: int = 0, size: int = SIZE, kinds: tuple[str, ...] | None = None
) -> list[tuple[str, np.ndarray]]:
    """(kind, image) pairs, `n_per_kind` of each kind; image i of a kind depends only on (seed, kind, i)."""
    kinds = tuple(OOD_KINDS) if kinds is None else kinds
    unknown = [k for k in kinds if k not in OOD_KINDS]
    if unknown:
        raise ValueError(f"unknown kind(s) {unknown}; choose from {', '.join(OOD_KINDS)}")
    out = []
    for kind in kinds:
        kind_index = list(OOD_KINDS).index(kind)
        for i in range(n_per_kind):
            out.append((kind, OOD_KINDS[kind](np.random.default_rng([seed, kind_index, i]), size)))
    return out


def write_ood_images(out_dir: str | Path, n_per_kind: int = 4, seed: int = 0, size: int = SIZE) -> list[Path]:
    """Save `ood_images(...)` as OUT/<kind>_<i>.png (lossless); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, counts = [], {}
    for kind, image in ood_images(n_per_kind, seed, size):
        counts[kind] = counts.get(kind, -1) + 1
        path = out_dir / f"{kind}_{counts[kind]}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
