"""Uploads that are small on the wire and large once decoded: what the decoding memory budget is about.

A galaxy (exponential profile) in the middle of an empty sky of side x side pixels, as a RICE-compressed
FITS g,r,i cube (3 x side^2 float32, a few MB), a float32 TIFF (deflate) and a 16-bit PNG.
"""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits
from PIL import Image

GALAXY_RADIUS = 200  # pixels of the central square holding the galaxy; the rest is empty sky


def galaxy_plane(side: int, dtype: type = np.float32) -> np.ndarray:
    """A side x side plane, zero but for an exponential galaxy in its centre."""
    plane = np.zeros((side, side), dtype)
    r = min(GALAXY_RADIUS, side // 2)
    y, x = np.ogrid[-r:r, -r:r]
    centre = side // 2
    plane[centre - r : centre + r, centre - r : centre + r] = 1000.0 * np.exp(-np.hypot(x, y) / 60.0)
    return plane


def rice_cube(side: int, whole_plane_tiles: bool = False) -> bytes:
    """A RICE_1-compressed FITS g,r,i cube (3 x side x side float32) in an image extension. Tiles are
    rows (astropy's default: a centre crop needs only its rows), or with `whole_plane_tiles` one tile a
    plane (a centre crop needs whole planes decompressed)."""
    plane = galaxy_plane(side)
    cube = np.stack([plane * 0.5, plane, plane * 1.5])
    tiles = (1, side, side) if whole_plane_tiles else None
    hdu = fits.CompImageHDU(cube, compression_type="RICE_1", tile_shape=tiles)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def float_tiff(side: int) -> bytes:
    """A side x side float32 grey TIFF, deflate-compressed."""
    buf = io.BytesIO()
    Image.fromarray(galaxy_plane(side), "F").save(buf, format="TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()


def png16(side: int) -> bytes:
    """A side x side 16-bit grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.round(galaxy_plane(side) * 60.0).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()
