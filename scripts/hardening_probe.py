"""Full-scale hostile-client probe of a real `bentoml serve` with the default settings (docs/reliability.md).

What tests/test_hardening.py checks at small scale, at the sizes of the original probe: four concurrent
3 x 4096^2 RICE-compressed FITS cubes (and 4096^2 float TIFF, 16-bit PNG, 2-D RICE image, float64 cube),
80 uploaders at 1 byte/s beside a normal client, half-sent and huge headers, 5,000 and 19,000 idle
connections, 50 uploads abandoned mid-body, a killed inference worker, and a graceful shutdown.
Memory is the growth of the sum of the server processes' resident-memory high-water marks (Linux
/proc, reset before each case) over their resident memory before it.

Exports a tiny random-weight ViT into a temporary BentoML home and starts its own server on
127.0.0.1 (stopped by PID). Prints a report; --json writes the figures.

    python scripts/hardening_probe.py --json hardening.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from astropy.io import fits

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from load_tests import hostile
from load_tests.heavy_images import float_tiff, galaxy_plane, png16, rice_cube
from load_tests.reliability import process_tree
from serving.process import ServerProcess
from training.random_models import export_random_models

MiB = 2**20
TOO_LARGE = "header_too_large"


def workers(pid: int, service: str) -> list:
    found = []
    for process in process_tree(pid):
        command = process.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            found.append(process)
    return found


def post_timed(url: str, blob: bytes, content_type: str, answers: list[tuple[int, float]]) -> None:
    start = time.monotonic()
    r = httpx.post(url + "/classify/raw", content=blob, headers={"Content-Type": content_type}, timeout=120)
    answers.append((r.status_code, time.monotonic() - start))


def heavy(server: ServerProcess, report: dict) -> None:
    side = 4096
    plane = galaxy_plane(side)
    rice_2d, float64_cube = io.BytesIO(), io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(plane, compression_type="RICE_1")]).writeto(rice_2d)
    cube64 = np.stack([plane, plane, plane]).astype(np.float64)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cube64, compression_type="GZIP_1")]).writeto(float64_cube)
    cases = [
        ("4 x RICE cube 3x4096^2, row tiles", [rice_cube(side)] * 4, "image/fits"),
        ("4 x RICE cube 3x4096^2, one tile a plane", [rice_cube(side, whole_plane_tiles=True)] * 4, "image/fits"),
        ("RICE image 4096^2", [rice_2d.getvalue()], "image/fits"),
        ("float64 cube 3x4096^2 (GZIP)", [float64_cube.getvalue()], "image/fits"),
        ("float TIFF 4096^2", [float_tiff(side)], "image/tiff"),
        ("16-bit PNG 4096^2", [png16(side)], "image/png"),
    ]
    pids = {p.pid for p in process_tree(server.pid)}
    for name, blobs, content_type in cases:
        before = hostile.rss(pids)
        hostile.reset_peak_rss(pids)
        answers: list[tuple[int, float]] = []
        args = [(server.url, b, content_type, answers) for b in blobs]
        threads = [threading.Thread(target=post_timed, args=a) for a in args]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        grown = (hostile.peak_rss(pids) - before) / MiB
        row = {
            "upload_MiB": round(len(blobs[0]) / MiB, 2),
            "statuses": sorted(s for s, _ in answers),
            "slowest_s": round(max(s for _, s in answers), 2),
            "rss_growth_MiB": round(grown),
        }
        report.setdefault("heavy", {})[name] = row
        print(f"{name}: {row}", flush=True)


async def slow_and_normal(server: ServerProcess, jpeg: bytes, count: int = 80) -> dict:
    slow = [
        asyncio.ensure_future(hostile.slow_upload(server.port, "/classify/raw", 1_000_000, rate=1.0, timeout=120))
        for _ in range(count)
    ]
    normal: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        while not all(task.done() for task in slow):
            start = time.monotonic()
            r = await client.post("/classify/raw", content=jpeg, headers={"Content-Type": "image/jpeg"})
            normal.append((r.status_code, time.monotonic() - start))
            await asyncio.sleep(0.25)
    answers = [task.result() for task in slow]
    return {
        "slow_statuses": sorted({str(a.status) for a in answers}),
        "slow_answered_after_s": [round(min(a.seconds for a in answers), 1), round(max(a.seconds for a in answers), 1)],
        "normal_requests": len(normal),
        "normal_statuses": sorted({s for s, _ in normal}),
        "normal_slowest_s": round(max(s for _, s in normal), 2),
    }


def headers_and_connections(server: ServerProcess, report: dict) -> None:
    half = asyncio.run(hostile.send_raw(server.port, hostile.half_header(), 120))
    big = asyncio.run(hostile.send_raw(server.port, hostile.big_header(64 * 1024), 60))
    report["half_header"] = {"status": half.status, "closed_after_s": round(half.seconds, 1)}
    report["header_64KiB"] = {"status": big.status}
    pids = {p.pid for p in process_tree(server.pid)}
    before = hostile.rss(pids)
    hostile.reset_peak_rss(pids)
    refused = hostile.metric_total(httpx.get(server.url + "/metrics").text, "galaxyvit_errors_total", kind=TOO_LARGE)
    huge = asyncio.run(hostile.send_raw(server.port, hostile.big_header(128 * 1024 * 1024), 120))
    refused = (
        hostile.metric_total(httpx.get(server.url + "/metrics").text, "galaxyvit_errors_total", kind=TOO_LARGE)
        - refused
    )
    report["header_128MB"] = {
        "client_saw": huge.status or "reset while sending",
        "server_431": refused,
        "rss_growth_MiB": round((hostile.peak_rss(pids) - before) / MiB),
    }
    print(f"headers: {report['half_header']}, 64 KiB {big.status}, 128 MB {report['header_128MB']}", flush=True)
    (api_worker,) = workers(server.pid, "galaxyvit")
    for count in (5000, 19000):
        sockets = hostile.open_idle(server.port, count)
        try:
            livez = []
            for _ in range(5):
                start = time.monotonic()
                status = httpx.get(server.url + "/livez", timeout=60).status_code
                livez.append((status, round(time.monotonic() - start, 2)))
            row = {"livez": livez, "api_worker_fds": api_worker.num_fds(), "still_open": hostile.still_open(sockets)}
        finally:
            for s in sockets:
                s.close()
        report[f"idle_{count}"] = row
        print(f"{count} idle connections: {row}", flush=True)


def abandon_and_count(server: ServerProcess) -> dict:
    before = hostile.metric_total(httpx.get(server.url + "/metrics").text, "galaxyvit_errors_total")
    hostile.abandon_uploads(server.port, 50)
    time.sleep(5)
    text = httpx.get(server.url + "/metrics", timeout=30).text
    log = server.log.read_text(errors="replace")
    return {
        "client_disconnect": hostile.metric_total(text, "galaxyvit_errors_total", kind="client_disconnect"),
        "other_errors": hostile.metric_total(text, "galaxyvit_errors_total")
        - before
        - hostile.metric_total(text, "galaxyvit_errors_total", kind="client_disconnect"),
        "log_lines": log.count("client disconnected during"),
        "tracebacks": log.count("Traceback"),
    }


def kill_inference_worker(server: ServerProcess) -> dict:
    import psutil

    (worker,) = workers(server.pid, "galaxyvit_models")
    os.kill(worker.pid, signal.SIGKILL)
    psutil.wait_procs([worker], timeout=30)
    answers, start = [], time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() - start < 300:
            t0 = time.monotonic()
            status = client.get("/readyz").status_code
            answers.append((status, time.monotonic() - t0))
            if status == 200:
                break
            time.sleep(0.2)
    not_ready = [s for status, s in answers if status == 503]
    return {
        "503_answers": len(not_ready),
        "slowest_503_s": round(max(not_ready), 3) if not_ready else None,
        "ready_again_after_s": round(time.monotonic() - start, 1),
        "final": answers[-1][0],
    }


def shutdown(server: ServerProcess, jpeg: bytes) -> dict:
    """SIGTERM with one upload in flight (kept open at 16 KiB/s): new requests 503, the upload finishes."""
    body = jpeg + b"\0" * 200_000
    proceed, result = threading.Event(), {}

    async def upload() -> hostile.Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = {"Content-Type": "image/jpeg", "Content-Length": str(len(body))}
        writer.write(hostile.request_head("POST", "/classify/raw", head) + body[:4096])
        sent = 4096
        while not proceed.is_set() and sent < len(body) - 4096:
            await asyncio.sleep(0.25)
            writer.write(body[sent : sent + 4096])
            sent += 4096
        writer.write(body[sent:])
        answer = hostile.parse_answer(await hostile.read_answer(reader, 60), 0.0)
        writer.close()
        return answer

    thread = threading.Thread(target=lambda: result.update(upload=asyncio.run(upload())))
    thread.start()
    time.sleep(2)
    server.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()
    refused = []
    for _ in range(20):
        try:
            r = httpx.post(server.url + "/classify/raw", content=jpeg, headers={"Content-Type": "image/jpeg"})
            refused.append((r.status_code, r.headers.get("retry-after"), r.json().get("kind")))
        except httpx.HTTPError as exc:
            refused.append((type(exc).__name__, None, None))
        time.sleep(0.1)
    proceed.set()
    thread.join(120)
    server.process.wait(60)
    return {
        "new_requests": sorted({str(r) for r in refused}),
        "in_flight_upload": result["upload"].status,
        "exit_code": server.process.returncode,
        "exited_after_s": round(time.monotonic() - sent_at, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    args = parser.parse_args()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    jpeg = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes()
    with tempfile.TemporaryDirectory(prefix="galaxyvit-probe-") as tmp:
        base = Path(tmp)
        print("exporting tiny models...", flush=True)
        export_random_models(base, base / "bentoml_home", ("vit",), tiny=True)
        settings = {"models": "vit", "intra_op_threads": 1}  # else the default settings
        server = ServerProcess(
            settings, store=base / "bentoml_home", workdir=base / "run", log=args.log, ready_timeout=300
        )
        with server:
            heavy(server, report)
            report["slow_uploaders"] = asyncio.run(slow_and_normal(server, jpeg))
            print(f"80 slow uploaders: {report['slow_uploaders']}", flush=True)
            headers_and_connections(server, report)
            report["abandoned"] = abandon_and_count(server)
            print(f"50 abandoned uploads: {report['abandoned']}", flush=True)
            report["killed_inference_worker"] = kill_inference_worker(server)
            print(f"killed inference worker: {report['killed_inference_worker']}", flush=True)
            report["shutdown"] = shutdown(server, jpeg)
            print(f"shutdown: {report['shutdown']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
