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
  raw     one ONNX Runtime session (inference.runtime.load_model, the service's settings) fed
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
from functools import partial
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.job import classify_catalogue, cores  # noqa: E402
from galaxyvit.preprocess import eval_batch  # noqa: E402
from inference.runtime import load_model  # noqa: E402
from serving.client import multipart  # noqa: E402
from serving.process import free_port  # noqa: E402

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
    cpu = {"main (ORT, rows, shards)": 1000 * f["main_cpu_s"] / rows, "decode process": 1000 * f["decode_cpu_s"] / rows}
    detail = f"main waited {f['wait_decode_s']:.1f} s for decoding, {f['infer_s']:.1f} s in ORT, "
    detail += f"{f['write_s']:.1f} s rows+shards, of {f['wall_s']:.1f} s; {f['decode_workers']} decode process(es); "
    steady = (rows - f["batch_size"]) / (f["wall_s"] - f["first_batch_s"])
    detail += f"start-up to the first batch {f['first_batch_s']:.1f} s, {steady:.1f} images/s after it"
    return {"images_per_s": summary.images_per_s, "cpu_ms": cpu, "detail": detail}


def ray_role(command: str) -> str:
    roles = {"decode_stage": "ray decode tasks", "Classifier": "ray inference actor", "bench_classify": "driver"}
    roles.update(dict.fromkeys(("raylet", "gcs_server", "dashboard", "log_monitor"), "ray services"))
    return next((role for key, role in roles.items() if key in command), "ray other workers")


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
    cpu = {k: 1000 * v / rows for k, v in sorted(spent.items())}
    return {"images_per_s": rows / summary.seconds, "cpu_ms": cpu, "detail": detail}


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


def measured(engines: dict, raw, repeats: int) -> dict:
    """raw, then each of `engines` (name -> a function measuring it), then raw again, `repeats` times; a run whose
    local result is above its raw (> 100%: the load changed under it) is invalid and measured again (at most
    twice). Each engine's median images/s, CPU ms and ratios to raw and to local over the runs."""
    runs: list[dict] = []
    for repeat in range(repeats):
        for _attempt in range(3):
            load = os.getloadavg()[0]
            before = raw()
            run = {name: measure() for name, measure in engines.items()}
            after = raw()
            run["raw"] = {
                "images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
                "cpu_ms": {k: (before["cpu_ms"][k] + after["cpu_ms"][k]) / 2 for k in before["cpu_ms"]},
            }
            for result in run.values():
                result["vs_raw"] = result["images_per_s"] / run["raw"]["images_per_s"]
                result["vs_local"] = result["images_per_s"] / run["local"]["images_per_s"]
            line = (
                f"  run {repeat + 1}: load {load:.1f}, raw {before['images_per_s']:.1f} and {after['images_per_s']:.1f}"
            )
            line += "".join(f", {k} {v['images_per_s']:.1f} ({v['vs_raw']:.0%})" for k, v in run.items() if k != "raw")
            valid = run["local"]["vs_raw"] <= 1
            print(line + (" images/s" if valid else ": invalid (local above raw), measuring again"), flush=True)
            if valid:
                break
        runs.append({**run, "load": load})
    results = {}
    for name in ["raw", *engines]:
        cpu = {k: statistics.median(r[name]["cpu_ms"][k] for r in runs) for k in runs[0][name]["cpu_ms"]}
        results[name] = {
            key: statistics.median(r[name][key] for r in runs) for key in ("images_per_s", "vs_raw", "vs_local")
        }
        results[name]["cpu_ms"] = cpu
    loads = ", ".join(f"{r['load']:.1f}" for r in runs)
    results["raw"]["detail"] = f"medians of {len(runs)} runs (1-minute load average before each: {loads})"
    results["local"]["detail"] = runs[-1]["local"]["detail"] + " (last run)"
    return results


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
        local = partial(bench_local, catalogue, model_dir, args.work / "out-local", args.batch_size, rows)
        ray = partial(bench_ray, catalogue, model_dir, args.work / "out-ray", args.batch_size, rows)
        engines = {"local": local} if "ray" in skip else {"local": local, "ray": ray}
        results = measured(engines, partial(bench_raw, model_dir, files, args.batch_size, rows), args.repeats)
        if "http" not in skip:
            results["http"] = bench_http(home, FAMILY[run], files, rows)
            for ratio, base in (("vs_raw", "raw"), ("vs_local", "local")):
                results["http"][ratio] = results["http"]["images_per_s"] / results[base]["images_per_s"]
        print(f"\n{run}, {rows} images, batch size {args.batch_size}")
        print("| engine | images/s | vs raw | vs local | CPU ms per image, by process |\n|---|---|---|---|---|")
        for engine, result in results.items():
            speed = result["images_per_s"]
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms"].items())
            print(f"| {engine} | {speed:.1f} | {result['vs_raw']:.0%} | {result['vs_local']:.0%} | {cpu} |")
        for engine, result in results.items():
            if "detail" in result:
                print(f"- {engine}: {result['detail']}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
