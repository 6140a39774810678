"""JPEG decoding for the catalogue and the service: Pillow vs libjpeg-turbo straight into numpy (inference/jpeg.py).

  python benchmarks/bench_decode.py                 # the real sample cutouts and synthetic 424x424 cutouts
  python benchmarks/bench_decode.py --repeat 400 --rounds 7

For each set of files: CPU milliseconds per image (user + system of this process, the median of
`--rounds` rounds of `--repeat` decodes) of
  decode          bytes -> the full RGB image (Pillow: open, load, RGB; fast: decode_jpeg)
  decode + crop   bytes -> the 224x224 uint8 evaluation crop (Pillow: eval_crop of the image; fast:
                  center_crop_array of the array), what a decode process does per file before normalising
and the largest absolute difference of any pixel between the two (0: bit for bit the same).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.decode import center_crop_array  # noqa: E402
from galaxyvit.paths import REAL_SAMPLE_IMAGES  # noqa: E402
from galaxyvit.preprocess import Preprocessing, eval_crop  # noqa: E402
from inference.decode import to_rgb  # noqa: E402
from inference.jpeg import decode_jpeg  # noqa: E402

MAX_PIXELS = 10_000_000


def pillow_decode(data: bytes) -> Image.Image:
    """Pillow alone (what serving decoded every JPEG with before the fast path)."""
    image = Image.open(io.BytesIO(data), formats=["JPEG"])
    image.load()
    return to_rgb(image)


def fast_decode(data: bytes) -> np.ndarray:
    rgb = decode_jpeg(data, MAX_PIXELS)
    if rgb is None:
        raise SystemExit("the fast path declined a benchmark file")
    return rgb


def synthetic_cutouts(count: int, size: int = 424, quality: int = 90) -> list[bytes]:
    """Synthetic galaxies saved like the catalogue benchmark's cutouts (424x424, quality 90)."""
    from training.synthetic import render_galaxy

    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(render_galaxy(i % 8, rng, size)).save(buffer, format="JPEG", quality=quality)
        files.append(buffer.getvalue())
    return files


def cpu_ms(work: Callable[[bytes], object], files: list[bytes], repeat: int, rounds: int) -> float:
    """Median over rounds of the CPU milliseconds per call of `work` on the files in turn."""
    for data in files:
        work(data)  # warm-up
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for i in range(repeat):
            work(files[i % len(files)])
        results.append(1000 * (time.process_time() - start) / repeat)
    return statistics.median(results)


def max_difference(files: list[bytes], prep: Preprocessing) -> tuple[int, int]:
    """Largest |fast - Pillow| over every pixel: of the full images, and of the evaluation crops."""
    full = crop = 0
    for data in files:
        pillow = pillow_decode(data)
        fast = fast_decode(data)
        full = max(full, int(np.abs(fast.astype(np.int16) - np.asarray(pillow, np.int16)).max()))
        pillow_crop = eval_crop(pillow, prep).astype(np.int16)
        crop = max(crop, int(np.abs(center_crop_array(fast, prep.crop).astype(np.int16) - pillow_crop).max()))
    return full, crop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300, help="decodes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=16, help="synthetic cutouts")
    args = parser.parse_args()
    prep = Preprocessing()
    sets = {
        "real GZ2 cutouts (3, 424x424)": [p.read_bytes() for p in sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))],
        f"synthetic cutouts ({args.synthetic}, 424x424, q90)": synthetic_cutouts(args.synthetic),
    }
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, 1-minute load average {os.getloadavg()[0]:.1f}")
    print("| files | step | Pillow ms | fast ms | fast / Pillow | max abs pixel difference |")
    print("|---|---|---|---|---|---|")
    for name, files in sets.items():
        full, crop = max_difference(files, prep)
        steps = {
            "decode": (pillow_decode, fast_decode, full),
            "decode + crop": (
                lambda data: eval_crop(pillow_decode(data), prep),
                lambda data: center_crop_array(fast_decode(data), prep.crop),
                crop,
            ),
        }
        for step, (pillow, fast, difference) in steps.items():
            slow_ms = cpu_ms(pillow, files, args.repeat, args.rounds)
            fast_ms = cpu_ms(fast, files, args.repeat, args.rounds)
            print(f"| {name} | {step} | {slow_ms:.3f} | {fast_ms:.3f} | {fast_ms / slow_ms:.0%} | {difference} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
