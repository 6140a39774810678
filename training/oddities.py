"""More images that are not (only) a galaxy: the artefacts and mishaps of a survey pipeline (issue #23).

Each is a square RGB uint8 image drawn with the synthetic cutouts' sky, PSF and display (training/sky.py):
  satellite_trail  a satellite crossing a star field: SDSS images the g, r, i bands minutes apart, so the
                   trail is three parallel lines of different colours, a few pixels apart;
  aeroplane_trail  an aeroplane: wide parallel lines (wing and tail lights) dotted with blinking lights;
  bleed_trail      a saturated star whose charge bleeds along the CCD columns, and bad columns (one band
                   each: SDSS has one CCD per band) bright or dark across the image;
  survey_edge      a galaxy cutout at the edge of the survey: everything beyond a straight edge is empty (0);
  misregistered    a galaxy cutout with one band shifted by 6-16 pixels (the colours do not line up);
  star_on_galaxy   a bright, saturated foreground star (halo, diffraction spikes) on top of a galaxy;
  text_page        a JPEG of a text or error page (black on white or white on dark), as a broken image
                   server returns.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.sky import JPEG_QUALITY, Observation, observe, to_display
from training.synthetic import NUM_CLASSES, SIZE, _add_gaussian, _loguniform, render_galaxy

Array = np.ndarray
WHITE = np.array([1.0, 1.0, 1.0], np.float32)


def _line(size: int, x: float, y: float, angle: float, width: float) -> Array:
    """(size, size) Gaussian profile (peak 1) across the line through (x, y) at `angle` (radians)."""
    yy, xx = np.indices((size, size), dtype=np.float32)
    d = (xx - x) * math.sin(angle) - (yy - y) * math.cos(angle)
    return np.exp(-0.5 * (d / width) ** 2)


def _star_field(rng: np.random.Generator, size: int) -> tuple[Array, Observation]:
    """Flux of a few field stars and no galaxy, with the observation it was drawn for."""
    obs = observe(rng, size)
    flux = np.zeros((size, size, 3), np.float32)
    for _ in range(rng.poisson(8)):
        x, y = rng.uniform(0, size, 2)
        _add_gaussian(flux, float(x), float(y), WHITE * _loguniform(rng, 300, 30_000), obs.psf_sigma)
    return flux, obs


def satellite_trail(rng: np.random.Generator, size: int = SIZE) -> Array:
    flux, obs = _star_field(rng, size)
    angle = rng.uniform(0, math.pi)
    x, y = size / 2 + rng.normal(0, size / 8, 2)
    gap = rng.uniform(3, 12) * size / SIZE  # the bands' lines apart (the satellite moved between exposures)
    brightness = _loguniform(rng, 15, 150)
    for band in range(3):
        shift = (band - 1) * gap
        px, py = x + shift * math.sin(angle), y - shift * math.cos(angle)
        flux[..., band] += brightness * _line(size, float(px), float(py), angle, obs.psf_sigma)
    return to_display(flux, rng, obs)


def aeroplane_trail(rng: np.random.Generator, size: int = SIZE) -> Array:
    flux, obs = _star_field(rng, size)
    angle = rng.uniform(0, math.pi)
    x, y = size / 2 + rng.normal(0, size / 8, 2)
    spacing, period = rng.uniform(8, 25) * size / SIZE, rng.uniform(15, 40) * size / SIZE
    for k in range(int(rng.integers(2, 4))):  # parallel lights
        px, py = x + k * spacing * math.sin(angle), y - k * spacing * math.cos(angle)
        colour = WHITE if k else np.array([1.6, 0.7, 0.6], np.float32)  # a red navigation light
        flux += (_loguniform(rng, 20, 200) * _line(size, px, py, angle, 2.0 * obs.psf_sigma))[..., None] * colour
        for t in np.arange(-size, size, period):  # blinking strobes along the track
            _add_gaussian(flux, px + t * math.cos(angle), py + t * math.sin(angle), WHITE * 3e4, obs.psf_sigma)
    return to_display(flux, rng, obs)


def _saturated_star(flux: Array, rng: np.random.Generator, x: float, y: float, psf: float, size: int) -> None:
    """A star bright enough to saturate: core, scattered-light halo, four diffraction spikes."""
    s = size / SIZE
    total = _loguniform(rng, 3e6, 3e7)
    _add_gaussian(flux, x, y, WHITE * total * 0.9, psf)
    _add_gaussian(flux, x, y, WHITE * total * 0.02, 25 * s)
    angle = rng.uniform(0, math.pi / 2)
    for spike in range(4):
        direction = angle + spike * math.pi / 2
        length = rng.uniform(0.25, 0.45) * size
        cx, cy = x + 0.5 * length * math.cos(direction), y + 0.5 * length * math.sin(direction)
        _add_gaussian(flux, cx, cy, WHITE * total * 0.004, 0.25 * length, 0.6 * psf, direction)


def bleed_trail(rng: np.random.Generator, size: int = SIZE) -> Array:
    flux, obs = _star_field(rng, size)
    x, y = (float(v) for v in size / 2 + rng.normal(0, size / 10, 2))
    _saturated_star(flux, rng, x, y, obs.psf_sigma, size)
    width = max(1, int(round(rng.uniform(1, 3) * obs.psf_sigma)))
    up, down = (int(v * size) for v in rng.uniform(0.15, 0.5, 2))
    x0 = int(x) - width // 2
    flux[max(int(y) - up, 0) : int(y) + down, max(x0, 0) : x0 + width] += 5e4  # charge bleeding along the column
    for _ in range(int(rng.integers(1, 4))):  # bad columns, in one band each
        column, band = int(rng.integers(size)), int(rng.integers(3))
        flux[:, column : column + int(rng.integers(1, 3)), band] += rng.choice([-1.0, 1.0]) * _loguniform(rng, 30, 300)
    return to_display(flux, rng, obs)


def survey_edge(rng: np.random.Generator, size: int = SIZE) -> Array:
    image = render_galaxy(int(rng.integers(NUM_CLASSES)), rng, size).copy()
    angle = rng.choice([0.0, 0.5, 1.0, 1.5]) * math.pi + rng.normal(0, 0.05)  # edges are nearly axis-aligned
    offset = rng.uniform(-0.15, 0.15) * size  # the edge from the centre: 35-65% of the cutout is empty
    yy, xx = np.indices((size, size))
    image[(xx - size / 2) * math.cos(angle) + (yy - size / 2) * math.sin(angle) > offset] = 0
    return image


def misregistered(rng: np.random.Generator, size: int = SIZE) -> Array:
    image = render_galaxy(int(rng.integers(NUM_CLASSES)), rng, size).copy()
    band = int(rng.integers(3))
    shift = rng.uniform(6, 16) * size / SIZE
    angle = rng.uniform(0, 2 * math.pi)
    dy, dx = int(round(shift * math.sin(angle))), int(round(shift * math.cos(angle)))
    image[..., band] = np.roll(image[..., band], (dy, dx), axis=(0, 1))
    return image


def star_on_galaxy(rng: np.random.Generator, size: int = SIZE) -> Array:
    def star(flux: Array, obs: Observation, rng: np.random.Generator) -> None:
        r, angle = rng.uniform(0, 40) * size / SIZE, rng.uniform(0, 2 * math.pi)
        _saturated_star(flux, rng, size / 2 + r * math.cos(angle), size / 2 + r * math.sin(angle), obs.psf_sigma, size)

    return render_galaxy(int(rng.integers(NUM_CLASSES)), rng, size, extra=star)


MESSAGES = (
    ("404 Not Found", "The requested URL was not found on this server."),
    ("500 Internal Server Error", "The server encountered an internal error and was unable to complete your request."),
    ("503 Service Unavailable", "The server is temporarily unable to service your request. Please try again later."),
    ("Error", "Object not found in the imaging footprint. No image is available for these coordinates."),
    ("SkyServer", "Query timed out: the request exceeded the maximum time allowed. Contact the helpdesk."),
)


def text_page(rng: np.random.Generator, size: int = SIZE) -> Array:
    dark = rng.random() < 0.3
    background = tuple(int(v) for v in (rng.integers(20, 50, 3) if dark else rng.integers(225, 256, 3)))
    ink = (230, 230, 230) if dark else tuple(int(v) for v in rng.integers(0, 60, 3))
    page = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(page)
    title, body = MESSAGES[int(rng.integers(len(MESSAGES)))]
    scale = size / SIZE
    y = rng.uniform(10, 60) * scale
    draw.text((12 * scale, y), title, fill=ink, font=ImageFont.load_default(size=max(8, 26 * scale)))
    y += 45 * scale
    font = ImageFont.load_default(size=max(6, 13 * scale))
    words = body.split() * int(rng.integers(1, 4))
    line: list[str] = []
    for word in words:  # wrap the body at about 50 characters
        line.append(word)
        if len(" ".join(line)) > 50:
            draw.text((12 * scale, y), " ".join(line), fill=ink, font=font)
            y, line = y + 20 * scale, []
    draw.text((12 * scale, y), " ".join(line), fill=ink, font=font)
    draw.line((12 * scale, y + 30 * scale, size - 12 * scale, y + 30 * scale), fill=ink, width=1)
    draw.text((12 * scale, y + 38 * scale), "Apache Server at skyserver Port 80", fill=ink, font=font)
    buffer = io.BytesIO()
    page.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(buffer).convert("RGB"))


KINDS = {
    "satellite_trail": satellite_trail,
    "aeroplane_trail": aeroplane_trail,
    "bleed_trail": bleed_trail,
    "survey_edge": survey_edge,
    "misregistered": misregistered,
    "star_on_galaxy": star_on_galaxy,
    "text_page": text_page,
}
