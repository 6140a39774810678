"""inference/decode.py: formats, modes, FITS scaling and the limits that turn bad uploads into 4xx errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from inference.decode import check_content_type, decode_image, lupton_stretch
from serving.errors import ServiceError

LIMIT = 1000 * 1000


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def fits_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


def gradient(mode: str, size=(40, 30)) -> Image.Image:
    rgb = np.zeros((size[1], size[0], 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    rgb[..., 1] = 80
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF"])
def test_formats_decode_to_rgb_of_same_size(fmt):
    image = decode_image(encode(gradient("RGB"), fmt), LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_png_roundtrip_is_exact():
    source = gradient("RGB")
    assert np.array_equal(np.asarray(decode_image(encode(source, "PNG"), LIMIT)), np.asarray(source))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I", "I;16", "F", "1", "RGBA", "YCbCr"])
def test_any_mode_becomes_rgb(mode):
    image = gradient(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "I": "TIFF", "I;16": "TIFF"}.get(mode, "PNG")
    decoded = decode_image(encode(image, fmt), LIMIT)
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    array = np.linspace(0, 60000, 40 * 30, dtype=np.uint16).reshape(30, 40)
    decoded = np.asarray(decode_image(encode(Image.fromarray(array), "PNG"), LIMIT))
    assert decoded[..., 0].min() == 0 and decoded[..., 0].max() == 255  # full range, not saturated at 255


def test_transparent_pixels_become_black_sky():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:5, :, 3] = 255  # top half opaque, bottom half transparent
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT))
    assert (decoded[:5] == 200).all() and (decoded[5:] == 0).all()


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = np.asarray(decode_image(buf.getvalue(), LIMIT))
    assert decoded[0, 0, 0] > 200 and decoded[0, 0, 2] < 50


def test_fits_cube_maps_i_r_g_to_red_green_blue_and_flips_rows():
    g = np.zeros((20, 30), np.float32)
    r = np.zeros_like(g)
    i = np.zeros_like(g)
    i[0, 0] = 10.0  # FITS row 0 = bottom row of the picture, in the red channel
    r[10, 15] = 10.0
    rgb = np.asarray(decode_image(fits_bytes(np.stack([g, r, i])), LIMIT))
    assert rgb.shape == (20, 30, 3)
    assert rgb[19, 0, 0] == 255 and rgb[19, 0, 1] == 0 and rgb[19, 0, 2] == 0
    assert rgb[9, 15, 1] == 255 and rgb[9, 15, 0] == 0
    assert rgb[0, 0].sum() == 0


def test_fits_2d_is_grey_and_nan_safe():
    data = np.random.default_rng(0).normal(1.0, 0.1, (16, 16)).astype(np.float32)
    data[4:8, 4:8] += 50
    data[0, 0] = np.nan
    rgb = np.asarray(decode_image(fits_bytes(data), LIMIT))
    assert rgb.shape == (16, 16, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb[15 - 5, 5, 0] > 200  # the bright square (rows flipped), near saturation
    assert np.median(rgb) < 60  # sky stays dark


def test_lupton_stretch_is_monotonic_and_saturates_at_top_percentile():
    ramp = np.linspace(0, 100, 1000).reshape(1, -1)
    out = lupton_stretch([ramp])[0, :, 0].astype(int)
    assert (np.diff(out) >= 0).all() and out[0] == 0 and out[-1] == 255


@pytest.mark.parametrize(
    "data, kind, status",
    [
        (b"", "empty_body", 400),
        (b"hello, not an image", "not_an_image", 415),
        (bytes(range(256)) * 8, "not_an_image", 415),
        (b"SIMPLE  = T" + b" " * 100, "corrupt_image", 400),
    ],
)
def test_bad_bytes_are_input_errors(data, kind, status):
    with pytest.raises(ServiceError) as info:
        decode_image(data, LIMIT)
    assert (info.value.kind, info.value.status) == (kind, status)


def test_truncated_jpeg_and_png_are_refused():
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)), fmt)
        with pytest.raises(ServiceError) as info:
            decode_image(data[: len(data) // 2], LIMIT)
        assert info.value.kind == "corrupt_image" and info.value.status == 400


def test_pixel_limit_is_checked_before_decoding():
    big = encode(Image.new("L", (1200, 1000)), "PNG")  # 1.2 Mpx, a few KB compressed
    with pytest.raises(ServiceError) as info:
        decode_image(big, LIMIT)
    assert info.value.kind == "too_many_pixels" and info.value.status == 413
    cube = np.zeros((3, 1100, 1000), np.float32)
    with pytest.raises(ServiceError) as info:
        decode_image(fits_bytes(cube), LIMIT)
    assert info.value.kind == "too_many_pixels"


def test_fits_with_wrong_plane_count_is_refused():
    with pytest.raises(ServiceError) as info:
        decode_image(fits_bytes(np.zeros((5, 8, 8), np.float32)), LIMIT)
    assert info.value.status == 415


def test_content_type_check():
    check_content_type("image/jpeg")
    check_content_type("image/png; charset=binary")
    check_content_type("application/fits")
    for bad in (None, "", "text/plain", "application/json"):
        with pytest.raises(ServiceError) as info:
            check_content_type(bad)
        assert info.value.status == 415
