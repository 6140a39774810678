"""Training images per second that the data loader delivers on one core: JPEG path vs prepared path.

One process, one torch thread, no DataLoader workers: what a single loader core delivers (a
DataLoader with W workers delivers about W times that, cores allowing). The first --images training
images of the synthetic dataset, in epoch 0's shuffled order, batches of --batch, collated as the
trainer does. Paths:
  jpeg (before)      the per-image path before the loader was tuned: decode the 424x424 JPEG, centre crop,
                     rotate / flip / flip / crop-resize (four Pillow calls), normalise per image, stack floats
  jpeg               today: decode, centre crop, rotation and flips in one Pillow pass, crop-resize, the
                     batch normalised once (the same tensors, bit for bit)
  prepared (before)  the prepared crops (no decoding), then the per-image path before tuning
  prepared           the prepared crops, then today's per-image path (identical tensors to jpeg)
  prepared-device    the prepared crops + each sample's random parameters only: the loader's share when the
                     augmentation runs per batch on the GPU (--augment-device cuda)
  device-aug (cpu)   for reference: that batch augmentation itself on this CPU (float64 grid_sample)
Also the evaluation path (jpeg vs prepared). Each path is timed --repeats times, interleaved; the
median is printed. --profile prints the prepared path's cost per image and stage. Not a test.

  python benchmarks/bench_loader.py                    # 3000 synthetic images (written once, then prepared)
  python benchmarks/bench_loader.py --images 256 --repeats 5 --profile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from galaxyvit.preprocess import center_crop, normalize, preprocessing_for
from training.data import DataConfig, load_data
from training.gpu_augment import DeviceAugmentDataset, augment_batch
from training.loader import Batch, EpochSampler, ImageDataset, normalize_images
from training.prepared import PreparedDataset, default_out, is_current, prepare, prepared_data
from training.transforms import augment_stepwise, draw_params, rotate_flip_matrix, sample_rng


class BeforeTuning(ImageDataset):
    """The per-image training path as it was: four Pillow calls, normalised per image, float tensors stacked."""

    def __init__(self, split, prep, prepared: bool):
        super().__init__(split, prep, train=True)
        self.prepared = prepared

    def __getitem__(self, index: int):
        if self.prepared:
            image = Image.fromarray(np.array(self.split.crops()[index]))
        else:
            image = self.load(index)
        crop = center_crop(image.convert("RGB"), self.prep.crop)
        params = draw_params(sample_rng(self.seed, self.epoch, index), crop.width, crop.height)
        array = normalize(np.asarray(augment_stepwise(crop, params, self.prep.size)), self.prep)
        return torch.from_numpy(array), self.split.labels[index], index

    @property
    def collate_fn(self):
        def stack(items) -> Batch:
            labels = torch.tensor([item[1] for item in items])
            return Batch(
                torch.stack([item[0] for item in items]), labels, torch.tensor([item[2] for item in items]), []
            )

        return stack


def images_per_s(dataset, indices: list[int], batch: int, after=None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=indices, collate_fn=dataset.collate_fn)
    start = time.perf_counter()
    for item in loader:
        if after is not None:
            after(item)
    return len(indices) / (time.perf_counter() - start)


def profile(split, jpeg_split, prep, order: list[int], batch: int, repeats: int) -> None:
    """Microseconds per image of each stage of the prepared training path (today's), and of JPEG decoding."""
    crops = split.crops()
    images = [Image.fromarray(crops[i]) for i in order]
    params = [draw_params(sample_rng(0, 0, i), 224, 224) for i in order]
    matrices = [rotate_flip_matrix(p, 224, 224) for p in params]
    turned = [
        im.transform(im.size, Image.AFFINE, m, Image.NEAREST, fillcolor=(0, 0, 0)) for im, m in zip(images, matrices)
    ]
    boxes = [(p.box[0], p.box[1], p.box[0] + p.box[2], p.box[1] + p.box[3]) for p in params]
    resized = [im.resize((prep.size, prep.size), Image.BILINEAR, box=box) for im, box in zip(turned, boxes)]
    arrays = [np.asarray(im) for im in resized]
    reader = ImageDataset(jpeg_split, prep)
    stages = {
        "memory-mapped read + Image.fromarray": lambda: [Image.fromarray(crops[i]) for i in order],
        "random parameters (generator + draws)": lambda: [draw_params(sample_rng(0, 0, i), 224, 224) for i in order],
        "rotation + flips (one Pillow pass)": lambda: [
            im.transform(im.size, Image.AFFINE, m, Image.NEAREST, fillcolor=(0, 0, 0))
            for im, m in zip(images, matrices)
        ],
        "resized crop (Pillow bilinear)": lambda: [
            im.resize((prep.size, prep.size), Image.BILINEAR, box=box) for im, box in zip(turned, boxes)
        ],
        "to uint8 array": lambda: [np.asarray(im) for im in resized],
        "collate: stack + normalise the batch": lambda: [
            normalize_images(np.stack(arrays[i : i + batch]), prep) for i in range(0, len(arrays), batch)
        ],
        "(JPEG path only: decode + centre crop)": lambda: [center_crop(reader.load(i), 224) for i in order],
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeats):
        for name, stage in stages.items():
            start = time.perf_counter()
            stage()
            times[name].append((time.perf_counter() - start) / len(order) * 1e6)
    median = {name: statistics.median(values) for name, values in times.items()}
    total = sum(value for name, value in median.items() if not name.startswith("("))
    print(f"\nprepared training path per image (median of {repeats}, microseconds):")
    for name, value in median.items():
        share = "" if name.startswith("(") else f"{100 * value / total:5.1f}%"
        print(f"  {name:<42} {value:8.0f} us  {share}")
    print(f"  {'total (prepared)':<42} {total:8.0f} us  = {1e6 / total:.0f} images/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synth-n", type=int, default=3000, help="synthetic dataset size (3000)")
    parser.add_argument("--images", type=int, default=640, help="training images per timing (640)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (64, linformer-010522's)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per path; the median is printed (3)")
    parser.add_argument("--profile", action="store_true", help="also the prepared path's cost per stage")
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
        "train jpeg (before)": lambda: images_per_s(BeforeTuning(train_jpeg, prep, False), order, args.batch),
        "train jpeg": lambda: images_per_s(ImageDataset(train_jpeg, prep, train=True), order, args.batch),
        "train prepared (before)": lambda: images_per_s(BeforeTuning(train_prepared, prep, True), order, args.batch),
        "train prepared": lambda: images_per_s(PreparedDataset(train_prepared, prep, train=True), order, args.batch),
        "train prepared-device": lambda: images_per_s(DeviceAugmentDataset(train_prepared, prep), order, args.batch),
        "device-aug on this cpu": lambda: images_per_s(
            DeviceAugmentDataset(train_prepared, prep), order[: args.batch * 2], args.batch, augment_on_cpu
        ),
        "eval jpeg": lambda: images_per_s(ImageDataset(jpeg.splits["valid"], prep), valid_order, args.batch),
        "eval prepared": lambda: images_per_s(PreparedDataset(prepared.splits["valid"], prep), valid_order, args.batch),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, timed in paths.items():
            rates[name].append(timed())
    load = os.getloadavg()
    print(
        f"loader images/s on one core ({os.cpu_count()} cores; load average before {load_before[0]:.1f}, "
        f"after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    print(f"{args.images} training images of synthetic-{args.synth_n}, batch {args.batch}, median of {args.repeats}")
    print(f"  {'path':<26} {'images/s':>8}   {'vs jpeg before':>14} {'vs jpeg':>8}   runs")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        before, now = ("eval jpeg", "eval jpeg") if name.startswith("eval") else ("train jpeg (before)", "train jpeg")
        runs = ", ".join(f"{v:.0f}" for v in rates[name])
        print(f"  {name:<26} {value:8.1f}   {value / median[before]:13.2f}x {value / median[now]:7.2f}x   ({runs})")
    if args.profile:
        profile(train_prepared, train_jpeg, prep, order, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
