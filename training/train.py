"""Train a study run by id with the study's protocol: Adam, StepLR per epoch, weighted cross-entropy,
early stopping on validation accuracy (patience 10, at most the run's 200 epochs), best weights kept.

  galaxyvit train linformer-010522 --epochs 5                   # synthetic galaxies (written once, cached)
  galaxyvit train vit-110421 --data gz2 --splits SPLITS --images JPEGS
  galaxyvit train linformer-010522 --resume                     # continue a killed run exactly
  torchrun --nproc-per-node 4 -m training.train linformer-010522B --data gz2 ...   # data-parallel

Writes to --out (default runs/<run>/): best.pt, last.pt (+ last.prev.pt), history.csv, tb/,
metrics.json, confusion_matrix.png, predictions.csv, and appends a row to runs/results.md.
last.pt is saved every epoch and every --checkpoint-every steps; `--resume` continues from it
to the same weights an uninterrupted run reaches (data order and augmentation derive from
(seed, epoch, index); RNG states are saved).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from galaxyvit.preprocess import preprocessing_for
from training import class_weights as cw
from training.checkpoint import CheckpointError, load_resumable, save_model, save_resumable
from training.data import (
    BadImages,
    Data,
    DataConfig,
    DataError,
    EpochSampler,
    ImageDataset,
    collate,
    ensure_synthetic,
    load_data,
)
from training.evaluate import _worker_init, add_data_arguments, data_config, predict, split_report
from training.metrics import append_results, write_json
from training.models import build_model
from training.registry import Run, get_run

HISTORY_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "train_images",
    "images_per_s",
    "seconds",
)
TB_TAGS = {
    "train_loss": "loss/train",
    "valid_loss": "loss/valid",
    "train_acc": "accuracy/train",
    "valid_acc": "accuracy/valid",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


# ---------------------------------------------------------------- setup helpers


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def default_workers(device: torch.device, local_world: int) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cpus // local_world - 1))
    return 1 if cpus // local_world >= 2 else 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states as tensors and plain lists (torch.load(weights_only=True) safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def loss_weights(run: Run, data: Data) -> tuple[float, ...]:
    """The run's class weights; for a class list other than the 8 GZ2 classes only uniform/inverse_frequency."""
    counts = data.splits["train"].label_counts(data.num_classes)
    if data.num_classes == len(cw.PRESETS["uniform"]):
        return cw.resolve(run.class_weights, counts)
    if run.class_weights == "uniform":
        return (1.0,) * data.num_classes
    if run.class_weights == "inverse_frequency" and all(counts):
        return tuple(sum(counts) / (data.num_classes * n) for n in counts)
    raise DataError(f"class weights {run.class_weights!r} need the 8 GZ2 classes; use uniform or inverse_frequency")


def all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def write_history(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


# ---------------------------------------------------------------- training


def train(
    run: Run,
    data_cfg: DataConfig,
    out_dir: str | Path | None = None,
    *,
    epochs: int | None = None,
    patience: int = 10,
    resume: bool = False,
    seed: int = 0,
    workers: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    deterministic: bool = False,
    checkpoint_every: int = 500,
    results_file: str | Path | None = "runs/results.md",
    weights: str | None = None,
    progress: bool = True,
) -> Path:
    """Train `run` on the data of `data_cfg`, write everything into `out_dir`, return `out_dir`."""
    rank, world, local_rank = setup_distributed()
    is_main = rank == 0
    if epochs is not None:
        run = run.with_overrides(epochs=epochs)
    out = Path(out_dir) if out_dir else Path("runs") / run.id
    dev = torch.device(device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    workers = default_workers(dev, local_world) if workers is None else workers
    if deterministic:
        torch.use_deterministic_algorithms(True)
    if run.batch_size % world:
        raise ValueError(f"batch size {run.batch_size} is not divisible by the {world} processes")
    batch_size = run.batch_size // world  # per process; the global batch is the run's
    use_amp = dev.type == "cuda"

    if world > 1 and data_cfg.kind == "synthetic":  # one process writes the cached dataset, the others wait
        if is_main:
            ensure_synthetic(data_cfg, progress=progress)
        dist.barrier()
    data = load_data(data_cfg, quiet=not is_main, progress=progress)
    prep = preprocessing_for(run.family, run.image_size)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    train_set = ImageDataset(train_split, prep, train=True, seed=seed)

    seed_everything(seed)
    model = build_model(run, num_classes=data.num_classes, weights=weights).to(dev)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=run.step_size, gamma=run.gamma)
    class_w = torch.tensor(loss_weights(run, data), dtype=torch.float32, device=dev)
    criterion = nn.CrossEntropyLoss(weight=class_w)

    # Everything that a resume needs besides model/optimiser/scheduler/RNG.
    progress_state = {"epoch": 0, "step": 0, "sums": [0.0, 0.0, 0.0], "best_acc": -1.0, "best_epoch": -1}
    progress_state.update({"stale": 0, "history": []})
    last = out / "last.pt"
    if resume and (last.exists() or last.with_name("last.prev.pt").exists()):
        state, used = load_resumable(last)
        if Run.from_dict(state["run"]).with_overrides(epochs=run.epochs) != run:
            raise CheckpointError(f"{used} belongs to a different run configuration than {run.id} with these options")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if len(state["ranks"]) != world:
            raise CheckpointError(f"{used} was written by {len(state['ranks'])} processes, this run has {world}")
        set_rng_state(state["ranks"][rank]["rng"])
        progress_state.update({k: state[k] for k in ("epoch", "step", "best_acc", "best_epoch", "stale", "history")})
        progress_state["sums"] = list(state["ranks"][rank]["sums"])
        if is_main:
            print(f"resuming {run.id} from {used}: epoch {state['epoch']}, step {state['step']}", file=sys.stderr)
    elif resume and is_main:
        print(f"nothing to resume in {out}; starting {run.id} from scratch", file=sys.stderr)

    def save_state(epoch: int, step: int, sums: list[float]) -> None:
        """last.pt: written by rank 0, with every rank's RNG state and running sums."""
        ranks = gather({"rng": rng_state(), "sums": list(sums)}, world)
        if is_main:
            state = {
                "run": run.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ranks": ranks,
                "data": data_cfg.to_dict(),
                "seed": seed,
                **{k: progress_state[k] for k in ("best_acc", "best_epoch", "stale", "history")},
                "epoch": epoch,
                "step": step,
            }
            save_resumable(state, last)

    writer = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=progress_state["epoch"])
        print(
            f"{run.id}: {data.kind} data {data.path} ({len(train_split)}/{len(valid_split)}/"
            f"{len(data.splits['test'])} images), {dev}, {world} process(es), batch {run.batch_size}, "
            f"up to {run.epochs} epochs",
            file=sys.stderr,
        )
    bad_images = BadImages()
    steps_per_epoch = len(EpochSampler(len(train_split), seed=seed, epoch=0, rank=rank, world=world))
    steps_per_epoch = -(-steps_per_epoch // batch_size)
    loader_gen = torch.Generator()  # so creating DataLoader iterators never draws from the global RNG

    for epoch in range(progress_state["epoch"], run.epochs):
        if progress_state["stale"] >= patience:
            break
        start_step = progress_state["step"] if epoch == progress_state["epoch"] else 0
        sums = progress_state["sums"] if start_step else [0.0, 0.0, 0.0]  # loss*n, correct, n
        train_set.set_epoch(epoch)
        sampler = EpochSampler(
            len(train_split), seed=seed, epoch=epoch, rank=rank, world=world, start=start_step * batch_size
        )
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=dev.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            generator=loader_gen,
        )
        net.train()
        t0, images_done, new_bad = time.perf_counter(), 0, []
        bar = tqdm(
            total=steps_per_epoch,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{run.epochs}",
            unit="batch",
            disable=not (is_main and progress),
            leave=False,
        )
        step = start_step
        for batch in loader:
            new_bad += bad_images.add(train_split, batch.bad)
            n = len(batch.labels)
            if n or world > 1:  # with DDP every process must join each step, even with no readable image
                x = batch.images if n else torch.zeros(0, 3, prep.size, prep.size)
                x = x.to(dev, non_blocking=True)
                y = batch.labels.to(dev, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    logits = net(x)
                    loss = criterion(logits.float(), y) if n else logits.float().sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums[0] += loss.item() * n
                sums[1] += (logits.argmax(1) == y).sum().item()
                sums[2] += n
                images_done += n
            step += 1
            bar.update(1)
            rate = images_done / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                loss=f"{sums[0] / max(sums[2], 1):.4f}", acc=f"{sums[1] / max(sums[2], 1):.3f}", ips=f"{rate:.1f}"
            )
            if checkpoint_every and step % checkpoint_every == 0 and step < steps_per_epoch:
                save_state(epoch, step, sums)
        bar.close()
        seconds = time.perf_counter() - t0
        if is_main:
            bad_images.report(train_split, new_bad)

        # Validation: every process scores its share, the counts are summed.
        loss_sum, correct, seen = all_reduce(sums, dev, world)
        v_idx, v_probs, _ = predict(
            model,
            valid_split,
            prep,
            device=dev,
            batch_size=batch_size,
            workers=workers,
            indices=list(range(rank, len(valid_split), world)),
            progress=False,
        )
        v_labels = torch.tensor([valid_split.labels[i] for i in v_idx], dtype=torch.long)
        v_probs_t = torch.from_numpy(v_probs)
        v_loss = nn.functional.nll_loss(
            torch.log(v_probs_t.clamp_min(1e-12)), v_labels, weight=class_w.cpu(), reduction="sum"
        )
        v_weight = class_w.cpu()[v_labels].sum()
        v_loss_sum, v_weight_sum, v_correct, v_seen = all_reduce(
            [float(v_loss), float(v_weight), float((v_probs_t.argmax(1) == v_labels).sum()), float(len(v_idx))],
            dev,
            world,
        )
        valid_acc = v_correct / max(v_seen, 1)
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": round(loss_sum / max(seen, 1), 6),
            "train_acc": round(correct / max(seen, 1), 6),
            "valid_loss": round(v_loss_sum / max(v_weight_sum, 1e-12), 6),
            "valid_acc": round(valid_acc, 6),
            "train_images": int(seen),
            "images_per_s": round(seen / max(seconds, 1e-9), 2),
            "seconds": round(seconds, 2),
        }
        scheduler.step()
        progress_state["history"].append(record)
        if valid_acc > progress_state["best_acc"]:
            progress_state.update(best_acc=valid_acc, best_epoch=epoch + 1, stale=0)
            if is_main:
                save_model(
                    out / "best.pt", model, run, epoch=epoch + 1, valid_acc=valid_acc, class_names=data.class_names
                )
        else:
            progress_state["stale"] += 1
        save_state(epoch + 1, 0, [0.0, 0.0, 0.0])
        if is_main:
            write_history(out / "history.csv", progress_state["history"])
            for key, tag in TB_TAGS.items():
                writer.add_scalar(tag, record[key], epoch + 1)
            writer.flush()
            print(
                f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% | "
                f"valid loss {record['valid_loss']:.4f} acc {100 * valid_acc:.2f}% | "
                f"{record['images_per_s']:.1f} img/s"
                + (" | best" if progress_state["best_epoch"] == epoch + 1 else ""),
                file=sys.stderr,
            )
        progress_state["epoch"] = epoch + 1
        progress_state["step"] = 0

    # Test evaluation of the best weights (rank 0 alone; the others wait).
    if is_main:
        if writer is not None:
            writer.close()
        finish(
            run,
            data,
            out,
            dev,
            batch_size=run.batch_size,
            workers=workers,
            progress=progress,
            results=results_file,
            history=progress_state["history"],
            best_epoch=progress_state["best_epoch"],
        )
    if world > 1:
        dist.barrier()
    return out


def finish(
    run: Run,
    data: Data,
    out: Path,
    dev: torch.device,
    *,
    batch_size: int,
    workers: int,
    progress: bool,
    results: str | Path | None,
    history: list[dict],
    best_epoch: int,
) -> dict:
    """Evaluate best.pt on the test split; write metrics.json, the PNG, predictions.csv and the results row."""
    from training.checkpoint import model_from_checkpoint

    model, ckpt = model_from_checkpoint(out / "best.pt")
    model.to(dev)
    summary = split_report(model, run, data, out, device=dev, batch_size=batch_size, workers=workers, progress=progress)
    best = next(h for h in history if h["epoch"] == best_epoch)
    metrics = {
        "run_id": run.id,
        "family": run.family,
        "train_acc": best["train_acc"],
        "valid_acc": best["valid_acc"],
        "test_acc": summary["accuracy"],
        **{k: v for k, v in summary.items() if k != "accuracy"},
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "class_names": list(data.class_names),
        "data": data.summary(),
    }
    write_json(out / "metrics.json", metrics)
    if results:
        n = metrics["data"]
        name = data.path.name if data.path.name.startswith(data.kind) else f"{data.kind} {data.path.name}"
        label = f"{name} ({n['n_train']}/{n['n_valid']}/{n['n_test']})"
        append_results(Path(results), run, metrics, label)
    print(
        f"{run.id}: test accuracy {100 * metrics['test_acc']:.2f}% (best epoch {best_epoch}, valid "
        f"{100 * metrics['valid_acc']:.2f}%), macro recall {100 * metrics['macro_recall']:.2f}%, "
        f"macro F1 {100 * metrics['macro_f1']:.2f}% -> {out}",
        file=sys.stderr,
    )
    return metrics


# ---------------------------------------------------------------- command line


def parse_set(items: list[str]) -> dict:
    """--set key=value overrides of run fields (numbers, booleans and strings)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        low = value.lower()
        if low in ("true", "false"):
            overrides[key] = low == "true"
            continue
        for cast in (int, float):
            try:
                overrides[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = value
    return overrides


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
    g.add_argument("--class-weights", help=f"override the run's class weights: {', '.join(cw.CHOICES)} or 8 numbers")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any run field, e.g. depth=2"
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


def main(args: argparse.Namespace) -> int:
    try:
        overrides = parse_set(args.set)
        if args.class_weights:
            overrides["class_weights"] = cw.parse(args.class_weights)
        run = get_run(args.run).with_overrides(lr=args.lr, batch_size=args.batch_size, **overrides)
        train(
            run,
            data_config(args),
            args.out,
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
        )
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
