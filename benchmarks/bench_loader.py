"""Training images per second that the data loader delivers on one core: JPEG path vs prepared path.

One process, one torch thread, no DataLoader workers: what a single loader core delivers (a
DataLoader with W workers delivers about W times that, cores allowing). The first --images training
images of the synthetic dataset, in epoch 0's shuffled order, batches of --batch, collated as the
trainer does. Paths:
  jpeg              today: decode the 424x424 JPEG, centre crop, rotate/flip/crop-resize (Pillow), normalise
  prepared          the prepared crops (no decoding), then the same Pillow augmentation: identical tensors
  prepared-device   the prepared crops + each sample's random parameters only: the loader's share when the
                    augmentation runs on the GPU (training/gpu_augment.py)
  device-aug (cpu)  for reference: that batch augmentation itself on this CPU (float64 grid_sample)
Also the evaluation path (jpeg vs prepared). Each path is timed --repeats times, interleaved; the
median is printed. Not a test.

  python benchmarks/bench_loader.py                    # 3000 synthetic images (written once, then prepared)
  python benchmarks/bench_loader.py --images 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from galaxyvit.preprocess import preprocessing_for
from training.data import DataConfig, load_data
from training.gpu_augment import DeviceAugmentDataset, augment_batch, collate_crops
from training.loader import EpochSampler, ImageDataset, collate
from training.prepared import PreparedDataset, default_out, is_current, prepare, prepared_data


def images_per_s(dataset, collate_fn, indices: list[int], batch: int, after=None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=indices, collate_fn=collate_fn)
    start = time.perf_counter()
    for item in loader:
        if after is not None:
            after(item)
    return len(indices) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synth-n", type=int, default=3000, help="synthetic dataset size (3000)")
    parser.add_argument("--images", type=int, default=640, help="training images per timing (640)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (64, linformer-010522's)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per path; the median is printed (3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = DataConfig(kind="synthetic", synth_n=args.synth_n)
    jpeg = load_data(cfg, quiet=True)
    if not is_current(default_out(cfg), cfg):
        prepare(cfg, workers=os.cpu_count() or 1)
    prepared = prepared_data(default_out(cfg))
    prep = preprocessing_for("linformer")
    train_jpeg, train_prepared = jpeg.splits["train"], prepared.splits["train"]
    order = EpochSampler(len(train_jpeg), seed=0, epoch=0).order()[: args.images]
    valid_order = list(range(min(args.images, len(jpeg.splits["valid"]))))

    def augment_on_cpu(batch) -> None:
        augment_batch(batch.crops, batch.params, prep)

    paths = {
        "train jpeg": lambda: images_per_s(ImageDataset(train_jpeg, prep, train=True), collate, order, args.batch),
        "train prepared": lambda: images_per_s(
            PreparedDataset(train_prepared, prep, train=True), collate, order, args.batch
        ),
        "train prepared-device": lambda: images_per_s(
            DeviceAugmentDataset(train_prepared), collate_crops, order, args.batch
        ),
        "device-aug on this cpu": lambda: images_per_s(
            DeviceAugmentDataset(train_prepared), collate_crops, order[: args.batch * 2], args.batch, augment_on_cpu
        ),
        "eval jpeg": lambda: images_per_s(ImageDataset(jpeg.splits["valid"], prep), collate, valid_order, args.batch),
        "eval prepared": lambda: images_per_s(
            PreparedDataset(prepared.splits["valid"], prep), collate, valid_order, args.batch
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, timed in paths.items():
            rates[name].append(timed())
    load = os.getloadavg()
    print(
        f"loader images/s on one core ({os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    print(f"{args.images} training images of synthetic-{args.synth_n}, batch {args.batch}, median of {args.repeats}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        base = median["eval jpeg" if name.startswith("eval") else "train jpeg"]
        runs = ", ".join(f"{v:.0f}" for v in rates[name])
        print(f"  {name:<24} {value:8.1f} images/s   {value / base:5.2f}x   (runs: {runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
