"""Turn uploaded bytes into RGB images (Pillow, numpy and astropy.io.fits only; no torch).

Accepted: JPEG, PNG, TIFF, GIF (first frame), BMP, WebP in any Pillow mode, and FITS.
Every problem is a `ServiceError` (inference/errors.py) carrying a short machine-readable kind and the HTTP status,
so the service answers bad input with a 4xx JSON error and never a 5xx.

FITS (what SDSS cutout tools produce from the g, r, i frames):
- the first HDU holding image data is used; a 2-D image gives a grey picture, a 3-plane cube
  (NAXIS3 = 3, planes in g, r, i order) gives colour with red = i, green = r, blue = g, the
  SDSS colour-composite convention; other shapes are refused (415);
- NaN/inf become the sky level; the sky level (per plane median) is subtracted;
- Lupton et al. (2004) asinh stretch on the mean intensity I of the planes:
  value_c = x_c * asinh(Q * I / s) / (asinh(Q) * I), with Q = 8 and s = the 99.5th percentile
  of I (so only the brightest 0.5% of pixels saturate, whatever the flux unit); a pixel whose
  largest channel exceeds 1 is scaled down as a whole (keeps its colour), then clipped to [0, 1]
  and scaled to 8 bits;
- FITS row 0 is the bottom of the image, so rows are flipped to the usual top-down order.

Memory: `max_decoded_bytes` refuses an image from its header when its decoded size (pixels x planes
x bytes per sample) is larger, before anything is decoded. With `crop`, only the centre window that
`galaxyvit.preprocess.center_crop` keeps is converted (Pillow formats) or even read (FITS: astropy
reads just the tiles and rows of that window), and the FITS sky level and stretch are computed on
that window; 16/32-bit and float greys keep the min-max range of the whole image. Work arrays are float32.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from inference.errors import ServiceError
from inference.jpeg import decode_jpeg

PIL_FORMATS = ("JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP")
RAW_CONTENT_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/tiff": "TIFF",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/webp": "WEBP",
    "image/fits": "FITS",
    "application/fits": "FITS",
    "application/octet-stream": None,  # sniff the bytes
}
FITS_MAGIC = b"SIMPLE  ="
FITS_BLOCK = 2880  # FITS files come in blocks of 2880 bytes
WIDE_GREYS = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # greys of more than 8 bits: min-max scaled
SAMPLE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}  # other modes: 1 byte a sample
MAX_PIXELS = 4096 * 4096  # default pixels per image, checked before decoding (decompression bombs)
MAX_DECODED_BYTES = 256 * 1024 * 1024  # default decoded size of one image, checked from its header
LUPTON_Q = 8.0
LUPTON_PERCENTILE = 99.5

ImageFile.LOAD_TRUNCATED_IMAGES = False


def check_content_type(content_type: str | None) -> None:
    """Raw-body uploads must name an image type we read (or application/octet-stream to sniff)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in RAW_CONTENT_TYPES:
        allowed = ", ".join(sorted(RAW_CONTENT_TYPES))
        raise ServiceError(
            "unsupported_media_type", 415, f"unsupported Content-Type {media or '(none)'!r}; use one of: {allowed}"
        )


def decode_image(
    data: bytes, max_pixels: int, max_decoded_bytes: int | None = None, crop: int | None = None
) -> Image.Image:
    """Decode one upload to an RGB image, refusing empty, oversized, truncated or non-image data.

    `max_decoded_bytes`: refuse (413 `too_large`) an image whose decoded size exceeds it, from its header.
    `crop`: the caller keeps only the centre crop of this size; the image returned may then be just that
    window (its centre crop is the same pixels), and the rest is not converted or, for FITS, not read."""
    if not data:
        raise ServiceError("empty_body", 400, "empty image: the upload has no bytes")
    if data[: len(FITS_MAGIC)] == FITS_MAGIC:
        return Image.fromarray(fits_to_rgb(data, max_pixels, max_decoded_bytes, crop))
    if (rgb := decode_jpeg(data, max_pixels, max_decoded_bytes)) is not None:  # inference/jpeg.py; else Pillow below
        left, top, right, bottom = centre_window(rgb.shape[1], rgb.shape[0], crop or max(rgb.shape))
        return Image.fromarray(rgb[top:bottom, left:right])
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", 413, f"image too large: {exc}") from None
    except Exception:
        raise ServiceError(
            "not_an_image", 415, f"not an image: the bytes are none of {', '.join(PIL_FORMATS)} or FITS"
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ServiceError("not_an_image", 415, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ServiceError(
            "too_many_pixels", 413, f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    bands = len(image.getbands())
    check_decoded_size(width, height, bands, SAMPLE_BYTES.get(image.mode, 1), max_decoded_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.seek(0)  # first frame of animations
            image.load()
            grey_range = _grey_range(image) if crop and image.mode in WIDE_GREYS else None
            kept = image.crop(centre_window(width, height, crop)) if crop else image
            return to_rgb(kept, grey_range)
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", 413, f"image too large: {exc}") from None
    except Exception as exc:
        raise ServiceError("corrupt_image", 400, f"corrupt or truncated {image.format} image: {exc}") from None


def check_decoded_size(width: int, height: int, planes: int, sample_bytes: int, limit: int | None) -> None:
    """413 `too_large` when width x height x planes x sample_bytes exceeds `limit` (None: no limit)."""
    size = width * height * planes * sample_bytes
    if limit is not None and size > limit:
        raise ServiceError(
            "too_large",
            413,
            f"image too large: {width}x{height} x {planes} planes x {sample_bytes} bytes = {size} bytes decoded "
            f"> limit {limit}",
        )


def centre_window(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels `galaxyvit.preprocess.center_crop(image, size)` keeps."""
    left = int(round((width - size) / 2.0)) if width > size else 0
    top = int(round((height - size) / 2.0)) if height > size else 0
    return left, top, left + min(width, size), top + min(height, size)


def _grey_range(image: Image.Image, band_rows: int = 256) -> tuple[float, float]:
    """Min and max of a 16/32-bit or float grey image (NaN/inf as 0), a band of rows at a time."""
    low, high = np.inf, -np.inf
    for top in range(0, image.height, band_rows):
        band = np.array(image.crop((0, top, image.width, min(image.height, top + band_rows))), dtype=np.float32)
        band = np.nan_to_num(band, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    return low, high


def to_rgb(image: Image.Image, grey_range: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16/32-bit and float greys are min-max scaled, not clipped (over
    `grey_range` when given: the range of the whole image this one was cropped from)."""
    if image.mode in WIDE_GREYS:
        array = np.array(image, dtype=np.float32)
        return Image.fromarray(_scale_to_uint8(array, grey_range)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # transparent = black sky
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scale_to_uint8(array: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """float32 `array` (changed in place) min-max scaled to uint8; NaN/inf count as 0."""
    array = np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = value_range if value_range is not None else (float(array.min()), float(array.max()))
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    array -= low
    array *= np.float32(255.0 / (high - low))
    np.clip(np.round(array, out=array), 0.0, 255.0, out=array)
    return array.astype(np.uint8)


def fits_to_rgb(
    data: bytes, max_pixels: int, max_decoded_bytes: int | None = None, crop: int | None = None
) -> np.ndarray:
    """A FITS file's first image (2-D or g,r,i cube) as an HxWx3 uint8 array (see module docstring);
    with `crop`, only its centre window (see `decode_image`)."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdus:
                for hdu in hdus:
                    naxis = int(hdu.header.get("ZNAXIS", hdu.header.get("NAXIS", 0)) or 0)
                    if naxis == 0:
                        continue
                    key = "ZNAXIS" if "ZNAXIS" in hdu.header else "NAXIS"
                    shape = [int(hdu.header.get(f"{key}{i}", 0) or 0) for i in range(1, naxis + 1)]
                    _check_fits_shape(shape, max_pixels)
                    sample_bytes = abs(int(hdu.header.get("ZBITPIX", hdu.header.get("BITPIX", 8)) or 8)) // 8
                    planes = int(np.prod(shape[2:])) if len(shape) > 2 else 1
                    check_decoded_size(shape[0], shape[1], planes, sample_bytes, max_decoded_bytes)
                    array = _read_fits_window(hdu, shape, sample_bytes, len(data), crop)
                    break
                else:
                    raise ServiceError("not_an_image", 415, "FITS file holds no image data")
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError("corrupt_image", 400, f"corrupt or truncated FITS file: {exc}") from None
    array = np.squeeze(array)
    if array.ndim == 2:
        planes_rgb = [array]
    elif array.ndim == 3 and array.shape[0] == 3:
        g, r, i = array
        planes_rgb = [i, r, g]  # red = i, green = r, blue = g
    else:
        raise ServiceError(
            "not_an_image", 415, f"FITS image must be 2-D or a 3-plane g,r,i cube, not shape {array.shape}"
        )
    rgb = lupton_stretch(planes_rgb)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(np.flipud(rgb))


def _read_fits_window(hdu: Any, shape: list[int], sample_bytes: int, file_size: int, crop: int | None) -> np.ndarray:
    """The HDU's data as float32 in numpy axis order; with `crop`, only the rows and columns of the centre
    window of the displayed (row-flipped) image, read through astropy's `section` (tiles and rows it needs)."""
    # the data must all be there, as when it was read whole (compressed: the table and heap, but for padding)
    info = hdu.fileinfo()
    if hasattr(hdu, "compression_type"):
        end = info["datLoc"] + info["datSpan"] - (FITS_BLOCK - 1)
    else:
        end = info["datLoc"] + int(np.prod(shape)) * sample_bytes
    if end > file_size:
        raise ServiceError("corrupt_image", 400, f"truncated FITS file: its data ends past byte {end} of {file_size}")
    if not crop:
        return np.asarray(hdu.data, dtype=np.float32)
    width, height = shape[0], shape[1]
    left, top, right, bottom = centre_window(width, height, crop)
    rows = slice(height - bottom, height - top)  # FITS row 0 is the bottom of the picture
    higher = tuple(reversed(shape[2:]))  # numpy order of the axes above the image plane (planes)
    window = np.empty((*higher, rows.stop - rows.start, right - left), np.float32)
    for plane in np.ndindex(higher):  # a plane at a time: astropy decompresses only that plane's tiles
        window[plane] = hdu.section[(*plane, rows, slice(left, right))]
    return window


def _check_fits_shape(shape: list[int], max_pixels: int) -> None:
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise ServiceError("not_an_image", 415, f"FITS image must be 2-D or a 3-plane cube, not axes {shape}")
    planes = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if planes not in (1, 3):
        raise ServiceError("not_an_image", 415, f"FITS image must be 2-D or a 3-plane g,r,i cube, not axes {shape}")
    if shape[0] * shape[1] > max_pixels:
        raise ServiceError(
            "too_many_pixels",
            413,
            f"image too large: {shape[0]}x{shape[1]} = {shape[0] * shape[1]} pixels > limit {max_pixels}",
        )


def lupton_stretch(planes: list[np.ndarray], q: float = LUPTON_Q, percentile: float = LUPTON_PERCENTILE) -> np.ndarray:
    """Lupton et al. (2004) colour-preserving asinh stretch of 1 or 3 planes -> HxWxC uint8.

    float32, in place on one HxWxC stack: a few image-sized buffers, whatever the number of steps."""
    stack = np.stack([np.asarray(p, dtype=np.float32) for p in planes], axis=-1)
    for c in range(stack.shape[-1]):
        plane = stack[..., c]
        finite = np.isfinite(plane)
        sky = float(np.median(plane[finite])) if finite.any() else 0.0
        plane[~finite] = sky
        plane -= np.float32(sky)
    np.maximum(stack, 0.0, out=stack)
    intensity = stack.mean(axis=-1, dtype=np.float32)
    stretch = float(np.percentile(intensity, percentile))
    if not np.isfinite(stretch) or stretch <= 0:
        stretch = float(intensity.max()) if intensity.max() > 0 else 1.0
    # scale = asinh(Q * I / s) / (asinh(Q) * I) where I > 0, else 0 (the intensity buffer turns into the divisor)
    positive = intensity > 0
    scale = np.multiply(intensity, np.float32(q / stretch))
    np.arcsinh(scale, out=scale)
    intensity *= np.float32(np.arcsinh(q))
    np.divide(scale, intensity, out=scale, where=positive)
    scale[~positive] = 0.0
    del intensity, positive
    stack *= scale[..., None]
    peak = stack.max(axis=-1)
    np.maximum(peak, 1.0, out=peak)  # a pixel whose largest channel exceeds 1 is scaled down as a whole
    stack /= peak[..., None]
    np.clip(stack, 0.0, 1.0, out=stack)
    stack *= np.float32(255.0)
    return np.round(stack, out=stack).astype(np.uint8)
