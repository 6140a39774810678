"""A few dozen tiny labelled "galaxies" in the GZ2 layout, for the data and training tests (fast to write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEADER = "galaxyID,label1,label2,label3,label4\n"


def galaxy_image(label: int, rng: np.random.Generator, size: int = 424) -> Image.Image:
    """Noise plus an elliptical blob whose elongation and colour depend on the label."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    q = 1.0 - 0.1 * label
    r = np.sqrt(u**2 + (v / q) ** 2)
    blob = np.exp(-r / (8 + 2 * label))
    colour = np.array([1.0, 0.6 + 0.05 * label, 0.3 + 0.08 * label], np.float32)
    img = 200 * blob[..., None] * colour + rng.normal(10, 4, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_tiny_dataset(
    root: Path, n_train: int = 32, n_valid: int = 8, n_test: int = 8, seed: int = 0, size: int = 424
) -> Path:
    """root/gz2_{train,valid,test}.csv + root/images/<id>.jpg, labels cycling over the 8 classes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    next_id = 1000
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        lines = [HEADER]
        for i in range(n):
            label = i % 8
            galaxy_image(label, rng, size).save(root / "images" / f"{next_id}.jpg", quality=85)
            lines.append(f"{next_id},{label},{label},{label},{label}\n")
            next_id += 1
        (root / f"gz2_{split}.csv").write_text("".join(lines))
    return root


def write_three_class_folder(tiny: Path, root: Path) -> None:
    """A `folder` dataset at `root`: the images of `tiny` with labels folded onto 3 classes (no class list)."""
    import shutil

    shutil.copytree(tiny / "images", root / "images")
    for split in ("train", "valid", "test"):
        lines = (tiny / f"gz2_{split}.csv").read_text().splitlines()[1:]
        rows = [f"{line.split(',')[0]},{int(line.split(',')[1]) % 3}" for line in lines]
        (root / f"{split}.csv").write_text("galaxyID,label\n" + "\n".join(rows) + "\n")
