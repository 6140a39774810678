"""Turn uploaded bytes into RGB images (Pillow, numpy and astropy.io.fits only; no torch).

Accepted: JPEG, PNG, TIFF, GIF (first frame), BMP, WebP in any Pillow mode, and FITS.
Every problem is a `ServiceError` (serving/errors.py) carrying a short machine-readable kind and the HTTP status,
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
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

from serving.errors import ServiceError
from serving.jpeg import decode_jpeg

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


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode one upload to an RGB image, refusing empty, oversized, truncated or non-image data."""
    if not data:
        raise ServiceError("empty_body", 400, "empty image: the upload has no bytes")
    if data[: len(FITS_MAGIC)] == FITS_MAGIC:
        return Image.fromarray(fits_to_rgb(data, max_pixels))
    if (rgb := decode_jpeg(data, max_pixels)) is not None:  # serving/jpeg.py; None: Pillow decodes it below
        return Image.fromarray(rgb)
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.seek(0)  # first frame of animations
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ServiceError("too_many_pixels", 413, f"image too large: {exc}") from None
    except Exception as exc:
        raise ServiceError("corrupt_image", 400, f"corrupt or truncated {image.format} image: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16/32-bit and float greys are min-max scaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(_scale_to_uint8(array)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # transparent = black sky
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) / (high - low) * 255.0).astype(np.uint8)


def fits_to_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """A FITS file's first image (2-D or g,r,i cube) as an HxWx3 uint8 array (see module docstring)."""
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
                    array = np.asarray(hdu.data, dtype=np.float64)
                    break
                else:
                    raise ServiceError("not_an_image", 415, "FITS file holds no image data")
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError("corrupt_image", 400, f"corrupt or truncated FITS file: {exc}") from None
    array = np.squeeze(array)
    if array.ndim == 2:
        planes = [array]
    elif array.ndim == 3 and array.shape[0] == 3:
        g, r, i = array
        planes = [i, r, g]  # red = i, green = r, blue = g
    else:
        raise ServiceError(
            "not_an_image", 415, f"FITS image must be 2-D or a 3-plane g,r,i cube, not shape {array.shape}"
        )
    rgb = lupton_stretch(planes)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(np.flipud(rgb))


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
    """Lupton et al. (2004) colour-preserving asinh stretch of 1 or 3 planes -> HxWxC uint8."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in planes], axis=-1)
    finite = np.isfinite(stack)
    sky = np.array(
        [np.median(stack[..., c][finite[..., c]]) if finite[..., c].any() else 0.0 for c in range(len(planes))]
    )
    stack = np.where(finite, stack, sky) - sky
    stack = np.clip(stack, 0.0, None)
    intensity = stack.mean(axis=-1)
    stretch = float(np.percentile(intensity, percentile))
    if not np.isfinite(stretch) or stretch <= 0:
        stretch = float(intensity.max()) if intensity.max() > 0 else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(intensity > 0, np.arcsinh(q * intensity / stretch) / (np.arcsinh(q) * intensity), 0.0)
    out = stack * scale[..., None]
    peak = out.max(axis=-1, keepdims=True)
    out = np.where(peak > 1.0, out / np.maximum(peak, 1e-12), out)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
