"""GPU check of the service: CUDA provider active, throughput and p50/p99 latency per model and batch size;
and (--training) the training epoch time of the study's runs on the GPU.

On a machine with an NVIDIA GPU (and onnxruntime-gpu able to load CUDA), run from the repository root:

    python scripts/gpu_check.py                       # the models registered in BENTOML_HOME
    python scripts/gpu_check.py --synthetic           # export full-size study models with random weights first
    python scripts/gpu_check.py --training            # epoch time of linformer-010522B, vit-110421, ViT-Base (~5 min)
    python scripts/gpu_check.py --sweep --synthetic   # per-protocol load test on CUDA, fp32 and fp16 (~15 min)
    python scripts/gpu_check.py --few-labels          # epoch time of scratch, distilled, SimCLR (gpu_few_labels.py)
    python scripts/gpu_check.py --all                 # every part above in one call, each within its time budget

It starts the service (serving.process.ServerProcess) on 127.0.0.1 with device cuda, fails unless every model runs on
CUDAExecutionProvider, then sends multipart /classify requests of each batch size from a few
concurrent clients for a fixed time and prints images/s and request latency p50/p99. It stops the
server by PID and finishes in a few minutes (3 models x 4 batch sizes x --seconds).

--sweep runs `galaxyvit loadtest` (load_tests/sweep.py) on CUDA instead: ViT-Base and the Linformer, fp32 and
fp16 (--variants), every protocol (--protocols: multipart /classify, /classify/raw, Open Inference Protocol JSON
and binary), --concurrency users, 1 image per request, --repeat runs with the ONNX Runtime engine yardstick before
and after each point, and prints each protocol's median share of the bare engine with the check HTTP >= 80%.

--training (scripts/gpu_training.py) writes --sample synthetic 424x424 galaxies (default 4,096) and
prepares them, then measures what an epoch is made of: the loader's images/s with the trainer's
workers on each data path (JPEG + Pillow augmentation, prepared crops + Pillow, prepared crops for
the GPU augmentation), each run's training step and evaluation images/s on the GPU (random weights,
the run's batch) and the GPU augmentation's images/s. The epoch time of --train-images (100,000)
training + --valid-images (25,000) validation images follows for each path, with what bounds it
(loader or model), and each family's table time at --epochs-per-run epochs per run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from galaxyvit.store import default_home, discover_models
from serving.client import multipart
from serving.process import ServerNotReady, ServerProcess


def galaxy_jpeg(seed: int, size: int = 424) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    r = np.sqrt(xx**2 + (yy / rng.uniform(0.3, 1.0)) ** 2)
    img = 200 * np.exp(-r / rng.uniform(8, 30))[..., None] * np.array([1.0, 0.8, 0.6]) + rng.normal(
        10, 4, (size, size, 3)
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def server_settings(max_batch: int) -> dict[str, object]:
    return {
        "device": "cuda",
        "max_batch_size": max_batch * 2,
        "max_images": max_batch,
        "max_latency_ms": 2000,
        "max_upload_bytes": 64 * 1024 * 1024,
        "workers": os.environ.get("GALAXYVIT_WORKERS", "4"),  # decoding is the CPU-bound part
    }


def measure(url: str, model: str, images: list[bytes], batch: int, seconds: float, clients: int) -> dict:
    """Closed loop: `clients` threads send /classify requests of `batch` images for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        body, content_type = multipart([images[(k + i) % len(images)] for i in range(batch)], model)
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                start = time.perf_counter()
                response = client.post(url + "/classify", content=body, headers={"Content-Type": content_type})
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "images_per_s": len(latencies) * batch / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


SWEEP_PROTOCOLS = ("classify", "raw", "oip-json", "oip-binary")


def model_store(
    synthetic: bool,
    work: Path,
    families: tuple[str, ...] = ("vit", "linformer", "vitbase"),
    variants: tuple[str, ...] = ("fp32",),
) -> Path:
    """The BentoML home to serve from: BENTOML_HOME's, or full-size random-weight models exported into `work`."""
    store = default_home()
    if synthetic or not discover_models(store):
        from training.random_models import export_random_models

        print("exporting full-size study models with random weights", flush=True)
        store = work / "bentoml_home"
        for family, folder in export_random_models(work, store, families, variants=variants).items():
            print(f"exported {family}: {folder}", flush=True)
    return store


def protocol_sweep(args: argparse.Namespace) -> int:
    """`galaxyvit loadtest` per protocol on CUDA for each variant; 1 when a protocol's median share of the
    bare engine is under the target (or a sweep failed)."""
    from load_tests import sweep
    from load_tests.report import Point, protocol_of

    work = Path(tempfile.mkdtemp(prefix="galaxyvit-gpu-sweep-"))
    out = args.out or work / "reports"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    store = model_store(args.synthetic, work, tuple(models), tuple(variants))
    os.environ["BENTOML_HOME"] = str(store)
    device = "auto" if args.allow_cpu else "cuda"
    failed = False
    for variant in variants:
        parser = argparse.ArgumentParser()
        sweep.configure(parser)
        options = ["--models", ",".join(models), "--concurrency", args.concurrency, "--protocols", args.protocols]
        options += ["--repeat", str(args.repeat), "--duration", str(args.duration), "--variant", variant]
        options += ["--device", device, "--workers", str(args.api_workers), "--out", str(out / variant)]
        print(f"\n== {variant}: galaxyvit loadtest {' '.join(options)}", flush=True)
        code = sweep.main(parser.parse_args(options))
        results = out / variant / "results.json"
        if code != 0 or not results.is_file():
            print(f"FAIL: the {variant} sweep ended with status {code}", file=sys.stderr)
            failed = True
            continue
        points = [Point(**p) for p in json.loads(results.read_text())["points"]]
        groups: dict[tuple[str, str, int], list[Point]] = {}
        for p in points:
            groups.setdefault((p.model, protocol_of(p), p.concurrency), []).append(p)
        for (model, protocol, users), runs in groups.items():
            shares = [p.efficiency for p in runs if p.efficiency is not None]
            share = statistics.median(shares) if shares else None
            verdict = "unmeasured" if share is None else ("PASS" if share >= args.target else "FAIL")
            failed |= verdict != "PASS"
            shown = "-" if share is None else f"{100 * share:.0f}%"
            print(
                f"{variant} {model:<10} {protocol:<10} c={users}: {statistics.median(p.img_s for p in runs):8.1f} "
                f"img/s, {shown} of the bare engine (HTTP >= {100 * args.target:.0f}%: {verdict})",
                flush=True,
            )
    return 1 if failed else 0


# --all: one device session holds every measurement (a lent GPU comes with ~15 minutes in all), each part in its own
# process with a time budget in seconds; a part that fails or overruns is reported and the next one still runs
ALL_PARTS = (
    (["--synthetic", "--seconds", "4"], 180),
    (["--training"], 240),
    (["--sweep", "--synthetic", "--repeat", "1", "--duration", "8", "--variants", "fp16"], 300),
    (["--few-labels"], 120),
)


def run_all_parts() -> int:
    """Each of ALL_PARTS as `python scripts/gpu_check.py PART` in turn; a summary line per part at the end."""
    summary = []
    for part, budget_s in ALL_PARTS:
        print(f"\n==> gpu_check.py {' '.join(part)} (at most {budget_s} s)", flush=True)
        child = subprocess.Popen([sys.executable, __file__, *part])
        try:
            code = child.wait(timeout=budget_s)
            summary.append(f"{' '.join(part)}: {'ok' if code == 0 else f'exit {code}'}")
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)  # KeyboardInterrupt: the part's `with ServerProcess` stops its server
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            summary.append(f"{' '.join(part)}: stopped after {budget_s} s")
    print("\n" + "\n".join(summary))
    return 0 if all(line.endswith(": ok") for line in summary) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="export full-size random-weight models into a temp home"
    )
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="images per request (comma-separated)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per model and batch size")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="measure even if CUDA is not active (for trying it out)"
    )
    parser.add_argument("--training", action="store_true", help="the training epoch time instead (gpu_training.py)")
    sweep = parser.add_argument_group("--sweep: the per-protocol load test on CUDA")
    sweep.add_argument("--sweep", action="store_true", help="run it instead of the batch-size check")
    sweep.add_argument("--models", default="vitbase,linformer", help="registered models to sweep (vitbase,linformer)")
    sweep.add_argument("--variants", default="fp32,fp16", help="artifact variants, each its own sweep (fp32,fp16)")
    sweep.add_argument("--protocols", default=",".join(SWEEP_PROTOCOLS), help="load-test protocols")
    sweep.add_argument("--concurrency", default="16", help="Locust users (16)")
    sweep.add_argument("--repeat", type=int, default=3, help="runs of every point (3); the medians are checked")
    sweep.add_argument("--duration", type=float, default=15.0, help="measured seconds per point (15)")
    sweep.add_argument("--api-workers", type=int, default=4, help="API worker processes of the service (4)")
    sweep.add_argument("--target", type=float, default=0.8, help="least HTTP share of the bare engine (0.8)")
    sweep.add_argument("--out", type=Path, default=None, help="report folder (default: a temp folder)")
    parser.add_argument("--few-labels", action="store_true", help="the few-label epoch times (gpu_few_labels.py)")
    parser.add_argument("--all", action="store_true", help="every GPU measurement in one call (ALL_PARTS)")
    args, rest = parser.parse_known_args()
    if args.all:
        return run_all_parts()
    if args.few_labels:
        from gpu_few_labels import main as few_labels_main  # scripts/ is on sys.path when this file runs

        return few_labels_main(rest)
    if args.training:
        from gpu_training import main as training_main  # scripts/ is on sys.path when this file runs

        return training_main(rest)
    if args.sweep and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.sweep:
        return protocol_sweep(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="galaxyvit-gpu-check-"))
    store = model_store(args.synthetic, work)
    server = ServerProcess(server_settings(max(batch_sizes)), store=store, log=work / "server.log")
    try:
        server.start()
    except ServerNotReady as exc:
        sys.exit(str(exc))
    with server:
        url, log = server.url, server.log
        info = httpx.get(url + "/models", timeout=30).json()
        for m in info["models"]:
            print(f"{m['name']}: {m['family']} {m['params']:,} params, provider {m['provider']} ({m['providers']})")
        not_cuda = [m["name"] for m in info["models"] if m["provider"] != "CUDAExecutionProvider"]
        if not_cuda and not args.allow_cpu:
            print(f"FAIL: not on CUDAExecutionProvider: {not_cuda}\n{log.read_text()[-3000:]}", file=sys.stderr)
            return 1
        images = [galaxy_jpeg(seed) for seed in range(16)]
        print(f"\n{'model':<12} {'batch':>5} {'requests':>8} {'errors':>6} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for m in info["models"]:
            measure(url, m["name"], images, 1, 1.0, 1)  # warm the path
            for batch in batch_sizes:
                r = measure(url, m["name"], images, batch, args.seconds, args.clients)
                print(
                    f"{m['name']:<12} {batch:>5} {r['requests']:>8} {r['errors']:>6} {r['images_per_s']:>9.1f} "
                    f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}",
                    flush=True,
                )
        return 0


if __name__ == "__main__":
    sys.exit(main())
