"""Training epoch time on a GPU, for `python scripts/gpu_check.py --training` (or run directly).

An epoch of the study is ~100,000 training + ~25,000 validation images (GZ2: 99,808 / 24,952). Writing
100,000 synthetic galaxies takes longer than the measurement is worth, and neither the loader's nor the
model's images/s depends on how many images there are, so a sample of --sample images is written and
prepared, each part is timed on it, and the epoch time follows:

  loader     images/s of the trainer's DataLoader (its default workers on this machine, pinned memory)
             on the sample: jpeg (decode + Pillow augmentation), prepared (crops + Pillow augmentation),
             prepared-device (crops + parameters only, augmented on the GPU)
  model      training steps/s of each run at its batch size (random weights: same cost; ViT-Base without
             downloading), --precision as the trainer's; its evaluation (no grad) images/s; the GPU
             augmentation's images/s (training/gpu_augment.py), added to the step on the same stream
  epoch      train images / min(loader, model) + valid images / min(eval loader, model eval), per path,
             with what bounds it; the table time of each family = its runs x --epochs-per-run x epoch time
             (the representative run of the family; early stopping makes most runs shorter than 200 epochs)

  python scripts/gpu_training.py                         # on the GPU, ~5 minutes
  python scripts/gpu_training.py --device cpu --sample 64 --runs linformer-010522B --steps 2 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from galaxyvit.preprocess import preprocessing_for  # noqa: E402
from training.data import DataConfig, ensure_synthetic, load_data  # noqa: E402
from training.distributed import default_workers  # noqa: E402
from training.epoch import Precision  # noqa: E402
from training.families import family  # noqa: E402
from training.gpu_augment import DeviceAugmentDataset, augment_batch, sample_params  # noqa: E402
from training.loader import EpochSampler, ImageDataset, make_loader  # noqa: E402
from training.models import build_model  # noqa: E402
from training.prepared import PreparedDataset, default_out, prepare, prepared_data  # noqa: E402
from training.registry import get_run, load_runs  # noqa: E402

RUNS = ("linformer-010522B", "vit-110421", "vitbase-121221B")  # vitbase-121221B fine-tunes the whole ViT-Base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(dataset, batch: int, workers: int, order: list[int], device: torch.device) -> float:
    """Images/s after the first batch (worker start-up is paid once per epoch: nothing at 100,000 images)."""
    loader = make_loader(dataset, batch, order, workers, device)
    if len(order) < 2 * batch:
        raise SystemExit(f"{len(order)} images are fewer than two batches of {batch}: a larger --sample")
    batches = iter(loader)
    next(batches)
    start, images = time.perf_counter(), 0
    for item in batches:
        images += len(item.labels)
    return images / (time.perf_counter() - start)


def step_rates(run_id: str, batch: int, device: torch.device, precision: str, steps: int) -> dict[str, float]:
    """Training-step and evaluation images/s of a run's model, and the GPU augmentation's, on `device`."""
    run = get_run(run_id)
    prep = family(run.family).preprocessing(run)
    model = build_model(run, pretrained=False).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.lr)
    amp = Precision.for_training(precision, device)
    scaler = amp.grad_scaler()
    x = torch.randn(batch, 3, prep.size, prep.size, device=device)
    y = torch.randint(0, 8, (batch,), device=device)
    crops = torch.randint(0, 256, (batch, prep.crop, prep.crop, 3), dtype=torch.uint8, device=device)
    augment_params = sample_params(0, 0, range(batch), prep.crop)

    def train_step() -> None:
        with amp.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def eval_step() -> None:
        model.eval()
        model(x)
        model.train()

    def augment() -> None:
        augment_batch(crops, augment_params, prep)

    rates = {"params": float(params)}
    for name, fn in (("train", train_step), ("eval", eval_step), ("augment", augment)):
        fn()  # warm-up (kernels, allocator)
        sync(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        rates[name] = batch / statistics.median(times)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"runs, one per family ({','.join(RUNS)})")
    parser.add_argument("--device", default="cuda", help="cuda (cpu: for trying the script out)")
    parser.add_argument("--sample", type=int, default=4096, help="synthetic galaxies written and timed (4096)")
    parser.add_argument("--train-images", type=int, default=100_000, help="training images per epoch (100,000)")
    parser.add_argument("--valid-images", type=int, default=25_000, help="validation images per epoch (25,000)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model part; median (20)")
    parser.add_argument("--batch-size", type=int, help="default: each run's (64)")
    parser.add_argument("--precision", default="fp32", help="training step precision: fp32 (the study's), bf16")
    parser.add_argument("--workers", type=int, help="loader workers (default: the trainer's for the device)")
    parser.add_argument("--epochs-per-run", type=int, default=200, help="epochs per run for the table time (200)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the table is spread over (1)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("FAIL: CUDA is not available (--device cpu to try the script out)", file=sys.stderr)
        return 1
    workers = default_workers(device, 1) if args.workers is None else args.workers
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"training epoch time on {name}, {os.cpu_count()} cores, {workers} loader workers, {args.precision}")

    with tempfile.TemporaryDirectory(prefix="galaxyvit-gpu-training-") as work:
        cfg = DataConfig(kind="synthetic", synth_n=args.sample, cache_root=work)
        started = time.perf_counter()
        ensure_synthetic(cfg, progress=False)
        prepare(cfg, workers=os.cpu_count() or 1, progress=False)
        print(f"wrote and prepared {args.sample} synthetic galaxies in {time.perf_counter() - started:.0f} s")
        jpeg, prepared = load_data(cfg, quiet=True), prepared_data(default_out(cfg))
        prep, batch = preprocessing_for("linformer"), args.batch_size or 64
        train, order = prepared.splits["train"], EpochSampler(len(prepared.splits["train"]), seed=0, epoch=0).order()
        loaders = {
            "jpeg": ImageDataset(jpeg.splits["train"], prep, train=True),
            "prepared": PreparedDataset(train, prep, train=True),
            "prepared-device": DeviceAugmentDataset(train, prep),
        }
        loader = {path: loader_rate(ds, batch, workers, order, device) for path, ds in loaders.items()}
        valid = prepared.splits["valid"]
        eval_loader = loader_rate(PreparedDataset(valid, prep), batch, workers, list(range(len(valid))), device)
    print("loader images/s: " + ", ".join(f"{path} {rate:,.0f}" for path, rate in loader.items()))
    print(f"evaluation loader (prepared) images/s: {eval_loader:,.0f}")

    header = f"{'run':<18} {'params':>11} {'step img/s':>10} {'aug img/s':>9} {'eval img/s':>10}"
    print(f"\n{header}   epoch s ({args.train_images:,} + {args.valid_images:,} images): jpeg / prepared / +gpu-aug")
    table = {}
    for run_id in [r.strip() for r in args.runs.split(",") if r.strip()]:
        run = get_run(run_id)
        rates = step_rates(run_id, args.batch_size or run.batch_size, device, args.precision, args.steps)
        with_augment = 1 / (1 / rates["train"] + 1 / rates["augment"])
        valid_s = args.valid_images / min(eval_loader, rates["eval"])
        epochs = {}
        for path, model_rate in (("jpeg", rates["train"]), ("prepared", rates["train"]), ("+gpu-aug", with_augment)):
            loader_path = "prepared-device" if path == "+gpu-aug" else path
            rate = min(loader[loader_path], model_rate)
            bound = "loader" if loader[loader_path] < model_rate else "model"
            epochs[path] = (args.train_images / rate + valid_s, bound)
        table[run.family] = (run_id, min(seconds for seconds, _ in epochs.values()))
        cells = " / ".join(f"{seconds:,.0f} ({bound})" for seconds, bound in epochs.values())
        print(
            f"{run_id:<18} {rates['params']:>11,.0f} {rates['train']:>10,.0f} {rates['augment']:>9,.0f} "
            f"{rates['eval']:>10,.0f}   {cells}",
            flush=True,
        )
    print(f"\ntable time at {args.epochs_per_run} epochs per run on {args.gpus} GPU(s), fastest path:")
    runs = load_runs().values()
    for fam, (run_id, epoch_s) in table.items():
        count = sum(run.family == fam for run in runs)
        hours = count * args.epochs_per_run * epoch_s / args.gpus / 3600
        print(f"  {fam:<10} {count} runs x {args.epochs_per_run} epochs x {epoch_s:,.0f} s ({run_id}) = {hours:,.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
