"""Training throughput (images/s) of our models against the study's reference implementation of the same run.

The study trained with vit-pytorch: `vit.ViT` for the ViT runs and `efficient.ViT` around
`linformer.Linformer` for the Linformer runs. This script builds both for each run, with the
run's batch size, and times full training steps (forward, cross-entropy, backward, Adam step)
on the same random batch, alternating ours and the reference step by step so that both see the
same machine load. Prints a table; not a test.

Dropout is 0 in both models by default: vit-pytorch 1.26.11's `vit.ViT` also drops attention
weights, which the 2021 layout the study trained with (ours) does not, so with the runs' dropout
the reference does more work per step. `--run-dropout` times them with the runs' dropout anyway
(the output says which).

  python benchmarks/bench_train.py                          # vit-110421 and linformer-010522B, 3 steps each
  python benchmarks/bench_train.py --steps 10 --device cuda # on a GPU (bf16 autocast, the trainer's --precision bf16)

vit-pytorch's package __init__ imports torchvision (not installed here), so its two files are
loaded directly with importlib.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from training.models import build_model
from training.registry import Run, get_run


def load_vit_pytorch(name: str):
    """vit_pytorch/<name>.py as a module, without running the package __init__ (which needs torchvision)."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vit-pytorch is not installed: pip install vit-pytorch (benchmark only)")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"vit_pytorch_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def reference_model(run: Run, num_classes: int = 8) -> nn.Module:
    """The study's model of `run`, from vit-pytorch (+ linformer), with the run's hyperparameters."""
    if run.family == "vit":
        vit = load_vit_pytorch("vit")
        return vit.ViT(
            image_size=run.image_size,
            patch_size=run.patch_size,
            num_classes=num_classes,
            dim=run.dim,
            depth=run.depth,
            heads=run.heads,
            mlp_dim=run.mlp_dim,
            dropout=run.dropout or 0.0,
            emb_dropout=run.emb_dropout or 0.0,
        )
    if run.family == "linformer":
        from linformer import Linformer

        efficient = load_vit_pytorch("efficient")
        seq_len = (run.image_size // run.patch_size) ** 2 + 1
        transformer = Linformer(
            dim=run.dim,
            seq_len=seq_len,
            depth=run.depth,
            heads=run.heads,
            k=run.k,
            one_kv_head=False,
            share_kv=bool(run.shared_kv),
            dropout=run.dropout or 0.0,
        )
        return efficient.ViT(
            dim=run.dim,
            image_size=run.image_size,
            patch_size=run.patch_size,
            num_classes=num_classes,
            transformer=transformer,
        )
    raise SystemExit(f"no reference implementation for family {run.family!r}")


def make_step(model: nn.Module, run: Run, device: torch.device):
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)
    criterion = nn.CrossEntropyLoss()
    amp = device.type == "cuda"

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def bench(
    run_id: str, steps: int, warmup: int, batch_size: int | None, device: torch.device, run_dropout: bool = False
) -> dict:
    run = get_run(run_id)
    if not run_dropout:  # vit-pytorch 1.26.11 drops attention weights too; the 2021 layout does not
        run = run.with_overrides(dropout=0.0, emb_dropout=0.0)
    batch = batch_size or run.batch_size
    torch.manual_seed(0)
    models = {"galaxyvit": build_model(run).to(device).train(), "vit-pytorch": reference_model(run).to(device).train()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    steppers = {name: make_step(m, run, device) for name, m in models.items()}
    x = torch.randn(batch, 3, run.image_size, run.image_size, device=device)
    y = torch.randint(0, 8, (batch,), device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + steps):
        order = list(steppers) if i % 2 == 0 else list(reversed(steppers))  # alternate who goes first
        for name in order:
            t = steppers[name](x, y)
            if i >= warmup:
                times[name].append(t)
    ips = {name: batch / statistics.median(ts) for name, ts in times.items()}
    return {"run": run_id, "batch": batch, "params": params, "images_per_s": ips}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=["vit-110421", "linformer-010522B"], help="run ids")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, help="default: the run's batch size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--run-dropout", action="store_true", help="the runs' dropout (default 0 in both: a like-for-like step)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step throughput on {name}, torch {torch.__version__}, median of {args.steps} steps")
    if args.run_dropout:
        print("the runs' dropout: vit-pytorch's ViT also drops attention weights (ours, the 2021 layout, does not)")
    else:
        print("dropout 0 in both (vit-pytorch's ViT would also drop attention weights; the 2021 layout does not)")
    print(f"{'run':<20} {'batch':>5} {'params ours/ref':>21} {'ours img/s':>11} {'ref img/s':>10} {'speed-up':>9}")
    slower = []
    for run_id in args.runs:
        r = bench(run_id, args.steps, args.warmup, args.batch_size, device, args.run_dropout)
        ours, ref = r["images_per_s"]["galaxyvit"], r["images_per_s"]["vit-pytorch"]
        p = f"{r['params']['galaxyvit']:,}/{r['params']['vit-pytorch']:,}"
        print(f"{run_id:<20} {r['batch']:>5} {p:>21} {ours:>11.1f} {ref:>10.1f} {ours / ref:>8.2f}x", flush=True)
        if ours < ref:
            slower.append(run_id)
    if slower:
        print(f"slower than the reference: {', '.join(slower)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
