"""The fast JPEG path (inference/jpeg.py): Pillow's pixels bit for bit, Pillow's errors, the same predictions."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catalog.decode import center_crop_array, decode_into, read_crop
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import Preprocessing, center_crop, eval_batch
from inference.decode import decode_image
from inference.jpeg import decode_jpeg
from inference.runtime import load_model
from serving.errors import ServiceError
from training.synthetic import render_galaxy

MAX_PIXELS = 10_000_000


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def pillow_rgb(data: bytes) -> np.ndarray:
    """What Pillow alone decodes (the reference the fast path must equal)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def synthetic_jpegs() -> dict[str, bytes]:
    """Synthetic cutouts saved the ways JPEGs come: qualities, chroma subsampling, progressive, grey, odd sizes."""
    rng = np.random.default_rng(3)
    galaxy = Image.fromarray(render_galaxy(2, rng, 424))
    odd = Image.fromarray(render_galaxy(5, rng, 301)).crop((0, 0, 301, 257))
    return {
        "q90 4:2:0": jpeg_bytes(galaxy, quality=90),
        "q75 4:2:2": jpeg_bytes(galaxy, quality=75, subsampling=1),
        "q95 4:4:4": jpeg_bytes(galaxy, quality=95, subsampling=0),
        "progressive": jpeg_bytes(galaxy, quality=85, progressive=True),
        "grey": jpeg_bytes(galaxy.convert("L"), quality=90),
        "rgb jpeg": jpeg_bytes(galaxy, quality=90, keep_rgb=True),
        "301x257": jpeg_bytes(odd, quality=90),
        "small 100x80": jpeg_bytes(odd.resize((100, 80)), quality=90),
    }


def all_jpegs() -> dict[str, bytes]:
    real = {path.name: path.read_bytes() for path in sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))}
    return {**real, **synthetic_jpegs()}


@pytest.mark.parametrize("name", list(all_jpegs()))
def test_fast_path_gives_pillows_pixels_bit_for_bit(name):
    data = all_jpegs()[name]
    fast = decode_jpeg(data, MAX_PIXELS)
    assert fast is not None, "the fast path declined a plain JPEG"
    reference = pillow_rgb(data)
    assert fast.dtype == np.uint8 and fast.shape == reference.shape
    assert np.array_equal(fast, reference)
    assert np.array_equal(np.asarray(decode_image(data, MAX_PIXELS)), reference)  # the service's decoding


def test_fast_path_declines_what_pillow_must_decode():
    galaxy = Image.fromarray(render_galaxy(1, np.random.default_rng(0), 96))
    good = jpeg_bytes(galaxy, quality=90)
    png = io.BytesIO()
    galaxy.save(png, format="PNG")
    cmyk = jpeg_bytes(galaxy.convert("CMYK"))
    assert decode_jpeg(cmyk, MAX_PIXELS) is None  # Adobe CMYK: Pillow's conversion
    assert np.array_equal(np.asarray(decode_image(cmyk, MAX_PIXELS)), pillow_rgb(cmyk))
    assert decode_jpeg(png.getvalue(), MAX_PIXELS) is None
    assert decode_jpeg(b"\xff\xd8\xff garbage", MAX_PIXELS) is None
    assert decode_jpeg(good, 96 * 96 - 1) is None  # over the pixel limit: Pillow's path refuses it
    assert decode_jpeg(good, MAX_PIXELS, max_decoded_bytes=96 * 96 * 3 - 1) is None  # over a decoded-size limit
    assert decode_jpeg(good, MAX_PIXELS, max_decoded_bytes=96 * 96 * 3) is not None
    grey = jpeg_bytes(galaxy.convert("L"))
    assert decode_jpeg(grey, MAX_PIXELS, max_decoded_bytes=96 * 96) is not None  # one plane
    with pytest.raises(ServiceError) as refused:
        decode_image(good, 96 * 96 - 1)
    assert refused.value.kind == "too_many_pixels"
    truncated = good[: len(good) // 2]
    assert decode_jpeg(truncated, MAX_PIXELS) is None
    with pytest.raises(ServiceError) as corrupt:
        decode_image(truncated, MAX_PIXELS)
    assert corrupt.value.kind == "corrupt_image"


@pytest.mark.parametrize("shape", [(424, 424), (425, 427), (300, 224), (224, 500), (100, 80), (223, 600), (1, 1)])
def test_center_crop_array_is_center_crop(shape):
    height, width = shape
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(center_crop(Image.fromarray(rgb), 224))
    assert np.array_equal(center_crop_array(rgb, 224), expected)


def test_predictions_through_the_fast_path_equal_pillows(tiny_models, tmp_path):
    """The local engine's decoding (decode_into: fast JPEG path, array crop, per-image normalisation) against
    Pillow's decode, crop and normalisation, through the same model: same labels, probabilities within 1e-4."""
    _, dirs = tiny_models
    files = []
    for name, data in all_jpegs().items():
        path = tmp_path / f"{name.replace(' ', '_').replace(':', '')}.jpg"
        path.write_bytes(data)
        files.append(path)
    for family in ("vit", "linformer"):
        model = load_model(family, dirs[family], "fp32", "cpu")
        prep: Preprocessing = model.card.prep
        assert prep.size == prep.crop  # the array crop is the path taken
        for path in files:
            assert read_crop(str(path), prep, MAX_PIXELS).shape == (prep.size, prep.size, 3)
        batch = np.full((len(files), 3, prep.size, prep.size), np.nan, np.float32)
        decoded = decode_into([str(p) for p in files], prep, MAX_PIXELS, batch)
        assert decoded.ok.all() and not any(decoded.errors)
        reference = eval_batch([Image.open(p) for p in files], prep)
        assert np.array_equal(batch, reference)
        fast, pillow = model.predict(batch), model.predict(reference)
        assert np.array_equal(fast.argmax(1), pillow.argmax(1))
        np.testing.assert_allclose(fast, pillow, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["q90 4:2:0", "301x257", "small 100x80"])
def test_fast_path_with_a_centre_window_keeps_the_evaluation_crop(name):
    data = synthetic_jpegs()[name]
    prep = Preprocessing()
    window = decode_image(data, MAX_PIXELS, crop=prep.crop)
    width, height = Image.open(io.BytesIO(data)).size
    assert window.size == (min(width, prep.crop), min(height, prep.crop))
    assert np.array_equal(
        np.asarray(center_crop(window, prep.crop)), np.asarray(center_crop(Image.open(io.BytesIO(data)), prep.crop))
    )
