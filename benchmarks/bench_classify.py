"""Catalogue classification speed: raw ONNX Runtime vs the local engine vs the Ray engine vs HTTP /classify.

  python benchmarks/bench_classify.py                        # vit-110421 and linformer-010522B, 1536 / 6144 images
  python benchmarks/bench_classify.py --models linformer-010522B --images 2048 --skip http
  python benchmarks/bench_classify.py --repeats 5 --skip ray,http   # local vs raw only, 5 times, medians
  python benchmarks/bench_classify.py --rss                  # peak RSS at 10,000 and 200,000 rows (tiny model)

Models are random-initialised at their study run's size (speed does not depend on the weights),
exported and registered exactly as `galaxyvit export` does (training/random_models.py, in a child
process, so no torch here). The catalogue is a CSV of N rows naming 424x424 synthetic JPEG
cutouts (a pool of 64 files, repeated). For every engine: images/s, and CPU seconds per image of
each process (where the time goes):
  raw     one ONNX Runtime session (serving.runtime.load_model, the service's settings) fed
          preprocessed batches of `--batch-size` in a loop: no reading, decoding or writing;
  local   `classify_catalogue` in this process: decode processes + this process (ORT, rows, shards);
  ray     the same job on a local Ray instance with the machine's cores (ray.init(num_cpus=cores));
  http    the service (`galaxyvit serve`, one API and one inference worker) on a free loopback port,
          4 client threads posting 16-image multipart requests of the same files.
The machine may be shared: raw and local are measured `--repeats` times as raw, local, raw (raw with
nothing else of ours running, its mean compared with the local run between), with the 1-minute load
average before each; a local run faster than its raw (> 100%: the load changed under it) is invalid
and measured again. The table gives the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.job import classify_catalogue, cores  # noqa: E402
from galaxyvit.preprocess import eval_batch  # noqa: E402
from serving.client import multipart  # noqa: E402
from serving.process import free_port  # noqa: E402
from serving.runtime import load_model  # noqa: E402

FAMILY = {"vit-110421": "vit", "linformer-010522B": "linformer"}  # training/random_models.py builds these sizes
DEFAULT_IMAGES = {"vit-110421": 1536, "linformer-010522B": 6144}
POOL = 64
REQUEST_IMAGES = 16
CLIENTS = 4


def export_models(work: Path, runs: list[str], tiny: bool = False) -> Path:
    """Export (once) the random-weight models of `runs` into work/models, registered in work/bentoml_home."""
    home = work / "bentoml_home"
    missing = [FAMILY[r] for r in runs if not (work / "models" / FAMILY[r] / "fp32.onnx").is_file()]
    if missing:
        command = [sys.executable, "-m", "training.random_models", "--out", str(work), "--home", str(home)]
        command += missing + (["--tiny"] if tiny else [])
        subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return home


def write_catalogue(folder: Path, rows: int, size: int = 424) -> Path:
    """folder/catalogue-<rows>.csv naming a pool of synthetic JPEG cutouts (written once)."""
    from PIL import Image

    from training.synthetic import render_galaxy

    images = folder / f"cutouts-{size}"
    if not images.is_dir():
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(POOL):
            Image.fromarray(render_galaxy(i % 8, rng, size)).save(images / f"{i}.jpg", quality=90)
    path = folder / f"catalogue-{size}-{rows}.csv"
    if not path.is_file():
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["objid", "path", "ra", "dec"])
            for i in range(rows):
                writer.writerow([i, f"{images.name}/{i % POOL}.jpg", 150 + i * 1e-4, 2 - i * 1e-4])
    return path


def tree_cpu(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """pid -> (name, user+system CPU seconds) of `root` and every descendant alive now."""
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            found[process.pid] = (" ".join(process.cmdline())[:300] or process.name(), times.user + times.system)
        except psutil.Error:
            continue
    return found


def cpu_delta(before: dict, after: dict, role) -> dict[str, float]:
    """CPU seconds spent between two `tree_cpu` snapshots, summed by role(command line)."""
    spent: dict[str, float] = {}
    for pid, (command, seconds) in after.items():
        name = role(command)
        spent[name] = spent.get(name, 0.0) + seconds - before.get(pid, ("", 0.0))[1]
    return spent


def bench_raw(model_dir: Path, files: list[Path], batch_size: int, images: int) -> dict:
    from PIL import Image

    model = load_model("raw", model_dir, "fp32", "cpu")
    pool = eval_batch([Image.open(f) for f in files[:batch_size]], model.card.prep)
    batch = np.ascontiguousarray(pool[np.arange(batch_size) % len(pool)])
    model.predict(batch)
    calls = max(3, images // batch_size)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        model.predict(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = calls * batch_size
    return {"images_per_s": n / wall, "cpu_ms": {"ORT process": 1000 * cpu / n}}


def bench_local(catalogue: Path, model_dir: Path, out: Path, batch_size: int, rows: int) -> dict:
    summary = classify_catalogue(
        [catalogue], out, onnx=model_dir / "fp32.onnx", id_col="objid", batch_size=batch_size, device="cpu",
        force=True, progress=False,
    )  # fmt: skip
    f = summary.facts
    cpu = {
        "main (ORT, rows, shards)": 1000 * f["main_cpu_s"] / rows,
        "decode processes": 1000 * f["decode_cpu_s"] / rows,
    }
    detail = f"main waited {f['wait_decode_s']:.1f} s for decoding, {f['infer_s']:.1f} s in normalise+ORT, "
    detail += f"{f['write_s']:.1f} s rows+shards, of {f['wall_s']:.1f} s; {f['decode_workers']} decode process(es); "
    steady = (rows - f["batch_size"]) / (f["wall_s"] - f["first_batch_s"])
    detail += f"start-up to the first batch {f['first_batch_s']:.1f} s, {steady:.1f} images/s after it"
    return {"images_per_s": summary.images_per_s, "cpu_ms": cpu, "detail": detail}


def ray_role(command: str) -> str:
    if "decode_stage" in command:
        return "ray decode tasks"
    if "Classifier" in command:
        return "ray inference actor"
    if "raylet" in command or "gcs_server" in command or "dashboard" in command or "log_monitor" in command:
        return "ray services"
    if "bench_classify" in command:
        return "driver"
    return "ray other workers"


def bench_ray(catalogue: Path, model_dir: Path, out: Path, batch_size: int, rows: int) -> dict:
    import ray

    ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False)
    try:
        me = psutil.Process()
        before = tree_cpu(me)
        start = time.perf_counter()
        summary = classify_catalogue(
            [catalogue], out, onnx=model_dir / "fp32.onnx", id_col="objid", batch_size=batch_size, device="cpu",
            engine="ray", force=True, progress=False, threads=cores(),
        )  # fmt: skip
        wall = time.perf_counter() - start
        spent = cpu_delta(before, tree_cpu(me), ray_role)
    finally:
        ray.shutdown()
    detail = f"pipeline {summary.seconds:.1f} s of {wall:.1f} s (driver: planning, starting the actor, manifest)"
    return {
        "images_per_s": rows / summary.seconds,
        "cpu_ms": {k: 1000 * v / rows for k, v in sorted(spent.items())},
        "detail": detail,
    }


def http_role(command: str) -> str:
    if "--worker-id" in command:
        return "http inference worker" if "galaxyvit_models" in command else "http API worker"
    return "http supervisor"


def bench_http(home: Path, name: str, files: list[Path], rows: int) -> dict:
    from serving.cli import serve_command, stop_server, wait_ready

    port = free_port()
    options = argparse.Namespace(
        host="127.0.0.1", port=port, workers=1, inference_workers=1, models=name, default_model=None,
        variant=None, device="cpu", max_batch_size=None, max_latency_ms=None,
    )  # fmt: skip
    command, env = serve_command(options)
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    log = open(home.parent / f"serve-{name}.log", "wb")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, 300, home.parent / f"serve-{name}.log")
        requests = [[files[(i + j) % len(files)] for j in range(REQUEST_IMAGES)] for i in range(0, rows, 16)]
        bodies = [multipart(r, name) for r in requests]
        post(url, bodies[0])  # warm-up
        root, client = psutil.Process(server.pid), psutil.Process()
        before, client_cpu = tree_cpu(root), client.cpu_times()
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answered = sum(pool.map(lambda b: post(url, b), bodies))
        wall = time.perf_counter() - start
        spent = cpu_delta(before, tree_cpu(root), http_role)
        after = client.cpu_times()
        spent["client (4 threads)"] = after.user + after.system - client_cpu.user - client_cpu.system
    finally:
        stop_server(server)
    return {"images_per_s": answered / wall, "cpu_ms": {k: 1000 * v / answered for k, v in sorted(spent.items())}}


def post(url: str, body: tuple[bytes, str]) -> int:
    request = urllib.request.Request(f"{url}/classify", data=body[0], headers={"Content-Type": body[1]})
    with urllib.request.urlopen(request, timeout=600) as response:
        return len(json.loads(response.read())["predictions"])


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Run `command`; (peak RSS of its main process, peak RSS of its whole process tree) in MiB, sampled at 5 Hz."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, main_peak, tree_peak = psutil.Process(process.pid), 0, 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal main_peak, tree_peak
        while not stop.wait(0.2):
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                main_peak = max(main_peak, rss) if p.pid == root.pid else main_peak
            tree_peak = max(tree_peak, total)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = process.communicate()
    stop.set()
    thread.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err.decode()[-2000:]}")
    return main_peak / 2**20, tree_peak / 2**20


def rss_check(work: Path) -> None:
    """The same job at 10,000 and 200,000 rows (tiny model, 64x64 cutouts: the catalogue machinery dominates)."""
    export_models(work / "tiny", ["vit-110421"], tiny=True)
    onnx = work / "tiny" / "models" / "vit" / "fp32.onnx"
    print("| rows | seconds | peak RSS main (MiB) | peak RSS all processes (MiB) |\n|---|---|---|---|")
    for rows in (10_000, 200_000):
        catalogue = write_catalogue(work, rows, size=64)
        command = [str(Path(sys.executable).with_name("galaxyvit")), "classify", str(catalogue), "--onnx", str(onnx)]
        command += ["--id-col", "objid", "--out", str(work / f"rss-{rows}"), "--force", "--no-progress"]
        command += ["--device", "cpu"]
        start = time.perf_counter()
        main_mib, tree_mib = peak_rss(command)
        print(f"| {rows:,} | {time.perf_counter() - start:.0f} | {main_mib:.0f} | {tree_mib:.0f} |", flush=True)


def local_vs_raw(catalogue: Path, model_dir: Path, files: list[Path], work: Path, batch_size: int, rows: int,
                 repeats: int) -> dict:  # fmt: skip
    """raw, local, raw `repeats` times (each invalid local run above 100% of its raw measured again, at most
    twice); the median images/s and CPU ms of each engine, and the runs."""
    runs = []
    for repeat in range(repeats):
        for _attempt in range(3):
            load = os.getloadavg()[0]
            before = bench_raw(model_dir, files, batch_size, rows)
            local = bench_local(catalogue, model_dir, work / "out-local", batch_size, rows)
            after = bench_raw(model_dir, files, batch_size, rows)
            raw = (before["images_per_s"] + after["images_per_s"]) / 2
            ratio = local["images_per_s"] / raw
            line = f"  run {repeat + 1}: load {load:.1f}, raw {before['images_per_s']:.1f} and "
            line += f"{after['images_per_s']:.1f}, local {local['images_per_s']:.1f} images/s: {ratio:.0%} of raw"
            print(line + ("" if ratio <= 1 else " (invalid: above raw, measuring again)"), flush=True)
            if ratio <= 1:
                break
        raw_cpu = {k: (before["cpu_ms"][k] + after["cpu_ms"][k]) / 2 for k in before["cpu_ms"]}
        runs.append(({"images_per_s": raw, "cpu_ms": raw_cpu}, local, ratio, load))

    def median(engine: int, detail: str) -> dict:
        speeds = [run[engine]["images_per_s"] for run in runs]
        cpu = {k: statistics.median(run[engine]["cpu_ms"][k] for run in runs) for k in runs[0][engine]["cpu_ms"]}
        return {"images_per_s": statistics.median(speeds), "cpu_ms": cpu, "detail": detail}

    ratios = ", ".join(f"{run[2]:.0%} (load {run[3]:.1f})" for run in runs)
    detail = f"median of {len(runs)} runs; local / raw per run: {ratios}, median "
    detail += f"{statistics.median(run[2] for run in runs):.0%}; last run: {runs[-1][1]['detail']}"
    return {"raw": median(0, f"median of {len(runs)} runs, each the mean of one before and one after local"),
            "local": median(1, detail)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(FAMILY), help="study runs (vit-110421, linformer-010522B)")
    parser.add_argument("--images", type=int, default=0, help="catalogue rows (default 1536 vit, 6144 linformer)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="raw, local, raw measurements (medians reported)")
    parser.add_argument("--skip", default="", help="comma-separated engines to skip: ray, http")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "galaxyvit-bench-classify")
    parser.add_argument("--rss", action="store_true", help="only the memory check at 10,000 and 200,000 rows")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.rss:
        rss_check(args.work)
        return 0
    runs = [r.strip() for r in args.models.split(",") if r.strip()]
    home = export_models(args.work, runs)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"{time.strftime('%Y-%m-%d')}, {cores()} cores, batch size {args.batch_size}, load {os.getloadavg()}")
    for run in runs:
        rows = args.images or DEFAULT_IMAGES[run]
        model_dir = args.work / "models" / FAMILY[run]
        catalogue = write_catalogue(args.work, rows)
        files = sorted((args.work / "cutouts-424").glob("*.jpg"))
        results = local_vs_raw(catalogue, model_dir, files, args.work, args.batch_size, rows, args.repeats)
        if "ray" not in skip:
            results["ray"] = bench_ray(catalogue, model_dir, args.work / "out-ray", args.batch_size, rows)
        if "http" not in skip:
            results["http"] = bench_http(home, FAMILY[run], files, rows)
        raw = results["raw"]["images_per_s"]
        local = results["local"]["images_per_s"]
        print(f"\n{run}, {rows} images, batch size {args.batch_size}")
        print("| engine | images/s | vs raw | vs local | CPU ms per image, by process |\n|---|---|---|---|---|")
        for engine, result in results.items():
            speed = result["images_per_s"]
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms"].items())
            print(f"| {engine} | {speed:.1f} | {speed / raw:.0%} | {speed / local:.0%} | {cpu} |")
        for engine, result in results.items():
            if "detail" in result:
                print(f"- {engine}: {result['detail']}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
