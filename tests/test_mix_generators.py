"""benchmarks/mix_generators.py: a training set mixing the current generator with an older one (issue #23 item 4)."""

from __future__ import annotations

import filecmp
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.mix_generators import mix, mixed_ids, train_rows
from training.synthetic import SPLITS, write_dataset

ROOT = Path(__file__).resolve().parents[1]
OLD = "0a02cb5"  # main before the SDSS observing model


def test_mixed_ids_takes_the_fraction_of_each_class_spread_over_its_rows():
    rows = [(str(i), i % 3) for i in range(30)]  # 10 rows of each of 3 classes
    half = mixed_ids(rows, 0.5)
    assert Counter(int(g) % 3 for g in half) == {0: 5, 1: 5, 2: 5}
    assert [int(g) for g in half if int(g) % 3 == 0] == [3, 9, 15, 21, 27]  # every other row of class 0
    assert Counter(int(g) % 3 for g in mixed_ids(rows, 0.3)) == {0: 3, 1: 3, 2: 3}
    assert mixed_ids(rows, 0.0) == [] and len(mixed_ids(rows, 1.0)) == 30
    with pytest.raises(ValueError):
        mixed_ids(rows, 1.5)


def test_mix_rerenders_half_the_training_images_with_the_old_generator(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"]).returncode != 0:
        pytest.skip(f"commit {OLD} is not in this clone's history")
    src = write_dataset(tmp_path / "src", 32, seed=3, proportions="uniform", workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in (src / "images").iterdir()}
    out = tmp_path / "mixed"
    chosen = mix(src, out, OLD, 0.5, seed=3)

    rows = train_rows(src)
    per_class = Counter(label for _, label in rows)
    assert Counter(label for gid, label in rows if gid in chosen) == {k: n // 2 for k, n in per_class.items()}
    for split in SPLITS:
        assert filecmp.cmp(src / f"gz2_{split}.csv", out / f"gz2_{split}.csv", shallow=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(before)
    for name, data in before.items():
        assert (src / "images" / name).read_bytes() == data  # the source is untouched (links are not written into)
        changed = (out / "images" / name).read_bytes() != data
        assert changed == (name[:-4] in chosen), name
    # the replaced images are the old generator's: its brighter sky than the current one's (issue #23's table)
    sky = {
        gid: float(np.median(np.asarray(Image.open(out / "images" / f"{gid}.jpg"))[:20]))
        for gid, _ in rows  # the top 20 rows of pixels
    }
    old_sky = np.median([sky[g] for g in chosen])
    new_sky = np.median([sky[g] for g, _ in rows if g not in chosen])
    assert old_sky > new_sky, (old_sky, new_sky)
    with pytest.raises(FileExistsError):
        mix(src, out, OLD, 0.5)
