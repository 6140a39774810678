"""Do a model's nearest neighbours share the class, and does it transfer? Accuracy and 10-NN class agreement of
exported models on synthetic sets, through the catalogue (`galaxyvit classify --embeddings`), and their answers
for the three real GZ2 cutouts.

  nice -n 10 python benchmarks/neighbours.py --model data/builtin_model/synthetic-linformer/fp32.onnx \\
      --dataset data/synth-u4000-0 --split test --synth 320:1 --old-generator 0a02cb5:400:5

Sets: `--dataset DIR --split S` (a `galaxyvit synth` folder's split), `--synth N:SEED` (N galaxies of the
current generator, uniform classes, every split, rendered into a temporary folder) and `--old-generator
COMMIT:N:SEED` (the same with training/synthetic.py as it was at COMMIT, read with `git show`: another
generator version, for transfer). For each model and set it prints the accuracy, the share of each galaxy's k
nearest neighbours (cosine, the catalogue's index) whose true class is its own (`catalog.similar.
neighbour_agreement`) and that share for shuffled labels (the chance level of the set).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.job import classify_catalogue  # noqa: E402
from catalog.similar import neighbour_agreement  # noqa: E402
from galaxyvit.classes import CLASS_NAMES  # noqa: E402
from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS  # noqa: E402
from training.synthetic import write_dataset  # noqa: E402

SPLITS = ("train", "valid", "test")


def labels_of(folder: Path, splits: tuple[str, ...]) -> dict[str, int]:
    """galaxyID -> label of the given splits of a `galaxyvit synth` folder."""
    labels = {}
    for split in splits:
        for line in (folder / f"gz2_{split}.csv").read_text().split()[1:]:
            gid, label = line.split(",")[:2]
            labels[gid] = int(label)
    return labels


def old_generator(commit: str, work: Path):
    """training/synthetic.py at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:training/synthetic.py"],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    path = work / f"synthetic_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # its worker processes find it by name
    spec.loader.exec_module(module)
    return module


def evaluate(onnx: Path, folder: Path, splits: tuple[str, ...], k: int, out: Path, tta: int = 1) -> dict[str, float]:
    """Classify the splits' images with --embeddings (and --tta); accuracy, k-NN agreement and its shuffled-label
    control."""
    labels = labels_of(folder, splits)
    csv = out.parent / f"{out.name}.csv"  # one catalogue of the splits' rows
    csv.write_text("galaxyID\n" + "".join(f"{g}\n" for g in labels))
    classify_catalogue([csv], out, onnx=onnx, id_col="galaxyID", path_template="images/{galaxyID}.jpg",
                       root=folder, embeddings=True, tta=tta, progress=False)  # fmt: skip
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "label"])
    predicted = dict(zip(map(str, table.column("id").to_pylist()), table.column("label").to_pylist(), strict=True))
    accuracy = float(np.mean([predicted[g] == y for g, y in labels.items()]))
    shuffled = dict(zip(labels, np.random.default_rng(0).permutation(list(labels.values())), strict=True))
    return {
        "n": len(labels),
        "accuracy": accuracy,
        "agreement": neighbour_agreement(out, labels, k=k),
        "shuffled": neighbour_agreement(out, shuffled, k=k),
    }


def real_cutouts(onnx: Path, out: Path) -> list[str]:
    """One line per real GZ2 cutout: true class, predicted class, p_max, in_distribution."""
    csv = out.parent / "real.csv"
    csv.write_text("id,path\n" + "".join(f"{n[:-4]},{REAL_SAMPLE_IMAGES / n}\n" for n in sorted(REAL_SAMPLE_LABELS)))
    classify_catalogue([csv], out, onnx=onnx, path_col="path", progress=False)
    table = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    lines = []
    for row in table:
        truth = CLASS_NAMES[REAL_SAMPLE_LABELS[f"{row['id']}.jpg"]]
        mark = "right" if row["class_name"] == truth else "wrong"
        lines.append(f"  {row['id']}: {truth} -> {row['class_name']} ({mark}, p {row['p_max']:.2f}, "
                     f"galaxy? {({True: 'yes', False: 'no'}).get(row['in_distribution'], '-')})")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True, help="an exported fp32.onnx")
    parser.add_argument("--dataset", type=Path, help="a `galaxyvit synth` folder")
    parser.add_argument("--split", default="test", help="its split (test)")
    parser.add_argument("--synth", help="N:SEED galaxies of the current generator (uniform classes)")
    parser.add_argument("--old-generator", help="COMMIT:N:SEED galaxies of training/synthetic.py at COMMIT")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tta", type=int, default=1, choices=(1, 8), help="views per galaxy (`classify --tta`)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets: list[tuple[str, Path, tuple[str, ...]]] = []
        if args.dataset:
            sets.append((f"{args.dataset} {args.split}", args.dataset, (args.split,)))
        if args.synth:
            n, seed = (int(v) for v in args.synth.split(":"))
            write_dataset(work / "synth", n, seed, "uniform", args.workers, progress=False)
            sets.append((f"current generator, {n} galaxies, seed {seed}", work / "synth", SPLITS))
        if args.old_generator:
            commit, n, seed = args.old_generator.split(":")
            old_generator(commit, work).write_dataset(work / "old", int(n), int(seed), "uniform", args.workers, False)
            sets.append((f"generator at {commit}, {n} galaxies, seed {seed}", work / "old", SPLITS))
        for m, onnx in enumerate(args.model):
            print(f"{onnx}:")
            for s, (name, folder, splits) in enumerate(sets):
                r = evaluate(onnx.resolve(), folder, splits, args.k, work / f"out{m}-{s}", args.tta)
                print(f"  {name} ({r['n']}): accuracy {r['accuracy']:.1%}, {args.k}-NN class agreement "
                      f"{r['agreement']:.1%} (shuffled labels {r['shuffled']:.1%})")  # fmt: skip
            print("\n".join(real_cutouts(onnx.resolve(), work / f"real{m}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
