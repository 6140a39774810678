"""Decoding within a memory budget (inference/decode.py) and the bounded decode threads (serving/decode_pool.py).

The early crop must not change what a model sees from Pillow formats (the evaluation crop of the window
equals that of the whole image); FITS windows are read on their own and stretched on their own statistics.
"""

from __future__ import annotations

import asyncio
import io
import threading
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from galaxyvit.preprocess import Preprocessing, center_crop, eval_crop
from inference.decode import centre_window, decode_image, lupton_stretch
from load_tests.heavy_images import rice_cube
from serving.decode_pool import DecodePool
from serving.errors import ServiceError

PREP = Preprocessing()
SIZES = [(500, 333), (225, 301), (100, 150), (1, 900)]


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def fits_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


def test_decoded_size_is_refused_from_the_header_before_decoding():
    header_only = encode(Image.new("RGB", (1000, 1000)), "PNG")[:100]  # IHDR says 1000x1000 RGB; no pixel data
    with pytest.raises(ServiceError) as refused:
        decode_image(header_only, 10**7, max_decoded_bytes=3 * 10**6 - 1)
    assert (refused.value.kind, refused.value.status) == ("too_large", 413)
    with pytest.raises(ServiceError) as decoded:  # within the budget it is decoded, and found truncated
        decode_image(header_only, 10**7, max_decoded_bytes=3 * 10**6)
    assert decoded.value.kind == "corrupt_image"

    sixteen_bit = encode(Image.fromarray(np.zeros((100, 100), np.uint16)), "PNG")  # 2 bytes a sample
    with pytest.raises(ServiceError, match="2 bytes"):
        decode_image(sixteen_bit, 10**7, max_decoded_bytes=19_999)
    assert decode_image(sixteen_bit, 10**7, max_decoded_bytes=20_000).size == (100, 100)

    cube = fits_bytes(np.zeros((3, 100, 100), np.float64))[:2880]  # the header alone: 3 x 100 x 100 x 8 bytes
    with pytest.raises(ServiceError) as refused:
        decode_image(cube, 10**7, max_decoded_bytes=239_999)
    assert refused.value.kind == "too_large"


@pytest.mark.parametrize("size", [*SIZES, (224, 224), (3000, 2)])
def test_centre_window_holds_the_pixels_center_crop_keeps(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    window = image.crop(centre_window(*size, 224))
    assert np.array_equal(np.asarray(center_crop(window, 224)), np.asarray(center_crop(image, 224)))


def random_image(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    if mode in ("F", "I"):
        values = rng.normal(1000.0, 300.0, size[::-1]).astype(np.float32)
        return Image.fromarray(values, "F") if mode == "F" else Image.fromarray(values.astype(np.int32), "I")
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    return image.convert(mode) if mode != "RGBA" else image


@pytest.mark.parametrize(
    "mode, fmt", [("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("F", "TIFF")]
)
def test_early_crop_gives_the_same_evaluation_crop(mode, fmt):
    rng = np.random.default_rng(7)
    for size in SIZES:
        data = encode(random_image(mode, size, rng), fmt)
        whole = eval_crop(decode_image(data, 10**7), PREP)
        window = decode_image(data, 10**7, crop=PREP.crop)
        assert window.size == (min(size[0], 224), min(size[1], 224))
        assert np.array_equal(eval_crop(window, PREP), whole), (mode, size)


def test_fits_window_is_read_and_stretched_on_its_own():
    g = np.zeros((600, 500), np.float32)
    r, i = g.copy(), g.copy()
    i[300, 250] = 50.0  # a source in the centre (FITS row 300 of 600 is displayed as row 299)
    for plane in (g, r, i):
        plane[:150, :] = 1000.0  # a bright band outside the centre window sets the whole image's stretch
    data = fits_bytes(np.stack([g, r, i]))
    whole = eval_crop(decode_image(data, 10**7), PREP)
    window = decode_image(data, 10**7, crop=PREP.crop)
    assert window.size == (224, 224)
    kept = eval_crop(window, PREP)
    centre = np.unravel_index(np.argmax(kept[..., 0]), kept.shape[:2])
    assert centre == np.unravel_index(np.argmax(whole[..., 0]), whole.shape[:2]) == (111, 112)
    assert kept[centre][0] == 255 and whole[centre][0] < kept[centre][0]  # stretched on the window alone


def test_compressed_fits_window_decodes_a_sliver_of_the_cube():
    data = rice_cube(2048)  # 3 x 2048^2 float32 = 48 MiB decoded, tiles of one row
    tracemalloc.start()
    try:
        window = decode_image(data, 2048**2, crop=224)
        _, window_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = decode_image(data, 2048**2)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window.size == (224, 224) and whole.size == (2048, 2048)
    print(f"\npeak traced memory: window {window_peak / 2**20:.1f} MiB, whole cube {whole_peak / 2**20:.1f} MiB")
    assert whole_peak > 3 * 2048**2 * 4  # what reading it whole takes (the cube in float32) ...
    assert window_peak < 3 * 2048**2 * 4 / 10  # ... and the window a small part of it


def lupton_float64(planes: list[np.ndarray], q: float = 8.0, percentile: float = 99.5) -> np.ndarray:
    """The stretch as the service computed it in float64 before (the reference)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in planes], axis=-1)
    finite = np.isfinite(stack)
    sky = np.array([np.median(stack[..., c][finite[..., c]]) for c in range(len(planes))])
    stack = np.clip(np.where(finite, stack, sky) - sky, 0.0, None)
    intensity = stack.mean(axis=-1)
    stretch = float(np.percentile(intensity, percentile))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(intensity > 0, np.arcsinh(q * intensity / stretch) / (np.arcsinh(q) * intensity), 0.0)
    out = stack * scale[..., None]
    peak = out.max(axis=-1, keepdims=True)
    out = np.where(peak > 1.0, out / np.maximum(peak, 1e-12), out)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def test_float32_stretch_matches_the_float64_one():
    rng = np.random.default_rng(1)
    planes = [rng.lognormal(0.0, 1.5, (120, 90)) for _ in range(3)]
    planes[1][5, 5], planes[2][6, 6] = np.nan, np.inf
    difference = np.abs(lupton_stretch(planes).astype(int) - lupton_float64(planes).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_decode_pool_runs_at_most_its_threads_at_once():
    pool, release, lock = DecodePool(2), threading.Event(), threading.Lock()
    running, most = [0], [0]

    def job() -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(60)
        with lock:
            running[0] -= 1
        return 1

    async def main() -> list[int]:
        work = asyncio.ensure_future(pool.map([job] * 6))
        for _ in range(600):  # until both threads are busy (bounded)
            if running[0] == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a third thread, if there were one, would have started by now
        release.set()
        return await work

    assert asyncio.run(main()) == [1] * 6
    assert most[0] == 2
    pool.close()


def test_a_cancelled_request_drops_its_images_that_have_not_started():
    pool, started, release = DecodePool(1), [], threading.Event()

    def blocker() -> str:
        started.append("blocker")
        release.wait(60)
        return "blocker"

    def image(name: str):
        return lambda: started.append(name)

    async def main() -> None:
        first = asyncio.ensure_future(pool.map([blocker]))
        while not started:
            await asyncio.sleep(0.01)
        timed_out = asyncio.ensure_future(pool.map([image("a"), image("b")]))  # waits behind the blocker
        await asyncio.sleep(0.05)
        timed_out.cancel()  # what BentoML's timeout does to a request's task
        with pytest.raises(asyncio.CancelledError):
            await timed_out
        release.set()
        assert await first == ["blocker"]

    asyncio.run(main())
    pool.executor.shutdown(wait=True)  # runs whatever is still queued before it returns
    assert started == ["blocker"]
