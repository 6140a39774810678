"""CPU cost of the not-a-galaxy pixel check (galaxyvit/pixels.py): ms per crop, per feature and in total.

  python benchmarks/bench_pixels.py [--calls 500] [--synthetic 32]

Crops: the centre crops of the three real GZ2 cutouts of data/gz2_real_samples, `--synthetic` synthetic
galaxies (training/synthetic.py) and one image of each not-a-galaxy kind (training/ood_images.py). Each step is
timed in process CPU time (time.process_time_ns: the machine may be shared) over `--calls` calls, cycling
through the crops of a set; the table gives the median per call. "total" is crop_features (a batch of one);
"batch" is pixel_features on all crops of the set at once (vectorised over them), per crop.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image

from galaxyvit import pixels
from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS
from galaxyvit.preprocess import Preprocessing, eval_crop
from training.ood_images import ood_images
from training.synthetic import NUM_CLASSES, render_galaxy


def steps(crop: np.ndarray) -> dict[str, Callable[[], object]]:
    """Each step of crop_features on this crop (a batch of one), with its inputs computed beforehand."""
    one = crop[None]
    sky, sigma = pixels._sky(one)
    unit = 3 * np.maximum(np.sqrt((sigma**2).mean(axis=1) / 3), 0.5)
    lum, lum_sky = pixels._luminance(one), sky.sum(axis=1)
    return {
        "sky": lambda: pixels._sky(one),
        "luminance": lambda: pixels._luminance(one),
        "centre (faint_centre, compact, peaky)": lambda: pixels._centre(lum, lum_sky, unit),
        "white": lambda: pixels._white(one, lum),
        "flat": lambda: pixels._flat(one),
        "band_offset": lambda: pixels._band_offset(one, sky, sigma),
        "column": lambda: pixels._column(lum, unit),
        "spikes": lambda: pixels._spikes(lum, lum_sky, unit),
        "total": lambda: pixels.crop_features(crop),
    }


def median_ms(calls: list[Callable[[], object]], n: int) -> float:
    times = []
    for i in range(n):
        call = calls[i % len(calls)]
        start = time.process_time_ns()
        call()
        times.append(time.process_time_ns() - start)
    return float(np.median(times)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="timed calls per step and set (default 500)")
    parser.add_argument("--synthetic", type=int, default=32, help="synthetic galaxies (default 32)")
    args = parser.parse_args()
    prep = Preprocessing()
    rng = np.random.default_rng(0)
    sets = {
        "real GZ2": [eval_crop(Image.open(REAL_SAMPLE_IMAGES / name), prep) for name in REAL_SAMPLE_LABELS],
        "synthetic": [
            eval_crop(Image.fromarray(render_galaxy(i % NUM_CLASSES, rng)), prep) for i in range(args.synthetic)
        ],  # fmt: skip
        "not galaxies": [eval_crop(Image.fromarray(image), prep) for _, image in ood_images(1, seed=1)],
    }
    print(f"ms of process CPU per crop, median of {args.calls} calls; 1-minute load {os.getloadavg()[0]:.1f}\n")
    print("| step | " + " | ".join(f"{name} ({len(crops)})" for name, crops in sets.items()) + " |")
    print("| --- |" + " ---: |" * len(sets))
    table = {name: [steps(c) for c in crops] for name, crops in sets.items()}
    for step in table["real GZ2"][0]:
        cells = [median_ms([s[step] for s in table[name]], args.calls) for name in sets]
        print(f"| {step} | " + " | ".join(f"{ms:.3f}" for ms in cells) + " |")
    batch = []
    for crops in sets.values():
        call = partial(pixels.pixel_features, np.stack(crops))
        batch.append(median_ms([call], max(args.calls // len(crops), 5)) / len(crops))
    print("| batch (pixel_features, per crop) | " + " | ".join(f"{ms:.3f}" for ms in batch) + " |")


if __name__ == "__main__":
    main()
