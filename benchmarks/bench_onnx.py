"""ONNX Runtime vs PyTorch eager on this machine: batch-1 latency, batch-32 throughput, GFLOP/s vs GEMM peak.

  python benchmarks/bench_onnx.py                       # vit-110421, linformer-010522B, ViT-Base, fp32+int8+fp16
  python benchmarks/bench_onnx.py --families linformer-010522B --variants fp32,fp32-raw --rounds1 10

Models are random-initialised (speed does not depend on the weights); ViT-Base is the real-size
ViTConfig() (86M parameters), or a tiny one with --tiny-vitbase. Each model is exported exactly as
`galaxyvit export` does (training/export.py) into a temp dir. `fp32-raw` is the ablation: the same
model exported *without* the export-time graph rewrites of training/onnx_graph.py.
Both engines run with the same number of threads. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Idle threads must not busy-wait: the two engines alternate in one process (and other jobs may share the cores).
# Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig

from training.export_gate import ort_session
from training.export_variants import OPSET, convert_fp16, export_onnx, quantize_int8
from training.models import build_model
from training.registry import get_run
from training.vitbase import build_vitbase

TINY_VITBASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=32)


def gemm_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GEMM GFLOP/s of torch.matmul (n x n) with `threads` threads: best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(engines: dict[str, Callable[[], object]], rounds: int, block: int) -> dict[str, tuple[float, float]]:
    """(median, best) seconds per call of each engine.

    Engines take turns in blocks (round robin), so that load from other processes on a shared
    machine hits all of them alike. Each block starts with one untimed call: both PyTorch's OpenMP
    threads and ORT's thread pool spin for a while after a call and would slow the other engine's
    first call down.
    """
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, run in engines.items():
            run()
            times[name] += [_timed(run) for _ in range(block)]
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def model_for(family_id: str, tiny_vitbase: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if family_id == "vitbase":
        config = ViTConfig(**TINY_VITBASE) if tiny_vitbase else ViTConfig()
        return build_vitbase(pretrained=False, config=config).eval()
    return build_model(get_run(family_id), pretrained=False).eval()


def export_raw(model: torch.nn.Module, path: Path) -> None:
    """The ablation: export without training/onnx_graph.py's rewrites (otherwise as training/export.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )


def flops_per_image(model: torch.nn.Module) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="vit-110421,linformer-010522B,vitbase", help="run ids, or vitbase")
    parser.add_argument("--variants", default="fp32,int8,fp16", help="fp32, int8, fp16, fp32-raw (no graph rewrite)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--rounds1", type=int, default=5, help="batch-1 rounds of 10 calls per engine (default 5)")
    parser.add_argument("--rounds32", type=int, default=5, help="batch-32 calls per engine (default 5)")
    parser.add_argument("--tiny-vitbase", action="store_true", help="tiny ViT-Base config instead of ViTConfig()")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    peak = gemm_peak(args.threads)
    load = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; "
        f"load average before: {load[0]:.2f}; fp32 GEMM peak (torch.matmul 2048²): {peak:.1f} GFLOP/s\n"
    )
    rows = []
    x1, x32 = np.random.default_rng(0).standard_normal((2, 32, 3, 224, 224), dtype=np.float32)
    x1 = np.ascontiguousarray(x1[:1])
    for family_id in args.families.split(","):
        model = model_for(family_id, args.tiny_vitbase)
        flops = flops_per_image(model)
        label = "vitbase (tiny)" if family_id == "vitbase" and args.tiny_vitbase else family_id
        with torch.inference_mode():
            reference = model(torch.from_numpy(x1)).numpy()
        engines = {("PyTorch eager", "fp32"): model}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(model, fp32)
            for variant in args.variants.split(","):
                path = Path(tmp) / f"{variant}.onnx"
                if variant == "int8":
                    quantize_int8(fp32, path)
                elif variant == "fp16":
                    convert_fp16(fp32, path)
                elif variant == "fp32-raw":
                    export_raw(model, path)
                session = ort_session(path, threads=args.threads, spinning=False)
                provider = session.get_providers()[0].removesuffix("ExecutionProvider")
                engines[(f"ORT {provider}", variant)] = session
                drift = float(np.abs(session.run(None, {"images": x1})[0] - reference).max())
                print(f"{label}: ORT {variant} max |Δlogit| vs PyTorch {drift:.1e}", flush=True)

            def call(engine, x):
                if isinstance(engine, torch.nn.Module):
                    return lambda: engine(torch.from_numpy(x))
                return lambda: engine.run(None, {"images": x})

            with torch.inference_mode():
                t1 = measure({key: call(engine, x1) for key, engine in engines.items()}, args.rounds1, block=10)
                t32 = measure({key: call(engine, x32) for key, engine in engines.items()}, args.rounds32, block=1)
        for key in engines:
            rows.append((label, *key, t1[key], t32[key], flops))
            print(f"{label}: {key[0]} {key[1]}: {t1[key][0] * 1e3:.1f} ms, {32 / t32[key][0]:.1f} img/s", flush=True)

    print(
        "\n| model | engine | variant | GFLOP/img | batch-1 latency ms, median (best) "
        "| batch-32 img/s, median (best) | speed-up vs PyTorch, b1 / b32 | GFLOP/s (b32 median) | % of GEMM peak |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    base = {}
    for label, engine, variant, t1, t32, flops in rows:
        if engine == "PyTorch eager":
            base[label] = (t1[0], t32[0])
        b1, b32 = base[label]
        gflops = flops * 32 / t32[0] / 1e9
        print(
            f"| {label} | {engine} | {variant} | {flops / 1e9:.2f} | {t1[0] * 1e3:.1f} ({t1[1] * 1e3:.1f}) | "
            f"{32 / t32[0]:.1f} ({32 / t32[1]:.1f}) | {b1 / t1[0]:.2f}x / {b32 / t32[0]:.2f}x | {gflops:.1f} | "
            f"{gflops / peak * 100:.0f}% |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
