"""GPU check of learning from few labels (docs/few-labels.md): the training step rate and one epoch's time of
each way to train the student: scratch, distilled from the ResNet-50 teacher (its forward under no_grad in
the step), SimCLR pre-training (two views, projection head, NT-Xent) and the teacher itself.

    python scripts/gpu_check.py --few-labels                         # linformer-010522 student, full size
    python scripts/gpu_check.py --few-labels --device cpu --small    # trying it out: tiny models, 2 steps

Random weights and random images of the run's size and batch (speed does not depend on either); the views of
SimCLR are made on the device (training/simclr.py). Each rate is the median of --steps timed steps after
two warm-up steps; the epoch time is --train-images over the rate (the loader is timed by --training).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from galaxyvit.classes import NUM_CLASSES
from training.distill import DistillationLoss, DistillNet
from training.distributed import GlobalWeightedLoss, Processes
from training.families import family
from training.models import build_model
from training.pretrain import encoder_of
from training.registry import Run, get_run
from training.simclr import SimCLR, galaxy_views, nt_xent

SMALL = dict(image_size=32, patch_size=8, depth=1, dim=16, heads=2, k=4, mlp_dim=16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    """Images per second of `step`, the median over `steps` timed steps."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def trainer(
    net: torch.nn.Module, params: Iterable[torch.nn.Parameter], loss_of: Callable[[], torch.Tensor]
) -> Callable[[], None]:
    optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)

    def step() -> None:
        net.train()
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def rates(student: Run, teacher_run: Run, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    size = student.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    class_loss = GlobalWeightedLoss(torch.ones(NUM_CLASSES, device=device), Processes())
    out: dict[str, float] = {}

    model = build_model(student).to(device)
    out["scratch"] = step_rate(
        trainer(model, model.parameters(), lambda: class_loss(model(images), labels)[0]), batch, steps, device
    )

    teacher = build_model(teacher_run).to(device).eval()
    out["teacher (resnet50)"] = step_rate(
        trainer(teacher, teacher.parameters(), lambda: class_loss(teacher(images), labels)[0]), batch, steps, device
    )
    teacher.eval()
    student_model = build_model(student.with_overrides(distill_token=True)).to(device)
    net = DistillNet(student_model, torch.no_grad()(teacher))  # type: ignore[arg-type]
    distill = DistillationLoss(class_loss)
    out["distilled"] = step_rate(
        trainer(net, student_model.parameters(), lambda: distill(net(images), labels)[0]), batch, steps, device
    )

    encoder, features = encoder_of(build_model(student))
    simclr = SimCLR(encoder, features).to(device)
    prep = family(student.family).preprocessing(student)
    crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    views = torch.Generator().manual_seed(0)

    def simclr_loss() -> torch.Tensor:
        return nt_xent(simclr(galaxy_views(crops, prep, views)), simclr(galaxy_views(crops, prep, views)))

    out["simclr pre-training"] = step_rate(trainer(simclr, simclr.parameters(), simclr_loss), batch, steps, device)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="linformer-010522", help="student run (linformer-010522)")
    parser.add_argument("--teacher", default="resnet50-teacher", help="teacher run (resnet50-teacher)")
    parser.add_argument("--device", default="cuda", help="cuda (cpu: for trying the script out)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode; median (20)")
    parser.add_argument("--batch-size", type=int, help="default: the student run's (64)")
    parser.add_argument("--train-images", type=int, default=100_000, help="training images per epoch (100,000)")
    parser.add_argument("--small", action="store_true", help="tiny models at 32 pixels, for trying it out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    student, teacher = get_run(args.student), get_run(args.teacher)
    if args.small:
        student, teacher = student.with_overrides(**SMALL), teacher.with_overrides(image_size=32, dim=8)
    batch = args.batch_size or student.batch_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"few labels on {name}: student {student.id}, teacher {teacher.id}, batch {batch}, {args.steps} steps")
    print(f"{'mode':<22} {'images/s':>10} {'epoch of ' + format(args.train_images, ','):>18}")
    for mode, rate in rates(student, teacher, batch, args.steps, device).items():
        print(f"{mode:<22} {rate:>10.1f} {args.train_images / rate:>16.1f} s", flush=True)
    return 0
