"""Where the API process spends its CPU under load: py-spy samples of the API worker while Locust users post
one image per request, as `galaxyvit loadtest` does.

    BENTOML_HOME=/tmp/lt/home python benchmarks/profile_api.py --model linformer --concurrency 16 --seconds 20

Starts the service (serving.process.ServerProcess, defaults but `max_latency_ms` 20000), runs Locust
(load_tests/locustfile.py, POST /classify/raw with one image per request, or multipart /classify with
--images-per-request K), and over the measured window records the API worker with `py-spy record
--nonblocking --gil` (it never pauses the worker, and samples only the thread holding the GIL: Python code
and the C code it calls with the GIL held, such as the event loop's; not idle waits, nor decoding that
releases the GIL) and its CPU time. Prints the images served, the API core-ms
per image, and the functions with the most samples: self (the function itself) and total (it or what it
calls). Writes the raw samples to --out. Needs py-spy (dev extra) and permission to read the worker's
memory (same user). Numbers depend on the machine and its load: note the load average printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.reliability import process_tree  # noqa: E402
from serving.inference import ENTRY_SERVICE, INFERENCE_SERVICE  # noqa: E402
from serving.process import ServerProcess  # noqa: E402


def service_worker(server: ServerProcess, service: str = ENTRY_SERVICE) -> psutil.Process:
    """The (first) worker process of `service` (the API: ENTRY_SERVICE, inference: INFERENCE_SERVICE)."""
    for process in process_tree(server.pid):
        command = process.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            return process
    raise RuntimeError(f"no {service} worker found")


def served_images(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("galaxyvit_predictions_total{")
    )


# the frames every sample of a thread starts with (the worker's start-up, the event loop, thread pools)
ROOT_FRAMES = ("<frozen runpy>", "click/core.py", "threading.py", "asyncio/runners.py", "uvicorn/server.py")
ROOT_FRAMES += ("uvicorn/_compat.py", "_bentoml_impl/worker/service.py", "process ", "thread ")


def top(samples: Counter[str], n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self, total) shares of the `n` functions with the most samples, from py-spy's collapsed stacks
    (total leaves out the frames every stack starts with)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for stack, count in samples.items():
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(root in frame for root in ROOT_FRAMES):
                total[frame] += count
    whole = sum(samples.values()) or 1
    return (
        [(f, c / whole) for f, c in own.most_common(n)],
        [(f, c / whole) for f, c in total.most_common(n)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="linformer")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--protocol", default="", help="what the users post (load_tests/locustfile.py PROTOCOLS)")
    parser.add_argument(
        "--all-threads", action="store_true", help="sample every running thread, not only the one holding the GIL"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/profile-api"))
    parser.add_argument("--inference", action="store_true", help="sample the inference worker instead of the API's")
    parser.add_argument("--no-samples", action="store_true", help="only the images/s and core-ms, without py-spy")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    settings = {"models": args.model, "max_latency_ms": 20000}
    with ServerProcess(settings, log=args.out / "server.log") as server:
        worker, inference = service_worker(server), service_worker(server, INFERENCE_SERVICE)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GALAXYVIT_LOADTEST_MODEL": args.model}
        env["GALAXYVIT_LOADTEST_IMAGES"] = str(args.images_per_request)
        env["GALAXYVIT_LOADTEST_PROTOCOL"] = args.protocol
        locust = subprocess.Popen(
            [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "load_tests" / "locustfile.py")]
            + ["--headless", "-u", str(args.concurrency), "-r", str(args.concurrency), "--host", server.url]
            + ["-t", f"{int(args.warmup + args.seconds + 5)}s", "--only-summary"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(args.warmup)
            images0, cpu0, t0 = served_images(server.url), sum(worker.cpu_times()[:2]), time.monotonic()
            inference0 = sum(inference.cpu_times()[:2])
            raw = args.out / "api-samples.txt"
            if args.no_samples:
                time.sleep(args.seconds)
            else:
                subprocess.run(
                    [
                        str(py_spy),
                        "record",
                        "--pid",
                        str((inference if args.inference else worker).pid),
                        "--duration",
                        str(int(args.seconds)),
                    ]
                    + ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(raw)]
                    + ([] if args.all_threads else ["--gil"]),
                    check=True,
                    capture_output=True,
                    timeout=args.seconds + 60,
                )
            images1, cpu1, t1 = served_images(server.url), sum(worker.cpu_times()[:2]), time.monotonic()
            inference1 = sum(inference.cpu_times()[:2])
        finally:
            locust.terminate()
            locust.wait(30)
    images = images1 - images0
    print(f"load average {os.getloadavg()[0]:.1f}; {images:.0f} images in {t1 - t0:.1f} s = {images / (t1 - t0):.1f}/s")
    print(f"API worker: {(cpu1 - cpu0) * 1000 / max(images, 1):.2f} core-ms per image")
    print(f"inference worker: {(inference1 - inference0) * 1000 / max(images, 1):.2f} core-ms per image")
    if args.no_samples:
        return 0
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples[stack] += int(count)
    own, total = top(samples, args.top)
    print("\nself    function")
    for name, share in own:
        print(f"{share:6.1%}  {name}")
    print("\ntotal   function")
    for name, share in total:
        print(f"{share:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
