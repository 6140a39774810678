"""Fast JPEG decoding: libjpeg-turbo straight into a numpy array (simplejpeg), the same pixels as Pillow.

Pillow decodes JPEGs with libjpeg-turbo too, but through its own image storage (4 bytes a pixel, read in
chunks); simplejpeg decodes into the final RGB array in one call, in about 60% of the CPU time for a
424x424 cutout (benchmarks/bench_decode.py). Both use the library's defaults, the accurate integer
IDCT and smooth ("fancy") chroma upsampling, so the pixels are the same bit for bit (tests/test_jpeg.py).

`decode_jpeg` takes only what it decodes exactly as Pillow does: baseline or progressive JPEGs in
YCbCr, RGB or grey, within the pixel limits. It declines (returns None) everything else, CMYK and YCCK
JPEGs (Pillow handles Adobe's inverted CMYK), other formats, and any file libjpeg-turbo reports a
problem with, even one it could recover from, so the caller decodes those with Pillow and gets
exactly the image or the error it got before.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # an installation without it decodes every JPEG with Pillow
    simplejpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"  # what Pillow's JPEG plugin accepts
EXACT_COLORSPACES = ("YCbCr", "RGB", "Gray")


def is_jpeg(data: bytes) -> bool:
    """Whether `data` starts as a JPEG file does (what Pillow's JPEG plugin looks for)."""
    return data[: len(JPEG_MAGIC)] == JPEG_MAGIC


def jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """A JPEG's (height, width, colour space) from its header (microseconds), or None when it is not one
    simplejpeg reads."""
    if simplejpeg is None or not is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return height, width, colorspace


def jpeg_pixels(data: bytes) -> int | None:
    """A JPEG's width x height from its header, or None when it is not one simplejpeg reads."""
    header = jpeg_header(data)
    return None if header is None else header[0] * header[1]


def decode_jpeg(data: bytes, max_pixels: int, max_decoded_bytes: int | None = None) -> np.ndarray | None:
    """A JPEG's pixels as an (H, W, 3) uint8 RGB array, or None where Pillow must decode it (see above).

    `max_decoded_bytes`: decline a JPEG whose decoded planes (1 for grey, 3 for colour, 1 byte a sample) are
    larger, so that the caller's size rules refuse it as they refuse any other image."""
    header = jpeg_header(data)
    if header is None or simplejpeg is None:
        return None
    height, width, colorspace = header
    pixels = height * width
    if colorspace not in EXACT_COLORSPACES or not 0 < pixels <= max_pixels:
        return None
    if max_decoded_bytes is not None and pixels * (1 if colorspace == "Gray" else 3) > max_decoded_bytes:
        return None
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow's own decompression-bomb rules apply
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except ValueError:
        return None
