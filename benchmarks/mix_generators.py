"""A training set that mixes generator versions (issue #23 item 4): a copy of a `galaxyvit synth` folder in which
a share of each class's training images is rendered again by training/synthetic.py as it was at an older commit.

  python benchmarks/mix_generators.py data/synth-1875-0 data/mix-1875-0 --old 0a02cb5 --fraction 0.5

Same galaxy IDs, labels and split CSVs; in the train split, every other image of each class (for --fraction 0.5;
spread evenly for other fractions) is the old generator's galaxy of the same class, rendered with the per-image
seed (SEED, galaxyID) as `galaxyvit synth --seed SEED` would. The valid and test splits are untouched (the current
generator only), so model selection stays on the target distribution. Unchanged images are hard links (copies
where linking fails). The old generator is read with `git show` (benchmarks/neighbours.py `old_generator`).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.neighbours import SPLITS, old_generator  # noqa: E402


def mixed_ids(rows: list[tuple[str, int]], fraction: float) -> list[str]:
    """The galaxyIDs whose image the old generator draws: `fraction` of each class's rows, spread evenly in order."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    seen: dict[int, int] = {}
    chosen = []
    for gid, label in rows:
        i = seen.get(label, 0)
        seen[label] = i + 1
        if int((i + 1) * fraction) > int(i * fraction):
            chosen.append(gid)
    return chosen


def train_rows(folder: Path) -> list[tuple[str, int]]:
    with open(folder / "gz2_train.csv", newline="") as f:
        return [(row["galaxyID"], int(row["label1"])) for row in csv.DictReader(f)]


def mix(src: Path, out: Path, commit: str, fraction: float, seed: int = 0, workers: int = 1) -> list[str]:
    """Write the mixed copy of `src` to `out` (new or empty); returns the re-rendered galaxyIDs."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    rows = train_rows(src)
    chosen = mixed_ids(rows, fraction)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for image in (src / "images").iterdir():
        try:
            os.link(image, out / "images" / image.name)
        except OSError:
            shutil.copyfile(image, out / "images" / image.name)
    labels = dict(rows)
    with tempfile.TemporaryDirectory() as tmp:
        module = old_generator(commit, Path(tmp))
        for gid in chosen:  # the old renderer replaces the file (write + rename), never the linked original
            (out / "images" / f"{gid}.jpg").unlink()
        tasks = [(str(out / "images"), seed, int(gid), labels[gid]) for gid in chosen]
        if workers == 1:
            for task in tasks:
                module._write_image(task)
        else:
            with Pool(workers) as pool:
                pool.map(module._write_image, tasks, chunksize=4)
    for split in SPLITS:  # CSVs last, as `galaxyvit synth` does: a folder without them is unfinished
        shutil.copyfile(src / f"gz2_{split}.csv", out / f"gz2_{split}.csv")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a `galaxyvit synth` folder (the current generator)")
    parser.add_argument("out", type=Path, help="the mixed copy (new or empty folder)")
    parser.add_argument("--old", required=True, help="git commit of the other generator version, e.g. 0a02cb5")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of each class's train images (0.5)")
    parser.add_argument("--seed", type=int, default=0, help="per-image seed (SEED, galaxyID) of the old renderer")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args()
    chosen = mix(args.src, args.out, args.old, args.fraction, args.seed, args.workers)
    n_train = len(train_rows(args.src))
    print(f"{args.out}: {len(chosen)} of {n_train} training images from the generator at {args.old}; "
          "valid and test unchanged")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
