"""End-to-end training images/s of one run on the synthetic dataset: JPEG path vs prepared path vs the per-batch
augmentation run on the CPU.

Each configuration is one `python -m training.train RUN --epochs 1` child process, with the threads and
loader workers the trainer picks for the device (on CPU: all cores for torch, one loader worker sharing
them), timed --repeats times, interleaved (each repeat starts with the next configuration). images/s =
training images / seconds of the training epoch as history.csv records them (loader start-up included,
validation and test excluded); the median is printed with the load average. Configurations:
  jpeg                  --prepared off --augment-device cpu: decode every JPEG, Pillow augmentation per image
  prepared              the prepared crops (galaxyvit prepare, done first), Pillow augmentation per image
  prepared + batch-cpu  the prepared crops, the per-batch augmentation (training/gpu_augment.py) on the CPU
  before (--before DIR) the trainer of another checkout (e.g. before a change), JPEG path
Not a test.

  python benchmarks/bench_epoch.py                          # linformer-010522, synthetic-3000, 3 repeats
  python benchmarks/bench_epoch.py --before ../main --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training.data import DataConfig, ensure_synthetic
from training.prepared import default_out, is_current, prepare

ROOT = Path(__file__).resolve().parents[1]


def train_once(run: str, options: list[str], out: Path, code: Path, device: str) -> dict:
    """One epoch in a child process; returns images, seconds and images/s of its training epoch."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "training.train", run, "--epochs", "1", "--out", str(out), "--device", device]
    command += ["--results", "", "--no-progress", *options]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(out / "history.csv") as f:
        row = next(csv.DictReader(f))
    images, seconds = int(row["train_images"]), float(row["seconds"])
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "wall": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="linformer-010522", help="study run (linformer-010522)")
    parser.add_argument("--synth-n", type=int, default=3000, help="synthetic dataset size (3000)")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per configuration; the median is printed (3)")
    parser.add_argument("--device", default="cpu", help="training device (cpu)")
    parser.add_argument("--before", type=Path, help="also time this checkout's trainer (JPEG path)")
    parser.add_argument(
        "--train-args", default="", help="more train options for every configuration, e.g. '--set depth=1'"
    )
    args = parser.parse_args()
    cfg = DataConfig(kind="synthetic", synth_n=args.synth_n, cache_root=str(ROOT / "data"))
    dataset = ensure_synthetic(cfg).resolve()
    if not is_current(default_out(cfg), cfg):
        prepare(cfg, workers=os.cpu_count() or 1)
    data = ["--data", "synthetic", "--dataset", str(dataset), "--synth-n", str(args.synth_n), *args.train_args.split()]
    configs = {
        "jpeg": (ROOT, [*data, "--prepared", "off", "--augment-device", "cpu"]),
        "prepared": (ROOT, [*data, "--prepared", str(default_out(cfg).resolve()), "--augment-device", "cpu"]),
        "prepared + batch-cpu": (
            ROOT,
            [*data, "--prepared", str(default_out(cfg).resolve()), "--augment-device", "batch-cpu"],
        ),
    }
    if args.before:
        configs["before (jpeg)"] = (args.before.resolve(), [*data, "--prepared", "off"])
    results: dict[str, list[dict]] = {name: [] for name in configs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        names = list(configs)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # a new order each repeat
                code, options = configs[name]
                out = Path(tmp) / f"{name.replace(' ', '_')}-{repeat}"
                results[name].append(train_once(args.run, options, out, code, args.device))
                loads.append(os.getloadavg()[0])
                print(f"  {name:<22} repeat {repeat + 1}: {results[name][-1]['images_per_s']:.1f} images/s", flush=True)
    first = next(iter(results))
    images = results[first][0]["images"]
    print(
        f"\n{args.run}, one training epoch of {images} images (synthetic-{args.synth_n}), {args.device}, "
        f"{os.cpu_count()} cores; load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median "
        f"{statistics.median(loads):.1f}; median of {args.repeats}"
    )
    print(f"  {'configuration':<22} {'images/s':>9} {'vs jpeg':>8}   runs")
    base = statistics.median(r["images_per_s"] for r in results["jpeg"])
    for name, runs in results.items():
        value = statistics.median(r["images_per_s"] for r in runs)
        listed = ", ".join(f"{r['images_per_s']:.1f}" for r in runs)
        print(f"  {name:<22} {value:9.1f} {value / base:7.2f}x   ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
