"""Self-supervised pre-training (SimCLR) of a run's encoder on a folder of unlabelled cutouts, for fine-tuning
with `galaxyvit train RUN --init runs/pretrain-RUN/pretrained.pt` (all layers, or a linear probe with --freeze).

  galaxyvit pretrain linformer --images data/synth/images --epochs 50        # the family's default run
  galaxyvit pretrain vit-110421 --images CUTOUTS --set image_size=64 --set crop=224
  galaxyvit pretrain linformer --images CUTOUTS --resume                     # continue after the last epoch

The encoder is the run's classifier with its last Linear replaced by an identity (vit / linformer: the CLS
token after the head's LayerNorm; resnet50: the pooled features); SimCLR's projection head and NT-Xent loss
(training/simclr.py) train it on two galaxy views of every image. Any folder of .jpg/.jpeg/.png cutouts,
searched recursively, no split files; each is centre-cropped as the run's preprocessing says.

Writes to --out (default runs/pretrain-<run>/): pretrained.pt (the encoder after the last epoch, what --init
loads), last.pt (+ last.prev.pt, for --resume: epoch by epoch, the views and dropout derive from (seed, epoch),
so a resumed run reaches the weights of an uninterrupted one), history.csv and TensorBoard events in tb/.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from galaxyvit.classes import NUM_CLASSES
from galaxyvit.preprocess import Preprocessing, eval_crop
from training.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_resumable, save_resumable
from training.families import FAMILIES, family
from training.models import build_model
from training.registry import Run, get_run, parse_overrides
from training.simclr import SimCLR, galaxy_views, nt_xent

PRETRAIN_FORMAT = "galaxyvit-pretrained-v1"
DEFAULT_RUNS = {"vit": "vit-110421", "linformer": "linformer-010522", "resnet50": "resnet50-teacher"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def head_linear_name(model: nn.Module) -> str:
    """The name of the classifier's last Linear: the one layer fine-tuning starts afresh."""
    if hasattr(model, "hf"):
        return "hf.classifier"
    if hasattr(model, "mlp_head"):
        return "mlp_head.1"
    if hasattr(model, "fc"):
        return "fc"
    raise TypeError(f"no classification head known for {type(model).__name__}")


def encoder_of(model: nn.Module) -> tuple[nn.Module, int]:
    """`model` with its last Linear replaced by an identity, and the width of the features it now returns."""
    name = head_linear_name(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linear = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return model, int(linear.in_features)


class UnlabelledImages(torch.utils.data.Dataset):
    """Every image under `root` as the run's (size, size, 3) uint8 centre crop."""

    def __init__(self, root: str | Path, prep: Preprocessing, limit: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"--images {root} is not a folder")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if len(self.paths) < 2:
            raise ValueError(f"--images {root}: SimCLR needs at least 2 images, found {len(self.paths)}")
        self.prep = prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return torch.from_numpy(eval_crop(image, self.prep).copy())


def pretrain(
    run: Run,
    images: str | Path,
    out: Path,
    *,
    epochs: int = 100,
    temperature: float = 0.5,
    seed: int = 0,
    device: str | None = None,
    workers: int = 0,
    limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Pre-train the encoder of `run` with SimCLR on the images under `images`; return pretrained.pt."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prep = family(run.family).preprocessing(run)
    data = UnlabelledImages(images, prep, limit)
    batch_size = min(run.batch_size, len(data))
    torch.manual_seed(seed)
    encoder, features = encoder_of(build_model(run, num_classes=NUM_CLASSES, pretrained=False))
    model = SimCLR(encoder, features).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr, weight_decay=1e-6)
    history: list[dict] = []
    last = out / "last.pt"
    if resume and last.exists():
        saved, used = load_resumable(last)
        if Run.from_dict(saved["run"]) != run:
            raise CheckpointError(f"{used} belongs to a different run configuration than {run.id}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = saved["history"]
        print(f"resuming the pre-training of {run.id} from {used}: epoch {len(history)}", file=sys.stderr)
    print(
        f"pretrain {run.id} ({run.family}, {features}-d features) with SimCLR on {len(data)} images from {images}, "
        f"{dev}, batch {batch_size}, up to {epochs} epochs",
        file=sys.stderr,
    )
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=len(history))
    for epoch in range(len(history), epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout; the views have their own generator
        views = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=views).tolist()
        batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=workers)
        model.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f"pretrain {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
        for crops in bar:
            z0 = model(galaxy_views(crops.to(dev), prep, views))
            z1 = model(galaxy_views(crops.to(dev), prep, views))
            loss = nt_xent(z0, z1, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(crops), seen + len(crops)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "loss": round(loss_sum / max(seen, 1), 6), "images_per_s": seen / seconds}
        history.append(record)
        writer.add_scalar("loss/simclr", record["loss"], epoch + 1)
        writer.add_scalar("images_per_s", record["images_per_s"], epoch + 1)
        writer.flush()
        print(f"epoch {epoch + 1}: SimCLR loss {record['loss']:.4f} | {seen / seconds:.1f} img/s", file=sys.stderr)
        save_pretrained(out / "pretrained.pt", model.encoder, run, epoch + 1, images)
        state = {"run": run.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        save_resumable({**state, "history": history}, last)
        write_history(out / "history.csv", history)
    writer.close()
    return out / "pretrained.pt"


def save_pretrained(path: Path, encoder: nn.Module, run: Run, epoch: int, images: str | Path) -> None:
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    prep = family(run.family).preprocessing(run).to_dict()
    payload = {"format": PRETRAIN_FORMAT, "method": "simclr", "model": state, "run": run.to_dict()}
    atomic_save({**payload, "epoch": epoch, "images": str(images), "preprocessing": prep}, path)


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def load_pretrained(model: nn.Module, path: str | Path, freeze: bool = False) -> list[str]:
    """Load a pretrained.pt encoder into a classifier of the same architecture; return the parameters left
    new (the head's last Linear, and a distillation token and head). `freeze`: train only those."""
    data = load_checkpoint(path)
    if data.get("format") != PRETRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a pre-trained encoder ({PRETRAIN_FORMAT}) of `galaxyvit pretrain`")
    head = head_linear_name(model)
    new_ok = (f"{head}.", "distillation_token", "distill_mlp.")
    state = dict(data["model"])
    for key, target in model.state_dict().items():  # a distillable Linformer's E and F have one more row
        if key.endswith(("proj_k", "proj_v")) and key in state and target.shape[0] == state[key].shape[0] + 1:
            state[key] = torch.cat((state[key], target[-1:].cpu()))  # the distillation token's row stays new
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this architecture: {exc}") from None
    wrong = [key for key in missing if not key.startswith(new_ok)]
    if unexpected or wrong:
        raise CheckpointError(f"{path} does not fit this architecture: missing {wrong}, unexpected {unexpected}")
    if freeze:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(new_ok)
    return list(missing)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=f"a family ({', '.join(DEFAULT_RUNS)}: its default run) or a run id")
    parser.add_argument("--images", required=True, help="folder of unlabelled cutouts (searched recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/pretrain-<run>)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    parser.add_argument("--batch-size", type=int, help="images per batch, two views each (default: the run's)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the run's)")
    parser.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (0.5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run field")
    parser.add_argument("--limit", type=int, help="use at most N images")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and views (0)")
    parser.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, the cores)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    try:
        run_id = DEFAULT_RUNS.get(args.model, args.model)
        if run_id not in DEFAULT_RUNS.values() and args.model in FAMILIES:
            raise ValueError(f"family {args.model!r} has no default run to pre-train: give a run id")
        run = get_run(run_id).with_overrides(lr=args.lr, batch_size=args.batch_size, **parse_overrides(args.set))
        out = args.out or Path("runs") / f"pretrain-{run.id}"
        if args.threads:
            torch.set_num_threads(args.threads)
        path = pretrain(
            run,
            args.images,
            out,
            epochs=args.epochs,
            temperature=args.temperature,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            limit=args.limit,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (KeyError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    print(f"pre-trained encoder -> {path}  (fine-tune: galaxyvit train {run.id} --init {path})", file=sys.stderr)
    return 0
