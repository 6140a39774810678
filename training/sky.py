"""How SDSS and GZ2 show a galaxy: the cutout scale, the PSF, sky noise and the asinh colour display.

GZ2 cutouts (Willett et al. 2013, section 2.1) are 424x424 JPEGs of the SDSS gri images at 0.02 x petroR90_r
arcsec per pixel: every galaxy's Petrosian R90 spans 50 pixels (the width is 8.48 R90), whatever its size on
the sky. What does change with the angular size is how coarse the SDSS data are in those pixels:
  - the PSF (seeing FWHM about 1.4 arcsec in r, SDSS DR7, Abazajian et al. 2009) is 1.4 / (0.02 R90) pixels
    wide: 14 px for a small (R90 = 5") galaxy, 3.5 px for a large (20") one;
  - one SDSS pixel (0.396") is 0.396 / (0.02 R90) cutout pixels: the sky noise is resampled, correlated
    over that many pixels.
R90 is drawn log-uniform over 4-20 arcsec (GZ2's main sample has petroR90_r > 3" and r < 17, most of it
5-15"). The sky noise has Poisson's growth with the source; the i band (shown as red) is the noisiest, as the
issue's measured sky sigma 4.5 / 3 / 3 (R/G/B) says. The display is the asinh stretch of Lupton et al. (2004)
on the mean of the three bands (keeps colours), saturating towards white with the hue kept, on a small sky
pedestal; `JPEG_QUALITY` 75 is what the real GZ2 cutouts' quantisation tables decode to (libjpeg's standard
tables scaled by 0.5, 4:2:0 chroma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SDSS_PIXEL = 0.396  # arcsec
GZ2_SCALE = 0.02  # cutout arcsec per pixel, per arcsec of petroR90_r
CUTOUT = 424  # pixels: the width of a GZ2 cutout
R90_ARCSEC = (4.0, 20.0)
SEEING_FWHM = (1.4, 0.2)  # arcsec: median and spread of the r-band seeing
JPEG_QUALITY = 75
BAND_NOISE = np.array([4.0, 1.0, 1.0], np.float32)  # sky sigma of i, r, g relative to r (flux units)
STRETCH_A = 36.0  # display = STRETCH_A * asinh(I / STRETCH_SOFT) / I * flux (+ pedestal)
STRETCH_SOFT = 12.0
PEDESTAL = np.array([0.5, 4.0, 2.0], np.float32)  # display sky level R/G/B


@dataclass(frozen=True)
class Observation:
    """One cutout's observing conditions, in cutout pixels of a `size` image."""

    r90_arcsec: float
    psf_sigma: float  # Gaussian sigma of the PSF
    native: float  # one SDSS pixel, in cutout pixels (>= 1: the noise correlation length)
    noise: float  # sky sigma of the r band (flux units; the renderers' fluxes are in these)
    gain: float  # source counts per flux unit: the source's Poisson variance is flux / gain


def observe(rng: np.random.Generator, size: int = CUTOUT) -> Observation:
    """Draw the conditions of one cutout: angular size (hence PSF and pixel scale), seeing, noise, gain."""
    r90 = math.exp(rng.uniform(math.log(R90_ARCSEC[0]), math.log(R90_ARCSEC[1])))
    scale = GZ2_SCALE * r90 * CUTOUT / size  # arcsec per cutout pixel
    fwhm = max(0.9, rng.normal(*SEEING_FWHM))
    return Observation(
        r90_arcsec=r90,
        psf_sigma=fwhm / 2.3548 / scale,
        native=max(1.0, SDSS_PIXEL / scale),
        noise=rng.uniform(0.85, 1.2),
        gain=rng.uniform(15, 50),
    )


def _sky_noise(rng: np.random.Generator, h: int, w: int, native: float) -> np.ndarray:
    """(3, h, w) unit-variance noise, correlated over `native` pixels (white noise on the SDSS pixel grid,
    resampled bilinearly to the cutout's pixels)."""
    mh, mw = int(math.ceil(h / native)) + 2, int(math.ceil(w / native)) + 2
    coarse = rng.standard_normal((3, mh, mw), dtype=np.float32)
    if native <= 1.0:
        return coarse[:, :h, :w]
    box = (0.0, 0.0, w / native, h / native)
    planes = [
        np.asarray(Image.fromarray(p, mode="F").resize((w, h), Image.Resampling.BILINEAR, box=box)) for p in coarse
    ]
    noise = np.stack(planes)
    noise *= 1.0 / float(noise.std())
    return noise


def to_display(img: np.ndarray, rng: np.random.Generator, obs: Observation | None = None) -> np.ndarray:
    """(H, W, 3) linear flux (R, G, B = i, r, g) -> (H, W, 3) uint8: Poisson and sky noise, asinh stretch,
    pedestal. Works on colour planes (3, H, W): reductions over a last axis of 3 are slow in numpy."""
    h, w = img.shape[:2]
    obs = observe(rng, h) if obs is None else obs
    planes = np.ascontiguousarray(img.transpose(2, 0, 1))
    noise = _sky_noise(rng, h, w, obs.native)
    sigma = np.maximum(planes, 0.0)
    sigma *= 1.0 / obs.gain
    sigma += (obs.noise * BAND_NOISE[:, None, None]) ** 2
    np.sqrt(sigma, out=sigma)
    noise *= sigma
    planes += noise
    x = (planes[0] + planes[1] + planes[2]) * (1.0 / (3.0 * STRETCH_SOFT))
    x = np.where(np.abs(x) < 1e-3, np.float32(1e-3), x)
    factor = np.arcsinh(x) / x * (STRETCH_A / STRETCH_SOFT)
    planes *= factor
    pedestal = PEDESTAL + np.float32(rng.uniform(-0.5, 0.5))
    top = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    limit = 255.0 - float(pedestal.max())
    np.maximum(top, limit, out=top)
    planes *= limit / top  # saturate towards white, keeping the hue
    planes += (pedestal + 0.5)[:, None, None]
    np.clip(planes, 0, 255, out=planes)
    return np.ascontiguousarray(planes.astype(np.uint8).transpose(1, 2, 0))
