"""The CPU an HTTP request costs the server before any work: BentoML's own layers against bare uvicorn.

    python benchmarks/http_floor.py [--seconds 12] [--concurrency 16]

Serves do-nothing endpoints in three ways on 127.0.0.1 and loads each with Locust (FastHttpUser, 16 users, as
`galaxyvit loadtest` does), then prints the server's core-ms per request (user + system CPU of its worker
process over the measured window):

  bentoml-api      `bentoml serve` of a @bentoml.api endpoint taking a multipart `images` file (a 424x424 JPEG),
                   answering {"n": 1}: what every request to POST /classify pays before our code runs
  bentoml-mount    `bentoml serve` of a Starlette app mounted with bentoml.asgi_app, taking a 150 KB body
                   (one uint8 224x224x3 crop, as an OIP binary request) and answering 9 bytes: the /v2 routes' floor
  uvicorn-mount    the same Starlette app on bare uvicorn (uvloop, httptools, no access log)

Tracing is off in the BentoML services, as in ours (serving/config.py `tracing`). The numbers depend on the
machine and its load; the load average is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from galaxyvit.paths import REAL_SAMPLE_IMAGES  # noqa: E402
from serving.process import free_port, wait_ready  # noqa: E402

SERVICES = """
import bentoml
from pathlib import Path
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def readyz(request):
    return Response(b"ok")


async def infer(request):
    body = await request.body()
    return Response(b'{"n": %d}' % (len(body) > 0), media_type="application/json")


mounted = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"]), Route("/readyz", readyz)])


@bentoml.service(workers=1, tracing={"excluded_urls": ["."]})
class Api:
    @bentoml.api(route="/classify")
    async def classify(self, images: list[Path]) -> dict:
        return {"n": len(images)}


@bentoml.asgi_app(mounted, path="/")
@bentoml.service(workers=1, tracing={"excluded_urls": ["."]})
class Mount:
    @bentoml.api
    def hello(self) -> str:
        return "ok"
"""

LOCUSTFILE = """
import os
from locust import FastHttpUser, task

JPEG = open(os.environ["FLOOR_JPEG"], "rb").read()
CROP = bytes(224 * 224 * 3)


class User(FastHttpUser):
    @task
    def post(self):
        if os.environ["FLOOR_KIND"] == "bentoml-api":
            self.client.post("/classify", files={"images": ("g.jpg", JPEG, "image/jpeg")})
        else:
            self.client.post("/v2/models/m/infer", data=CROP, headers={"Content-Type": "application/octet-stream"})
"""


def server_command(kind: str, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if kind == "uvicorn-mount":
        return [str(bin_dir / "uvicorn"), "floor_services:mounted", "--port", str(port), "--no-access-log"]
    service = "floor_services:Api" if kind == "bentoml-api" else "floor_services:Mount"
    return [str(bin_dir / "bentoml"), "serve", service, "--port", str(port)]


def measure(kind: str, folder: Path, seconds: float, users: int) -> tuple[float, float]:
    """(requests/s, server core-ms per request) of one kind of server over a Locust run of `seconds`."""
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(folder / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    env.update({"FLOOR_KIND": kind, "FLOOR_JPEG": str(REAL_SAMPLE_IMAGES / "16126.jpg"), "PYTHONPATH": str(folder)})
    command = server_command(kind, port) + ["--host", "127.0.0.1"]
    with open(folder / f"{kind}.log", "wb") as log:
        server = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, 120, folder / f"{kind}.log")
        root = psutil.Process(server.pid)
        workers = [p for p in root.children(recursive=True) if "--worker-id" in " ".join(p.cmdline())] or [root]
        prefix = folder / kind
        locust = [str(Path(sys.executable).parent / "locust"), "-f", str(folder / "floor_locust.py"), "--headless"]
        locust += ["-u", str(users), "-r", str(users), "--host", f"http://127.0.0.1:{port}"]
        locust += ["-t", f"{int(seconds)}s", "--only-summary", "--csv", str(prefix)]
        cpu0, t0 = sum(sum(w.cpu_times()[:2]) for w in workers), time.monotonic()
        subprocess.run(locust, env=env, capture_output=True, timeout=seconds + 60)
        cpu1, t1 = sum(sum(w.cpu_times()[:2]) for w in workers), time.monotonic()
        rows = [r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated"]
        served, failed = float(rows[0]["Request Count"]), float(rows[0]["Failure Count"])
        if failed:
            raise RuntimeError(f"{kind}: {failed:.0f} of {served:.0f} requests failed (see {prefix}_failures.csv)")
        return served / (t1 - t0), (cpu1 - cpu0) * 1000 / max(served, 1)
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12, help="measured window per server (default 12)")
    parser.add_argument("--concurrency", type=int, default=16, help="Locust users (default 16)")
    parser.add_argument("--kinds", default="bentoml-api,bentoml-mount,uvicorn-mount")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-floor-") as tmp:
        folder = Path(tmp)
        (folder / "floor_services.py").write_text(SERVICES)
        (folder / "floor_locust.py").write_text(LOCUSTFILE)
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        print("| server | requests/s | server core-ms per request |\n| --- | --: | --: |")
        for kind in args.kinds.split(","):
            rate, cost = measure(kind, folder, args.seconds, args.concurrency)
            print(f"| {kind} | {rate:.0f} | {cost:.2f} |", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
