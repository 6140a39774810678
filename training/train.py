"""Train a study run by id with the study's protocol: Adam, StepLR per epoch, weighted cross-entropy,
early stopping on validation accuracy (patience 10, at most the run's 200 epochs), best weights kept,
fp32 throughout (--precision bf16/fp16 trains faster on GPUs; validation and test stay fp32). On CUDA
the training batches are augmented on the GPU (--augment-device cuda, training/gpu_augment.py).

  galaxyvit train linformer-010522 --epochs 5                   # synthetic galaxies (written once, cached)
  galaxyvit train vit-110421 --data gz2 --images JPEGS          # the study's GZ2 split files are packaged
  galaxyvit train linformer-010522 --resume                     # continue a killed run exactly
  torchrun --nproc-per-node 4 -m training.train linformer-010522B --data gz2 ...   # data-parallel

Writes to --out (default runs/<run>/): best.pt, last.pt (+ last.prev.pt), history.csv, tb/, metrics.json,
confusion_matrix.png, predictions.csv, and appends a row to runs/results.md. last.pt is saved every epoch
and every --checkpoint-every steps; `--resume` continues from it to the same weights an uninterrupted run
reaches (data order and augmentation derive from (seed, epoch, index); RNG states are saved).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from galaxyvit.preprocess import Preprocessing
from training import class_weights as cw
from training.checkpoint import CheckpointError, save_model
from training.data import Data, DataConfig, Split, add_data_arguments, data_config
from training.distributed import (
    GlobalWeightedLoss,
    default_workers,
    load_data_once,
    setup_device,
    setup_distributed,
)
from training.epoch import PRECISIONS, EpochPlan, EpochSums, Learner, Precision, steps_per_epoch, train_epoch
from training.evaluate import TrainingOutcome, predict, report_split
from training.families import family
from training.few_labels import FewLabels, add_few_label_arguments
from training.gpu_augment import AUGMENT_DEVICES, batch_augment_for, training_set
from training.loader import BadImages
from training.metrics import RunMetrics, append_results
from training.models import build_model
from training.registry import Run, get_run, parse_overrides
from training.resume import load_last, save_last, seed_everything
from training.run_log import EpochRecord, RunLog, announce_run, epoch_record


@dataclass
class TrainState:
    """Where training stands: what the loop carries from step to step and epoch to epoch.

    last.pt saves it (besides the Learner's state and every process's RNG states), so --resume
    continues from exactly here.
    """

    epoch: int = 0  # epochs completed
    step: int = 0  # batches of epoch `epoch` already done (a mid-epoch checkpoint)
    best_acc: float = -1.0  # best validation accuracy so far
    best_epoch: int = -1
    stale: int = 0  # epochs since the validation accuracy last improved
    history: list[EpochRecord] = field(default_factory=list)
    sums: EpochSums = field(default_factory=EpochSums)  # this process's, for the epoch in progress

    def shared(self) -> dict:
        """What is the same on every process, as plain data for last.pt."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "history": [asdict(record) for record in self.history],
        }

    @classmethod
    def from_saved(cls, saved: dict, rank: int) -> TrainState:
        return cls(
            epoch=saved["epoch"],
            step=saved["step"],
            best_acc=saved["best_acc"],
            best_epoch=saved["best_epoch"],
            stale=saved["stale"],
            history=[EpochRecord(**record) for record in saved["history"]],
            sums=EpochSums(*saved["ranks"][rank]["sums"]),
        )

    def end_epoch(self, record: EpochRecord, valid_acc: float) -> bool:
        """Close an epoch; True when its validation accuracy is the best so far."""
        self.history.append(record)
        self.epoch, self.step, self.sums = record.epoch, 0, EpochSums()
        if valid_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.stale = valid_acc, record.epoch, 0
            return True
        self.stale += 1
        return False


@dataclass
class Validation:
    loss: float  # global weighted mean, the class weights of the training loss
    acc: float


def validate(
    model: nn.Module, split: Split, prep: Preprocessing, class_weights: torch.Tensor, plan: EpochPlan
) -> Validation:
    """Score the validation split in fp32 (whatever the training precision): every process takes its
    share, the sums are added across processes."""
    procs = plan.processes
    shard = list(range(procs.rank, len(split), procs.world))
    idx, probs, _ = predict(
        model,
        split,
        prep,
        device=plan.device,
        batch_size=plan.batch_size,
        workers=plan.workers,
        indices=shard,
        progress=False,
    )
    labels = torch.tensor([split.labels[i] for i in idx], dtype=torch.long)
    log_probs = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    weights = class_weights.cpu()
    weighted_loss = nn.functional.nll_loss(log_probs, labels, weight=weights, reduction="sum")
    hits = (log_probs.argmax(1) == labels).sum()
    totals = [float(weighted_loss), float(weights[labels].sum()), float(hits), float(len(idx))]
    loss_sum, weight_sum, correct, seen = procs.all_reduce(totals, plan.device)
    return Validation(loss=loss_sum / max(weight_sum, 1e-12), acc=correct / max(seen, 1))


@dataclass
class TrainOptions:
    """How to train (the `galaxyvit train` options besides the run, its overrides and the data)."""

    out: str | Path | None = None  # default runs/<run id>
    epochs: int | None = None  # default the run's (200)
    patience: int = 10  # stop after this many epochs without a better validation accuracy
    resume: bool = False
    seed: int = 0
    workers: int | None = None  # DataLoader workers; default by device and cores
    device: str | None = None  # default cuda if available
    threads: int | None = None  # torch CPU threads per process; default cores / local processes
    deterministic: bool = False
    checkpoint_every: int = 500  # also save last.pt every N steps within an epoch
    results_file: str | Path | None = "runs/results.md"
    weights: str | None = None  # vitbase: hub id or local save_pretrained folder
    progress: bool = True
    precision: str = "fp32"  # of the training forward pass: fp32, bf16 or fp16
    augment_device: str | None = None  # cpu, cuda or batch-cpu (training/gpu_augment.py); default by device
    few_labels: FewLabels = field(default_factory=FewLabels)  # --teacher, --init (training/few_labels.py)


def train(run: Run, data_cfg: DataConfig, opts: TrainOptions | None = None) -> Path:
    """Train `run` on the data of `data_cfg`, write everything into the output folder and return it."""
    opts = opts or TrainOptions()
    procs = setup_distributed()
    run = opts.few_labels.student(run.with_overrides(epochs=opts.epochs))
    out = Path(opts.out) if opts.out else Path("runs") / run.id
    dev = setup_device(opts.device, opts.threads, opts.deterministic, procs)
    workers = default_workers(dev, procs.local_world) if opts.workers is None else opts.workers
    batch_size = procs.share_of_batch(run.batch_size)  # per process; the global batch is the run's
    amp = Precision.for_training(opts.precision, dev)

    data = load_data_once(data_cfg, procs, opts.progress)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    prep = family(run.family).preprocessing(run)
    augment = batch_augment_for(opts.augment_device, dev, prep)
    loss_weights = cw.resolve(run.class_weights, train_split.label_counts(data.num_classes), data.class_names)
    class_w = torch.tensor(loss_weights, dtype=torch.float32, device=dev)

    seed_everything(opts.seed)
    model = opts.few_labels.initialise(build_model(run, num_classes=data.num_classes, weights=opts.weights)).to(dev)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=run.step_size, gamma=run.gamma)
    net = opts.few_labels.net(run, model, dev, prep, data.num_classes)
    learner = Learner(model, procs.wrap(net, dev), optimizer, scheduler, amp.grad_scaler())

    last = out / "last.pt"
    about = {"run": run.to_dict(), "data": data_cfg.to_dict(), "seed": opts.seed, "precision": opts.precision}
    saved = load_last(last, run, opts.precision, learner, procs) if opts.resume else None
    state = TrainState.from_saved(saved, procs.rank) if saved else TrainState()
    log = RunLog(out, state.epoch) if procs.is_main else None
    if procs.is_main:
        announce_run(run, data, dev, procs, opts.precision, loss_weights)

    train_set = training_set(train_split, prep, opts.seed, augment, run.augment)
    steps = steps_per_epoch(len(train_split), batch_size, procs)
    loss_fn = opts.few_labels.loss(GlobalWeightedLoss(class_w, procs))
    plan = EpochPlan(
        run.epochs, steps, batch_size, opts.seed, procs, dev, workers, opts.progress, amp, loss_fn, augment
    )
    bad_images = BadImages()

    def on_step(step: int) -> None:  # mid-epoch checkpoints: a killed run loses at most checkpoint_every steps
        state.step = step
        if opts.checkpoint_every and step % opts.checkpoint_every == 0 and step < steps:
            save_last(last, learner, state.shared(), state.sums.to_list(), procs, about=about)

    for epoch in range(state.epoch, run.epochs):
        if state.stale >= opts.patience:
            break
        started = time.perf_counter()
        new_bad = train_epoch(learner, train_set, plan, epoch, state.step, state.sums, bad_images, on_step)
        seconds = time.perf_counter() - started
        if procs.is_main:
            bad_images.report(train_split, new_bad)
        valid = validate(model, valid_split, prep, class_w, plan)
        train_sums = procs.all_reduce(state.sums.to_list(), dev)
        record = epoch_record(epoch, optimizer.param_groups[0]["lr"], train_sums, valid.loss, valid.acc, seconds)
        scheduler.step()
        best = state.end_epoch(record, valid.acc)
        if best and procs.is_main:
            save_model(
                out / "best.pt",
                model,
                run,
                epoch=record.epoch,
                valid_acc=valid.acc,
                class_names=data.class_names,
                class_weights=loss_weights,
            )
        save_last(last, learner, state.shared(), state.sums.to_list(), procs, about=about)
        if log:
            log.epoch(state.history, best)

    if log:  # test evaluation of the best weights: rank 0 alone, the others wait
        log.close()
        finish(run, data, out, dev, state, opts, workers)
    procs.barrier()
    return out


def finish(
    run: Run, data: Data, out: Path, device: torch.device, state: TrainState, opts: TrainOptions, workers: int
) -> RunMetrics:
    """Evaluate best.pt on the test split: metrics.json, the PNG, predictions.csv and the results row."""
    best = next(record for record in state.history if record.epoch == state.best_epoch)
    outcome = TrainingOutcome(train_acc=best.train_acc, epochs_trained=len(state.history), precision=opts.precision)
    metrics = report_split(
        out / "best.pt",
        data,
        out,
        device=device,
        batch_size=run.batch_size,
        workers=workers,
        progress=opts.progress,
        training=outcome,
    )
    if opts.results_file:
        name = data.path.name if data.path.name.startswith(data.kind) else f"{data.kind} {data.path.name}"
        label = f"{name} ({metrics.data['n_train']}/{metrics.data['n_valid']}/{metrics.data['n_test']})"
        append_results(Path(opts.results_file), run, metrics, label, compare_with_study=data.is_study_gz2)
    print(
        f"{run.id}: test accuracy {100 * metrics.test_acc:.2f}% (best epoch {state.best_epoch}, valid "
        f"{100 * best.valid_acc:.2f}%), macro recall {100 * metrics.macro_recall:.2f}%, "
        f"macro F1 {100 * metrics.macro_f1:.2f}% -> {out}",
        file=sys.stderr,
    )
    return metrics


# ---------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id from `galaxyvit runs`, e.g. linformer-010522B")
    add_data_arguments(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--out", type=Path, help="output folder (default runs/<run>)")
    g.add_argument("--epochs", type=int, help="maximum epochs (default: the run's, 200)")
    g.add_argument("--patience", type=int, default=10, help="stop after N epochs without a better valid acc (10)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (or last.prev.pt)")
    g.add_argument("--lr", type=float, help="override the run's learning rate")
    g.add_argument("--batch-size", type=int, help="override the run's (global) batch size")
    g.add_argument(
        "--class-weights", help=f"override the run's class weights: {', '.join(cw.CHOICES)} or one number per class"
    )
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any run field, e.g. depth=2"
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="training forward pass: fp32 (the study's, default), bf16 or fp16 (CUDA) autocast; "
        "validation and test are always fp32",
    )
    g.add_argument(
        "--augment-device",
        choices=AUGMENT_DEVICES,
        help="where training images are augmented: cpu (per image, Pillow, in the loader), cuda (per batch on the "
        "GPU) or batch-cpu (the per-batch path on the CPU, for tests); default cuda when training on CUDA, else cpu",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation (0)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes (default: by device and cores)")
    g.add_argument("--threads", type=int, help="torch CPU threads per process (default: cores / local processes)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (tests)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="also save last.pt every N steps mid-epoch (500)")
    g.add_argument("--results", default="runs/results.md", help="results markdown to append a row to ('' for none)")
    g.add_argument("--weights", help="vitbase: hub id or local save_pretrained folder for the backbone")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_few_label_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        overrides = parse_overrides(args.set)
        if args.class_weights:
            overrides["class_weights"] = cw.parse(args.class_weights)
        run = get_run(args.run).with_overrides(lr=args.lr, batch_size=args.batch_size, **overrides)
        opts = TrainOptions(
            out=args.out,
            epochs=args.epochs,
            patience=args.patience,
            resume=args.resume,
            seed=args.seed,
            workers=args.workers,
            device=args.device,
            threads=args.threads,
            deterministic=args.deterministic,
            checkpoint_every=args.checkpoint_every,
            results_file=args.results or None,
            weights=args.weights,
            progress=not args.no_progress,
            precision=args.precision,
            augment_device=args.augment_device,
            few_labels=FewLabels.from_args(args),
        )
        train(run, data_config(args), opts)
    except (KeyError, ValueError, CheckpointError) as exc:  # DataError is a ValueError
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # torchrun --nproc-per-node N -m training.train RUN ...
    parser = argparse.ArgumentParser(
        prog="training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    sys.exit(main(parser.parse_args()))
