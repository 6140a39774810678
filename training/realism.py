"""Pixel statistics that compare synthetic cutouts with real SDSS cutouts as GZ2 shows them (issue #23).

Definitions (0-255 display values, per image; a set is summarised by the median over its images):
  sky R/G/B        median of the 20-px border;
  noise R/G/B      robust sigma of the border, 1.4826 x the median absolute deviation;
  centre R/G/B     mean of the central 40x40 pixels;
  centre R/B       centre R / centre B;
  area             share of the central half (the middle 212x212 of 424) brighter than median + 5 sigma,
                   the mean of the three channels' shares.
These reproduce the issue's column for the three packaged real cutouts (5/5/4, 4.5/4.5/4.5, 121/99/70, 1.72,
0.17). `TARGET` is the issue's column for 300 real SDSS cutouts (not in the repository; numbers quoted
from issue #23), which the generator is tuned to: every median within `TOLERANCE` of it, sky levels within
`SKY_TOLERANCE` grey levels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BORDER = 20
CENTRE = 40
STATS = ("sky", "noise", "centre", "centre_rb", "area")
LABELS = {
    "sky": "sky R/G/B",
    "noise": "sky noise sigma R/G/B",
    "centre": "centre R/G/B",
    "centre_rb": "centre R/B",
    "area": "area above 5 sigma",
}
# Issue #23, column "300 real SDSS cutouts" (medians).
TARGET: dict[str, tuple[float, ...]] = {
    "sky": (4, 4, 2),
    "noise": (4.5, 3.0, 3.0),
    "centre": (131, 107, 77),
    "centre_rb": (1.78,),
    "area": (0.16,),
}
TOLERANCE = 0.15  # relative, every median but the sky level
SKY_TOLERANCE = 1.0  # grey levels


def image_stats(image: np.ndarray) -> dict[str, tuple[float, ...]]:
    """The statistics of one (H, W, 3) uint8 display image."""
    a = np.asarray(image, dtype=np.float64)
    h, w = a.shape[:2]
    b = BORDER
    border = np.concatenate(
        [a[:b].reshape(-1, 3), a[-b:].reshape(-1, 3), a[b:-b, :b].reshape(-1, 3), a[b:-b, -b:].reshape(-1, 3)]
    )
    sky = np.median(border, axis=0)
    sigma = 1.4826 * np.median(np.abs(border - sky), axis=0)
    c0, c1 = (h - CENTRE) // 2, (w - CENTRE) // 2
    centre = a[c0 : c0 + CENTRE, c1 : c1 + CENTRE].reshape(-1, 3).mean(axis=0)
    half = a[h // 4 : h - h // 4, w // 4 : w - w // 4]
    area = float(np.mean([(half[..., k] > sky[k] + 5 * sigma[k]).mean() for k in range(3)]))
    return {
        "sky": tuple(sky),
        "noise": tuple(sigma),
        "centre": tuple(centre),
        "centre_rb": (float(centre[0] / max(centre[2], 1e-6)),),
        "area": (area,),
    }


def summarise(images: Iterable[np.ndarray]) -> dict[str, tuple[float, ...]]:
    """Median over the images of each statistic (per channel)."""
    rows = [image_stats(image) for image in images]
    if not rows:
        raise ValueError("no images to summarise")
    return {k: tuple(float(v) for v in np.median([row[k] for row in rows], axis=0)) for k in STATS}


def misses(summary: dict[str, tuple[float, ...]], target: dict[str, tuple[float, ...]] = TARGET) -> list[str]:
    """The statistics of `summary` outside the tolerance of `target` (empty: all within)."""
    out = []
    for key in STATS:
        for got, want in zip(summary[key], target[key], strict=True):
            if key == "sky":
                bad = abs(got - want) > SKY_TOLERANCE
            else:
                bad = abs(got - want) > TOLERANCE * abs(want)
            if bad:
                out.append(f"{LABELS[key]}: {got:.3g} vs {want:.3g}")
    return out


def _cell(values: tuple[float, ...], key: str) -> str:
    if key == "area" or key == "centre_rb":
        return f"{values[0]:.2f}"
    digits = 2 if key == "noise" else 0
    return " / ".join(f"{v:.{digits}f}" for v in values)


def table(columns: dict[str, dict[str, tuple[float, ...]]]) -> str:
    """A Markdown table: one row per statistic, one column per named summary."""
    lines = ["| statistic | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for key in STATS:
        lines.append(f"| {LABELS[key]} | " + " | ".join(_cell(col[key], key) for col in columns.values()) + " |")
    return "\n".join(lines)


def jpeg_roundtrip(image: np.ndarray) -> np.ndarray:
    """The image as the dataset stores it: encoded at the generator's JPEG quality and decoded again."""
    import io

    from PIL import Image

    from training.sky import JPEG_QUALITY

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(buffer).convert("RGB"))


def synthetic_images(n: int, seed: int = 0, proportions: str | None = None) -> Iterable[np.ndarray]:
    """The n images `galaxyvit synth --n N --seed S` writes (same plan, same random streams), decoded."""
    from training.synthetic import SPLITS, plan_dataset, render_galaxy

    plan = plan_dataset(n, seed, proportions)
    for split in SPLITS:
        for galaxy_id, label in plan[split]:
            yield jpeg_roundtrip(render_galaxy(label, np.random.default_rng([seed, galaxy_id])))


def real_images() -> list[np.ndarray]:
    """The three packaged real GZ2 cutouts (data/gz2_real_samples/images)."""
    from PIL import Image

    from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS

    return [np.asarray(Image.open(REAL_SAMPLE_IMAGES / name).convert("RGB")) for name in REAL_SAMPLE_LABELS]


def print_report(n: int = 200, seed: int = 0, proportions: str | None = None) -> int:
    """`galaxyvit synth --stats`: the table for n synthetic images beside the real cutouts and the targets;
    1 if a synthetic median is outside the tolerance, else 0."""
    synthetic = summarise(synthetic_images(n, seed, proportions))
    columns = {
        f"synthetic (n={n}, seed {seed})": synthetic,
        "3 real GZ2 cutouts in data/": summarise(real_images()),
        "300 real SDSS cutouts (issue #23; target)": TARGET,
    }
    print(table(columns))
    outside = misses(synthetic)
    tolerance = f"{TOLERANCE:.0%} of the target (sky levels {SKY_TOLERANCE:.0f} grey level)"
    print("every synthetic median within " + tolerance if not outside else "outside " + tolerance + ":")
    for line in outside:
        print(f"  {line}")
    return 1 if outside else 0
