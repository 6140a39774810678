"""Soak test: saturation load for a bounded time against a real `bentoml serve` on 127.0.0.1.

Closed-loop clients (default 12) send a mix of requests back to back for --duration seconds
(default 600): single images to /classify/raw and 1-4 image forms to /classify, over every model,
in JPEG (the real GZ2 samples), PNG and FITS, plus 1 in 20 deliberately bad uploads (a 4xx is the
right answer there). Every --interval seconds a row shows throughput, answers by class, latency of
the successful requests and the RSS of all server processes; optionally a PNG plot (--png).

Errors are 5xx answers other than a deliberate 503 with Retry-After, transport errors (refused,
reset, timeout) and any unexpected status. Targets: 0 errors, RSS growth < 5% after the warm-up
(--warmup, default 60 s). Exit status 0 when both are met.

Without --url it exports three tiny random-weight models (training.random_models) into a temporary
BentoML home and starts its own server (serving.process.ServerProcess, stopped by PID at the end).

    python scripts/soak.py --duration 600 --png soak.png
    python scripts/soak.py --duration 60 --url http://127.0.0.1:3000 --pid 1234
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from load_tests.reliability import Sample, hammer, percentiles, tree_rss, worker_pids
from serving.process import ServerProcess
from training.random_models import FAMILIES, export_random_models

REAL_SAMPLES = REAL_SAMPLE_IMAGES
MODEL_NAMES = tuple(FAMILIES)  # vit, linformer, vitbase
RSS_TARGET = 0.05


def upload_mix(seed: int = 0) -> tuple[list[tuple[str, bytes]], bytes]:
    """(content type, bytes) of good uploads, and one bad (truncated) upload."""
    rng = np.random.default_rng(seed)
    good = [("image/jpeg", p.read_bytes()) for p in sorted(REAL_SAMPLES.glob("*.jpg"))]
    if not good:
        raise SystemExit(f"the real GZ2 samples are missing from {REAL_SAMPLES}")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(buf, format="PNG")
    good.append(("image/png", buf.getvalue()))
    cube = io.BytesIO()
    fits.PrimaryHDU(rng.normal(1.0, 0.2, (3, 128, 128)).astype(np.float32)).writeto(cube)
    good.append(("image/fits", cube.getvalue()))
    return good, good[0][1][: len(good[0][1]) // 3]


def request_maker(models: list[str]):
    good, bad = upload_mix()

    def make(k: int):
        model = models[k % len(models)]
        if k % 20 == 19:
            return "POST", "/classify/raw", {"content": bad, "headers": {"Content-Type": "image/jpeg"}}
        if k % 2:
            content_type, blob = good[k % len(good)]
            return "POST", f"/classify/raw?model={model}", {"content": blob, "headers": {"Content-Type": content_type}}
        files = [("images", good[(k + i) % len(good)][1]) for i in range(1 + k % 4)]
        return "POST", "/classify", {"files": files, "data": {"model": model}}

    return make


def classify(sample: Sample) -> str:
    """ok, shed (a deliberate 429/503 with Retry-After), bad_input (the right 4xx) or error."""
    if sample.status == 200:
        return "ok"
    if (
        sample.status in (429, 503)
        and sample.retry_after
        and ("overloaded" in sample.error or "unavailable" in sample.error)
    ):
        return "shed"
    if sample.status == 400 and "corrupt_image" in sample.error:
        return "bad_input"  # the deliberately truncated upload: the right answer
    return "error"


def soak(url: str, pid: int | None, args: argparse.Namespace, models: list[str]) -> int:
    samples: list[Sample] = []
    done = threading.Event()
    t0 = time.monotonic()

    def load() -> None:
        try:
            hammer(
                url, args.clients, request_maker(models), duration=args.duration, timeout=60, on_sample=samples.append
            )
        finally:
            done.set()

    pids = worker_pids(pid) if pid else set()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    rows = []
    header = ("t (s)", 6), ("req/s", 7), ("ok", 7), ("shed", 5), ("4xx ok", 6), ("errors", 6), ("p50 ms", 7)
    print(" ".join(f"{name:>{width}}" for name, width in (*header, ("p99 ms", 7), ("RSS MiB", 8))))
    seen, last_t = 0, t0
    next_at = t0 + args.interval
    while True:
        finished = done.wait(timeout=max(0.0, next_at - time.monotonic()))
        now = time.monotonic()
        window = samples[seen:]
        seen += len(window)
        kinds = [classify(s) for s in window]
        p50, p99 = percentiles([s.latency for s, k in zip(window, kinds) if k == "ok"])
        rss = tree_rss(pid) / 2**20 if pid else float("nan")
        row = {
            "t": now - t0,
            "rate": len(window) / max(1e-9, now - last_t),
            "ok": kinds.count("ok"),
            "shed": kinds.count("shed"),
            "bad_input": kinds.count("bad_input"),
            "errors": kinds.count("error"),
            "p50": p50,
            "p99": p99,
            "rss": rss,
        }
        rows.append(row)
        print(
            f"{row['t']:6.0f} {row['rate']:7.1f} {row['ok']:7d} {row['shed']:5d} {row['bad_input']:6d} "
            f"{row['errors']:6d} {p50:7.0f} {p99:7.0f} {rss:8.1f}",
            flush=True,
        )
        next_at += args.interval
        last_t = now
        if finished:
            break
    thread.join()

    kinds = [classify(s) for s in samples]
    errors = [s for s, k in zip(samples, kinds) if k == "error"]
    ok_lat = [s.latency for s, k in zip(samples, kinds) if k == "ok"]
    p50, p90, p99 = percentiles(ok_lat, (50, 90, 99))
    duration = time.monotonic() - t0
    print(f"\n{len(samples)} requests in {duration:.0f} s ({len(samples) / duration:.1f}/s), {args.clients} clients")
    print(
        f"ok {kinds.count('ok')}, shed {kinds.count('shed')}, bad input refused {kinds.count('bad_input')}, "
        f"errors {len(errors)}"
    )
    print(f"latency of successful requests: p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms")
    for s in errors[:10]:
        print(f"ERROR status={s.status} {s.error[:200]}")
    passed = not errors
    if pid:
        after_warmup = [r["rss"] for r in rows if r["t"] >= args.warmup] or [r["rss"] for r in rows]
        k = max(1, min(3, len(after_warmup) // 10))  # RSS is noisy (allocator, GC): median of a few samples each end
        base, last, peak = float(np.median(after_warmup[:k])), float(np.median(after_warmup[-k:])), max(after_warmup)
        growth = (last - base) / base
        restarted = worker_pids(pid) != pids
        print(
            f"RSS (all server processes, median of {k} samples): {base:.1f} MiB after {args.warmup:.0f} s warm-up -> "
            f"{last:.1f} MiB at the end; growth {growth * 100:+.2f}% (target < {RSS_TARGET:.0%}), peak {peak:.1f}"
        )
        print(f"worker restarted: {restarted}")
        passed = passed and growth < RSS_TARGET and not restarted
    if args.png:
        plot(rows, args.png, args.warmup)
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def plot(rows: list[dict], path: str, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, [r["rss"] for r in rows], marker=".")
    ax1.axvline(warmup, color="grey", linestyle="--", label="end of warm-up")
    ax1.set_ylabel("RSS of server processes (MiB)")
    ax1.legend()
    ax2.plot(t, [r["rate"] for r in rows], label="requests/s")
    ax2.plot(t, [r["errors"] for r in rows], label="errors", color="red")
    ax2.set_xlabel("time (s)")
    ax2.legend()
    fig.suptitle("galaxyvit soak test")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=12, help="concurrent closed-loop clients (default 12)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline (default 60)")
    parser.add_argument("--interval", type=float, default=10, help="seconds per report row (default 10)")
    parser.add_argument("--png", default=None, help="write a plot of RSS and throughput over time here")
    parser.add_argument("--url", default=None, help="load a running server instead of starting one")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's PID, for RSS")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="models to request (default: all three)")
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 24 * 3600:
        parser.error("--duration must be in (0, 86400] seconds")
    models = [m for m in args.models.split(",") if m]
    if args.url:
        return soak(args.url, args.pid, args, models)
    with tempfile.TemporaryDirectory(prefix="galaxyvit-soak-") as tmp:
        base = Path(tmp)
        print("exporting tiny models...", flush=True)
        export_random_models(base, base / "bentoml_home", MODEL_NAMES, tiny=True)
        settings = {"models": MODEL_NAMES, "intra_op_threads": 1}
        with ServerProcess(settings, store=base / "bentoml_home", workdir=base / "run", ready_timeout=180) as server:
            return soak(server.url, server.pid, args, models)


if __name__ == "__main__":
    sys.exit(main())
