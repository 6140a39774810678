"""Upload bodies for the fuzzer (load_tests/fuzz_cases.py), as hypothesis strategies.

Valid images in every format Pillow writes, in odd modes and sizes (sometimes animated), FITS files of
many shapes and fills, decompression bombs and thin images, and any of them truncated, corrupted,
extended or given a header that lies about the image's size.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from functools import cache

import numpy as np
from astropy.io import fits
from hypothesis import strategies as st
from PIL import Image

# Pillow modes each format can write (combinations Pillow refuses fall back to RGB PNG)
FORMAT_MODES = {
    "JPEG": ("L", "RGB", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "TIFF": ("1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "GIF": ("P", "L"),
    "BMP": ("1", "L", "P", "RGB"),
    "WEBP": ("RGB", "RGBA"),
}
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"SIMPLE  =", b"RIFF")


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        array = rng.integers(0, 60000, (height, width)).astype(dtype)
        return Image.fromarray(array)  # uint16 -> I;16, int32 -> I, float32 -> F
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


@st.composite
def pil_images(draw) -> tuple[str, bytes]:
    """(format, bytes) of a valid image in a random format, mode and size (sometimes animated)."""
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    width = draw(st.one_of(st.integers(1, 64), st.integers(1, 400), st.sampled_from([1, 223, 224, 225, 1000])))
    height = draw(st.one_of(st.integers(1, 64), st.integers(1, 400), st.sampled_from([1, 223, 224, 225, 600])))
    seed = draw(st.integers(0, 2**32 - 1))
    image = make_image(mode, width, height, seed)
    try:
        if fmt == "GIF" and draw(st.booleans()):  # animated: the service uses the first frame
            frames = [make_image(mode, width, height, seed + k) for k in range(1, draw(st.integers(2, 4)))]
            return fmt, encode(image, fmt, save_all=True, append_images=frames, duration=50, loop=0)
        extra = {"quality": draw(st.integers(1, 100))} if fmt == "JPEG" else {}
        return fmt, encode(image, fmt, **extra)
    except (OSError, ValueError, KeyError):
        return "PNG", encode(image.convert("RGB"), "PNG")


@st.composite
def fits_files(draw) -> tuple[str, bytes]:
    """FITS files: 2-D, g,r,i cubes, and shapes the service refuses; NaN/inf/constant data; extensions."""
    shape = draw(
        st.sampled_from(
            [(16, 16), (40, 30), (3, 24, 24), (1, 20, 20), (4, 16, 16), (50,), (2, 3, 8, 8), (1, 1), (3, 1, 1)]
        )
    )
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(["noise", "constant", "nan", "inf", "zeros"]))
    data = rng.normal(100, 30, shape)
    if fill == "constant":
        data[...] = 7
    elif fill == "zeros":
        data[...] = 0
    elif fill in ("nan", "inf") and np.issubdtype(dtype, np.floating):
        data.flat[:: max(1, data.size // 5)] = np.nan if fill == "nan" else np.inf
    data = data.astype(dtype)
    layout = draw(st.sampled_from(["primary", "extension", "compressed", "empty"]))
    if layout == "primary":
        hdus = fits.HDUList([fits.PrimaryHDU(data)])
    elif layout == "extension":
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)])
    elif layout == "compressed" and data.ndim >= 2 and data.dtype != np.float64:
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])])
    buf = io.BytesIO()
    hdus.writeto(buf)
    return "FITS", buf.getvalue()


@cache
def bombs(max_pixels: int) -> tuple[tuple[str, bytes], ...]:
    """Small files that decode to too many pixels, and thin images just inside the pixel limit."""
    side = int(max_pixels**0.5) + 64
    thin = min(max_pixels, 4_000_000)
    return (
        ("PNG", encode(Image.new("L", (side, side)), "PNG")),  # a few KB -> more than max_pixels
        ("GIF", encode(Image.new("P", (side, 200)), "GIF")),
        ("PNG", encode(Image.new("L", (1, thin)), "PNG")),  # thin: allowed, must not be padded to 224 x 4M
        ("PNG", encode(Image.new("L", (thin, 1)), "PNG")),
        ("TIFF", encode(Image.new("1", (side, side)), "TIFF", compression="group4")),
    )


def set_dimensions(fmt: str, data: bytes, width: int, height: int) -> bytes:
    """Rewrite the header's claimed size (zero or enormous), keeping checksums valid where there are any."""
    out = bytearray(data)
    if fmt == "PNG" and out[12:16] == b"IHDR":
        out[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    elif fmt == "GIF":
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = out.find(b"\x2c", 13)  # first image descriptor
        if at > 0:
            out[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif fmt == "BMP":
        out[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    elif fmt == "JPEG":
        match = re.search(rb"\xff[\xc0\xc1\xc2]", bytes(out))
        if match:
            at = match.start() + 5
            out[at : at + 4] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif fmt == "FITS":
        text = bytes(out[:2880]).decode("ascii", "replace")
        for axis, value in (("NAXIS1", width), ("NAXIS2", height)):
            text = re.sub(rf"{axis}  =\s+\d+", f"{axis}  = {value:>20}", text, count=1)
        out[:2880] = text.encode("ascii", "replace")[:2880]
    return bytes(out)


@st.composite
def mutated(draw, payload: tuple[str, bytes]) -> bytes:
    """A file left whole, truncated, corrupted, extended or given a lying header."""
    fmt, data = payload
    how = draw(st.sampled_from(["none", "truncate", "flip", "overwrite", "append", "prepend", "dims", "dims"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        out = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[at] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + junk + data[at + len(junk) :]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=256))
    if how == "prepend":
        return draw(st.binary(min_size=1, max_size=16)) + data
    if how == "dims":
        big = st.sampled_from([0, 1, 65535, 100_000, 2**31 - 1, 2**32 - 1])
        return set_dimensions(fmt, data, draw(big), draw(big))
    return data


def payloads(max_pixels: int) -> st.SearchStrategy[bytes]:
    """Any upload body: images (mutated or not), FITS, bombs, random bytes and magic-prefixed garbage."""
    return st.one_of(
        pil_images().flatmap(mutated),
        pil_images().map(lambda p: p[1]),
        fits_files().flatmap(mutated),
        st.sampled_from(bombs(max_pixels)).flatmap(mutated),
        st.binary(max_size=2048),
        st.tuples(st.sampled_from(MAGIC), st.binary(max_size=512)).map(lambda t: t[0] + t[1]),
        st.just(b""),
    )
