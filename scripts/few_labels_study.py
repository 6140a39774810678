"""Learning from few labels on the built-in synthetic data (docs/few-labels.md): test accuracy and macro recall
of (a) scratch, (b) distilled from a teacher trained on 100% and (c) SimCLR-pretrained then fine-tuned, with
5%, 20% and 100% of the labelled training split.

  python scripts/few_labels_study.py --work /tmp/fewlabels              # everything, resumable
  python scripts/few_labels_study.py --work /tmp/fewlabels --table      # only print the table

Every step is a `galaxyvit` command (printed before it runs); a step whose output exists is skipped, so
the script continues where it stopped. The fractions are stratified subsets of the training split (at
least one image per class, generator seed 0); validation and test splits are the full ones. SimCLR
pre-trains on the images of the whole training split, labels unused.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

FRACTIONS = (0.05, 0.2, 1.0)
SEEDS_SMALLEST = (0, 1, 2)
STUDENT = "linformer-010522"
TEACHER = "resnet50-teacher"


def galaxyvit(args: list[str], log: Path) -> None:
    command = [sys.executable, "-m", "app", *args]
    print("$ galaxyvit " + shlex.join(args), flush=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}), see {log}")


def fraction_dataset(synth: Path, fraction: float, out: Path) -> Path:
    """The synthetic dataset with a stratified `fraction` of its training split (images linked, not copied)."""
    if (out / "gz2_test.csv").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(synth / "gz2_train.csv") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    rng = np.random.default_rng(0)
    keep = []
    for label in sorted({r[1] for r in rows}):
        members = [r for r in rows if r[1] == label]
        n = max(1, round(fraction * len(members)))
        keep += [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    with open(out / "gz2_train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *sorted(keep)])
    for split in ("valid", "test"):
        (out / f"gz2_{split}.csv").write_text((synth / f"gz2_{split}.csv").read_text())
    (out / "images").symlink_to((synth / "images").resolve())
    return out


def train_images(synth: Path, out: Path) -> Path:
    """A folder of links to the training split's images only (SimCLR's unlabelled set)."""
    if out.exists():
        return out
    out.mkdir(parents=True)
    with open(synth / "gz2_train.csv") as f:
        for row in list(csv.reader(f))[1:]:
            (out / f"{row[0]}.jpg").symlink_to((synth / "images" / f"{row[0]}.jpg").resolve())
    return out


def table(work: Path) -> str:
    lines = ["| labels | method | seeds | test accuracy % | macro recall % |", "|---|---|---|---|---|"]
    for fraction in FRACTIONS:
        for method in ("scratch", "distilled", "simclr"):
            found = [
                json.loads(p.read_text()) for p in sorted(work.glob(f"runs/{method}-{fraction:g}-s*/metrics.json"))
            ]
            if not found:
                lines.append(f"| {fraction:.0%} | {method} | 0 | not run | not run |")
                continue
            cells = []
            for key in ("test_acc", "macro_recall"):
                values = [100 * m[key] for m in found]
                spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.1f}{spread} ({', '.join(f'{v:.1f}' for v in values)})")
            n_train = found[0]["data"]["n_train"]
            lines.append(f"| {fraction:.0%} ({n_train}) | {method} | {len(found)} | {cells[0]} | {cells[1]} |")
    teacher = work / "runs" / "teacher" / "metrics.json"
    if teacher.exists():
        m = json.loads(teacher.read_text())
        lines.append(
            f"\nteacher ({TEACHER}, 100%): test accuracy {100 * m['test_acc']:.1f}%, "
            f"macro recall {100 * m['macro_recall']:.1f}%"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working folder (datasets, runs, logs)")
    parser.add_argument("--n", type=int, default=800, help="synthetic images over all splits (800)")
    parser.add_argument("--image-size", type=int, default=48, help="the 224 crop resized to this (48)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (15, patience 10)")
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="SimCLR epochs (15)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: on a shared machine, 2 spin)")
    parser.add_argument("--methods", default="scratch,distilled,simclr", help="which of (a), (b), (c) to run")
    parser.add_argument("--table", action="store_true", help="only print the table of what has run")
    parser.add_argument("--fractions", default="0.05,0.2,1", help="which fractions to run (0.05,0.2,1)")
    parser.add_argument("--seeds-other", type=int, default=1, help="seeds of the larger fractions (1; 3 on 5%%)")
    args = parser.parse_args()
    work = args.work
    if args.table:
        print(table(work))
        return 0
    (work / "logs").mkdir(parents=True, exist_ok=True)
    synth = work / "synth"
    if not (synth / "gz2_test.csv").exists():
        galaxyvit(
            ["synth", "--n", str(args.n), "--out", str(synth), "--workers", "1", "--quiet"], work / "logs/synth.log"
        )
    data = {f: synth if f == 1.0 else fraction_dataset(synth, f, work / f"data-{f:g}") for f in FRACTIONS}
    size = ["--set", f"image_size={args.image_size}", "--set", "crop=224", "--set", "patch_size=8"]
    common = [
        *size,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--threads",
        str(args.threads),
        "--no-progress",
        "--results",
        "",
        "--prepared",
        "off",
    ]

    def train(name: str, run: str, fraction: float, seed: int, extra: list[str]) -> None:
        out = work / "runs" / name
        if not (out / "metrics.json").exists():
            where = ["--data", "gz2", "--dataset", str(data[fraction]), "--out", str(out), "--seed", str(seed)]
            galaxyvit(["train", run, *where, *common, *extra], work / "logs" / f"{name}.log")

    methods = args.methods.split(",")
    if "distilled" in methods:
        train("teacher", TEACHER, 1.0, 0, ["--set", "dim=32"])
    teacher = ["--teacher", str(work / "runs" / "teacher" / "best.pt")]
    pretrained = work / "runs" / "pretrain" / "pretrained.pt"
    for fraction in (f for f in FRACTIONS if f in {float(x) for x in args.fractions.split(",")}):
        seeds = SEEDS_SMALLEST if fraction == FRACTIONS[0] else SEEDS_SMALLEST[: args.seeds_other]
        for seed in seeds:
            if "scratch" in methods:
                train(f"scratch-{fraction:g}-s{seed}", STUDENT, fraction, seed, [])
            if "distilled" in methods:
                train(f"distilled-{fraction:g}-s{seed}", STUDENT, fraction, seed, teacher)
            if "simclr" not in methods:
                continue
            if not pretrained.exists():
                images = train_images(synth, work / "train-images")
                pre = [
                    "pretrain",
                    STUDENT,
                    "--images",
                    str(images),
                    "--out",
                    str(pretrained.parent),
                    "--epochs",
                    str(args.pretrain_epochs),
                    "--lr",
                    "1e-3",
                    "--no-progress",
                    "--threads",
                    str(args.threads),
                    *size,
                ]
                galaxyvit(pre, work / "logs" / "pretrain.log")
            train(f"simclr-{fraction:g}-s{seed}", STUDENT, fraction, seed, ["--init", str(pretrained)])
            print(table(work), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
