"""Reproduce the study's table in one command: queue its runs, train each in its own folder, tabulate
them beside the study's figures.

  galaxyvit reproduce --family linformer --data gz2 --images JPEGS --gpus 4 --out runs/linformer
  galaxyvit reproduce --runs linformer-010522,vit-110421 --data synthetic --epochs 1 --set depth=1
  galaxyvit reproduce --family vit --engine ray --ray-address auto --gpus 1 --per-gpu 2

Each run is `galaxyvit train RUN --out OUT/RUN ...` in a child process (log: OUT/RUN/train.log), one
per slot: --gpus N x --per-gpu K slots with CUDA_VISIBLE_DEVICES set per GPU, or one at a time on CPU.
Started again, it skips finished runs (OUT/RUN/metrics.json), resumes killed ones from their last.pt
(`train --resume`) and retries failed ones; a failing run is recorded with its error and the others
go on. A run folder started with other train options is an error and is never touched. Progress:
one line per run and epoch (valid accuracy, ETA), then the table so far: OUT/reproduction.md, .json
and .png. With --engine ray the same children run as Ray tasks (num_gpus 1/K each) on the cluster of
--ray-address (default: a local instance); OUT must then be on a file system every node shares.
Every image of the splits must be present (--allow-missing to train on what there is).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from galaxyvit.paths import GZ2_SPLITS
from training.data import add_data_arguments, data_config, load_data
from training.gpu_augment import AUGMENT_DEVICES
from training.registry import FAMILIES, get_run, load_runs
from training.reproduction import STATUS_FILE, read_json
from training.run_queue import Job, Queue, run_local, run_ray

SHOW_IDS = 5


class ReproduceError(ValueError):
    """Bad reproduce input: unknown run, images missing from the data, bad slot counts."""


def select_runs(runs: str | None, family: str | None) -> list[str]:
    """Run ids in queue order: the --runs list as given (each checked), else the family's (or all) in study order."""
    if runs:
        ids = [run_id.strip() for run_id in runs.split(",") if run_id.strip()]
        for run_id in ids:
            run = get_run(run_id)  # KeyError naming close matches
            if family and run.family != family:
                raise ReproduceError(f"run {run_id} is a {run.family} run, not {family}")
        if len(set(ids)) != len(ids):
            raise ReproduceError(f"--runs names a run twice: {runs}")
        return ids
    # the study's columns (a run of no table, resnet50-teacher, is queued only by name)
    return [run.id for run in load_runs().values() if family in (None, run.family) and run.tables]


def data_options(args: argparse.Namespace) -> list[str]:
    splits = args.splits or (str(GZ2_SPLITS) if args.data == "gz2" and args.images and not args.dataset else None)
    options = ["--data", args.data]
    for flag, value in (
        ("--dataset", args.dataset),
        ("--splits", splits),
        ("--images", args.images),
        ("--split-pattern", args.split_pattern),
        ("--classes", args.classes),
        ("--limit", args.limit),
        ("--prepared", None if args.prepared == "auto" else args.prepared),
    ):
        if value is not None:
            options += [flag, str(value)]
    if args.data == "synthetic":
        options += ["--synth-n", str(args.synth_n), "--synth-seed", str(args.synth_seed)]
    return options


def check_data(args: argparse.Namespace) -> str:
    """Read the data once before any child does (writing the synthetic cache); every listed image must be there.
    Returns the table's data label."""
    cfg = data_config(args)
    data = load_data(cfg, quiet=True)
    missing = [(name, galaxy_id) for name, split in data.splits.items() for galaxy_id in split.missing]
    if missing and not args.allow_missing:
        first = ", ".join(f"{galaxy_id} ({name})" for name, galaxy_id in missing[:SHOW_IDS])
        folder = next(iter(data.splits.values())).images_dir
        raise ReproduceError(
            f"{len(missing)} images listed in the split files are missing or empty in {folder} (first: {first}); "
            "the study's splits need every image (--allow-missing trains on the rest)"
        )
    if args.prepare:
        from training.prepared import default_out, is_current, prepare

        if default_out(cfg) is None:
            raise ReproduceError("--prepare puts the crops beside the data: it needs --dataset DIR or synthetic data")
        if not is_current(default_out(cfg), cfg):
            prepare(cfg, workers=os.cpu_count() or 1)
    n = data.summary()
    return f"{data.kind} {data.path} ({n['n_train']}/{n['n_valid']}/{n['n_test']} images)"


def train_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(options that shape the result, resource options) passed on to every `galaxyvit train`."""
    options, resources = [], []
    for flag, value in (
        ("--epochs", args.epochs),
        ("--patience", args.patience),
        ("--seed", args.seed),
        ("--batch-size", args.batch_size),
        ("--lr", args.lr),
        ("--class-weights", args.class_weights),
        ("--weights", args.weights),
        ("--augment-device", args.augment_device),
    ):
        if value is not None:
            options += [flag, str(value)]
    for item in args.set:
        options += ["--set", item]
    if args.deterministic:
        options.append("--deterministic")
    options += shlex.split(args.train_args or "")
    for flag, value in (("--threads", args.threads), ("--workers", args.workers), ("--checkpoint-every", args.every)):
        if value is not None:
            resources += [flag, str(value)]
    return options, resources


def slots_for(gpus: int, per_gpu: int) -> list[dict[str, str]]:
    """One environment per concurrent run: K per visible GPU, or a single CPU slot."""
    if not gpus:
        return [{"CUDA_VISIBLE_DEVICES": ""}]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",")[:gpus] if visible else [str(i) for i in range(gpus)]
    return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in ids for _ in range(per_gpu)]


def configure(parser: argparse.ArgumentParser) -> None:
    q = parser.add_argument_group("queue")
    q.add_argument("--runs", help="comma-separated run ids (default: every run of --family, or of the study)")
    q.add_argument("--family", choices=FAMILIES, help="only this family's runs")
    q.add_argument("--out", type=Path, default=Path("runs/reproduction"), help="output folder (runs/reproduction)")
    q.add_argument("--gpus", type=int, help="GPUs to use (default: all visible; 0 = CPU, one run at a time)")
    q.add_argument("--per-gpu", type=int, default=1, help="runs sharing one GPU (1)")
    q.add_argument("--engine", choices=("local", "ray"), default="local", help="child processes here, or Ray tasks")
    q.add_argument("--ray-address", help="Ray cluster to join (default: start a local instance)")
    q.add_argument("--cpus-per-run", type=int, help="CPUs per run (default: this machine's CPUs / concurrent runs)")
    q.add_argument("--allow-missing", action="store_true", help="train although images of the splits are missing")
    q.add_argument(
        "--prepare", action="store_true", help="prepare the dataset's centre crops first (galaxyvit prepare)"
    )
    add_data_arguments(parser, title="data (passed to every run)")
    t = parser.add_argument_group("training (passed to every run)")
    t.add_argument("--epochs", type=int, help="maximum epochs (default: the run's, 200)")
    t.add_argument("--patience", type=int, help="early-stopping patience (train's default: 10)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run field")
    t.add_argument("--seed", type=int, help="seed (train's default: 0)")
    t.add_argument("--batch-size", type=int, help="override the runs' batch size")
    t.add_argument("--lr", type=float, help="override the runs' learning rate")
    t.add_argument("--class-weights", help="override the runs' class weights")
    t.add_argument("--weights", help="vitbase backbone: hub id or local folder")
    t.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")
    t.add_argument(
        "--augment-device", choices=AUGMENT_DEVICES, help="cpu, cuda or batch-cpu (train's default: by device)"
    )
    t.add_argument("--threads", type=int, help="torch threads per run")
    t.add_argument("--workers", type=int, help="DataLoader workers per run")
    t.add_argument("--checkpoint-every", dest="every", type=int, help="last.pt every N steps (train's default 500)")
    t.add_argument("--train-args", help="more `galaxyvit train` options, as one quoted string")


def main(args: argparse.Namespace) -> int:
    try:
        if args.per_gpu < 1 or (args.gpus is not None and args.gpus < 0):
            raise ReproduceError("--gpus must be 0 or more and --per-gpu at least 1")
        run_ids = select_runs(args.runs, args.family)
        options, resources = train_options(args)
        data = data_options(args)
        label = check_data(args)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:  # ReproduceError, DataError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.gpus is None:
        import torch

        args.gpus = torch.cuda.device_count()
    slots = slots_for(args.gpus, args.per_gpu)
    cpus = args.cpus_per_run or max(1, (os.cpu_count() or 1) // len(slots))
    if not args.gpus:
        resources += ["--device", "cpu"]
    if (len(slots) > 1 or args.engine == "ray") and args.threads is None:
        resources += ["--threads", str(cpus)]
    if args.gpus and args.workers is None:
        resources += ["--workers", str(max(1, cpus - 1))]

    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        Job(
            run_id,
            args.out / run_id,
            data + options,
            resources,
            args.epochs or get_run(run_id).epochs,
            args.patience or 10,
        )
        for run_id in run_ids
    ]
    queue = Queue(jobs, args.out, label)
    for job in jobs:
        recorded = (read_json(job.folder / STATUS_FILE) or {}).get("train_options")
        if recorded is not None and recorded != job.options:
            queue.errors[job.run_id] = (
                f"{job.folder} was started with other train options ({shlex.join(recorded)}); "
                "it is left as it is: reproduce into another --out"
            )
    todo = [job for job in jobs if job.state() != "finished" and job.run_id not in queue.errors]
    counts = {state: sum(job.state() == state for job in jobs) for state in ("finished", "resumable", "new")}
    print(
        f"{len(jobs)} runs on {label}: {counts['finished']} finished (skipped), {counts['resumable']} to resume, "
        f"{counts['new']} new, {len(queue.errors)} refused; {len(slots)} at a time ({args.engine})",
        flush=True,
    )
    for run_id, error in queue.errors.items():
        print(f"{run_id}: REFUSED: {error}", file=sys.stderr)
    queue.table()
    if args.engine == "ray":
        run_ray(queue, todo, args.ray_address, args.gpus, args.per_gpu, cpus)
    else:
        run_local(queue, todo, slots)
    queue.table()
    done = sum(job.state() == "finished" for job in jobs)
    print(f"{done} of {len(jobs)} runs finished; table: {args.out / 'reproduction.md'} (+ .json, .png)")
    return 0 if all(job.state() == "finished" for job in jobs) and not queue.errors else 1
