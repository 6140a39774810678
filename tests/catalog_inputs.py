"""A small survey catalogue for the classify tests: real cutouts, synthetic galaxies, a FITS cube and bad files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from training.synthetic import render_galaxy

# id -> error_kind expected for the bad files (every other row is classified)
BAD_ROWS = {9001: "corrupt_image", 9002: "missing_file", 9003: "not_an_image", 9004: "empty_file"}
SYNTHETIC_SIZE = 128  # smaller than the 224 crop: padded with black sky, like the service does


def write_catalogue(root: Path, synthetic: int = 3) -> tuple[Path, list[dict]]:
    """root/catalogue.csv (objid, file, ra, dec, survey) and the files it names (relative paths); returns the rows."""
    images = root / "cutouts"
    (images / "sub").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def add(objid: int, file: str) -> None:
        rows.append({"objid": objid, "file": file, "ra": 150.0 + objid / 1000, "dec": -2.5 + objid / 7, "survey": "t"})

    for i, path in enumerate(sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))):
        shutil.copy(path, images / path.name)
        add(1000 + i, f"cutouts/{path.name}")
    rng = np.random.default_rng(7)
    for i in range(synthetic):
        Image.fromarray(render_galaxy(i % 8, rng, SYNTHETIC_SIZE)).save(images / "sub" / f"synth{i}.png")
        add(2000 + i, f"cutouts/sub/synth{i}.png")
    cube = render_galaxy(3, rng, 64).astype(np.float32).transpose(2, 0, 1)[::-1]  # g, r, i planes from b, g, r
    fits.PrimaryHDU(np.ascontiguousarray(cube)).writeto(images / "cube.fits")
    add(3000, "cutouts/cube.fits")
    real = (REAL_SAMPLE_IMAGES / "106587.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(real[: len(real) // 3])
    add(9001, "cutouts/corrupt.jpg")
    add(9002, "cutouts/not-there.jpg")
    (images / "readme.txt").write_text("not an image\n")
    add(9003, "cutouts/readme.txt")
    (images / "empty.png").write_bytes(b"")
    add(9004, "cutouts/empty.png")
    catalogue = root / "catalogue.csv"
    with open(catalogue, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return catalogue, rows
