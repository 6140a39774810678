"""A real `bentoml serve` against hostile clients (small-scale versions of scripts/hardening_probe.py).

Half-sent and oversized headers, idle connections far beyond the connection cap, slow uploaders, uploads
abandoned mid-body, heavy FITS/TIFF/PNG uploads, a killed inference worker and a graceful shutdown.
Short timeouts keep it quick; what is asserted is behaviour (statuses, counters, bounded memory),
with generous bounds for anything that takes time. Latencies are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest
from serving_fixtures import metric

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from load_tests import hostile
from load_tests.heavy_images import float_tiff, png16, rice_cube
from load_tests.reliability import process_tree
from serving.inference import ENTRY_SERVICE, INFERENCE_SERVICE
from serving.process import ServerProcess

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
MAX_CONNECTIONS = 200
SETTINGS = {
    "models": "vit",
    "intra_op_threads": 1,
    "header_timeout_s": HEADER_TIMEOUT_S,
    "body_timeout_s": BODY_TIMEOUT_S,
    "max_connections": MAX_CONNECTIONS,
}
MiB = 2**20


@pytest.fixture(scope="module")
def guarded(tiny_models, tmp_path_factory):
    home, _ = tiny_models
    with ServerProcess(SETTINGS, store=home, workdir=tmp_path_factory.mktemp("guarded"), ready_timeout=180) as srv:
        yield srv


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes()


def workers(server: ServerProcess, service: str) -> list[psutil.Process]:
    """The server's live worker processes of `service`."""
    found = []
    for process in process_tree(server.pid):
        command = process.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            found.append(process)
    return found


def errors(server: ServerProcess, kind: str) -> float:
    return metric(httpx.get(server.url + "/metrics", timeout=30).text, "galaxyvit_errors_total", kind=kind)


def test_half_sent_headers_and_silent_connections_are_closed(guarded):
    async def main() -> tuple[hostile.Answer, hostile.Answer]:
        bound = HEADER_TIMEOUT_S + 30  # generous: the acceptance figure (+5 s) is in docs/reliability.md
        return await asyncio.gather(
            hostile.send_raw(guarded.port, hostile.half_header(), bound),
            hostile.send_raw(guarded.port, b"", bound),
        )

    before = errors(guarded, "header_timeout")
    half, silent = asyncio.run(main())
    print(f"\nhalf a header: {half.status} after {half.seconds:.1f} s; silent: closed after {silent.seconds:.1f} s")
    assert half.status == 408 and half.body and half.body["kind"] == "header_timeout"
    assert silent.status is None and silent.seconds < HEADER_TIMEOUT_S + 30  # closed, not timed out by us
    assert errors(guarded, "header_timeout") - before == 1


def test_oversized_headers_get_431(guarded):
    async def main() -> list[hostile.Answer]:
        sizes = (64 * 1024, 1024 * 1024, 12 * 1024)
        return await asyncio.gather(*(hostile.send_raw(guarded.port, hostile.big_header(n), 60) for n in sizes))

    huge, larger, fits_in = asyncio.run(main())
    for answer in (huge, larger):
        assert answer.status == 431 and answer.body and answer.body["kind"] == "header_too_large", answer
    assert fits_in.status == 200  # 12 KiB is within the 16 KiB default


def test_idle_connections_cannot_shut_out_health_checks(guarded):
    (api_worker,) = workers(guarded, ENTRY_SERVICE)
    sockets = hostile.open_idle(guarded.port, 5000)
    try:
        answers = [httpx.get(guarded.url + "/livez", timeout=60).status_code for _ in range(5)]
        fds = api_worker.num_fds()
        still = hostile.still_open(sockets)
    finally:
        for s in sockets:
            s.close()
    print(f"\n{len(sockets)} idle connections: /livez {answers}; API worker fds {fds}; {still} still open")
    assert answers == [200] * 5
    assert fds < MAX_CONNECTIONS + 100  # the cap holds: the rest were closed, not piled up
    assert still < len(sockets)


def test_slow_uploaders_get_408_while_a_normal_client_is_served(guarded, jpeg):
    slow_count = 80

    async def main() -> tuple[list[hostile.Answer], list[tuple[int, float]]]:
        slow = [
            asyncio.ensure_future(hostile.slow_upload(guarded.port, "/classify/raw", 100_000, rate=1.0, timeout=120))
            for _ in range(slow_count)
        ]
        normal: list[tuple[int, float]] = []
        async with httpx.AsyncClient(base_url=guarded.url, timeout=60) as client:
            while not all(task.done() for task in slow) or len(normal) < 3:
                start = time.monotonic()
                r = await client.post("/classify/raw", content=jpeg, headers={"Content-Type": "image/jpeg"})
                normal.append((r.status_code, time.monotonic() - start))
                await asyncio.sleep(0.2)
        return [task.result() for task in slow], normal

    slow, normal = asyncio.run(main())
    worst = max(seconds for _, seconds in normal)
    print(
        f"\n{slow_count} slow uploaders: {sorted({a.status for a in slow}, key=str)}; normal client: "
        f"{len(normal)} requests, slowest {worst:.2f} s"
    )
    assert [status for status, _ in normal] == [200] * len(normal)
    assert all(a.status == 408 and a.body and a.body["kind"] == "body_timeout" for a in slow), slow[:3]


def test_abandoned_uploads_are_counted_never_a_500(guarded, jpeg):
    before = errors(guarded, "client_disconnect")
    hostile.abandon_uploads(guarded.port, 50)
    for _ in range(300):  # the server notices each hang-up (bounded wait)
        if errors(guarded, "client_disconnect") - before >= 50:
            break
        time.sleep(0.2)
    for _ in range(75):  # their requests end (BentoML's timeout would hold them 30 s had they sent no answer)
        text = httpx.get(guarded.url + "/metrics", timeout=30).text
        if metric(text, "bentoml_service_request_in_progress", endpoint="/classify/raw") == 0:
            break
        time.sleep(0.2)
    assert metric(text, "bentoml_service_request_in_progress", endpoint="/classify/raw") == 0
    assert metric(text, "galaxyvit_errors_total", kind="client_disconnect") - before == 50
    five_hundreds = [  # answers >= 500 BentoML counted (/readyz was 503 until the server had warmed up)
        line
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_total{")
        and 'http_response_code="5' in line
        and 'endpoint="/readyz"' not in line
        and float(line.rsplit(" ", 1)[1]) > 0
    ]
    assert not five_hundreds, "\n".join(five_hundreds)
    log = guarded.log.read_text(errors="replace")
    assert "Traceback" not in log and log.count("client disconnected during /classify/raw after") == 50
    ok = httpx.post(guarded.url + "/classify/raw", content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert ok.status_code == 200


def test_heavy_images_stay_within_the_memory_budget(guarded):
    pids = {p.pid for p in process_tree(guarded.pid)}
    cube = rice_cube(4096, whole_plane_tiles=True)  # one 4096^2 tile a plane: decoding reads whole planes

    def grow(blobs: list[tuple[bytes, str]]) -> tuple[int, list[int]]:
        before = hostile.rss(pids)
        hostile.reset_peak_rss(pids)

        def send(blob: bytes, content_type: str) -> int:
            r = httpx.post(
                guarded.url + "/classify/raw", content=blob, headers={"Content-Type": content_type}, timeout=120
            )
            return r.status_code

        results: list[int] = []
        threads = [threading.Thread(target=lambda b=b, t=t: results.append(send(b, t))) for b, t in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        return hostile.peak_rss(pids) - before, results

    cubes, statuses = grow([(cube, "image/fits")] * 4)
    print(f"\n4 concurrent 3x4096^2 RICE cubes ({len(cube) / MiB:.1f} MiB each): +{cubes / MiB:.0f} MiB, {statuses}")
    assert statuses == [200] * 4 and cubes < 600 * MiB
    for name, blob, content_type in (
        ("float TIFF", float_tiff(4096), "image/tiff"),
        ("16-bit PNG", png16(4096), "image/png"),
    ):
        grown, statuses = grow([(blob, content_type)])
        print(f"4096^2 {name}: +{grown / MiB:.0f} MiB, {statuses}")
        assert statuses == [200] and grown < 150 * MiB


def test_readyz_answers_503_while_an_inference_worker_is_down(guarded):
    (worker,) = workers(guarded, INFERENCE_SERVICE)
    os.kill(worker.pid, signal.SIGKILL)
    psutil.wait_procs([worker], timeout=30)  # gone or a zombie: either way not a worker any more
    answers: list[tuple[int, float]] = []
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for _ in range(900):  # until the worker BentoML starts in its place has warmed up (bounded)
            start = time.monotonic()
            status = client.get("/readyz").status_code
            answers.append((status, time.monotonic() - start))
            if status == 200:
                break
            time.sleep(0.2)
    slowest = max(seconds for _, seconds in answers)
    print(f"\n/readyz after the kill: {len(answers) - 1} x 503, then {answers[-1][0]}; slowest answer {slowest:.2f} s")
    assert answers[0][0] == 503 and {s for s, _ in answers[:-1]} == {503} and answers[-1][0] == 200
    assert workers(guarded, INFERENCE_SERVICE)[0].pid != worker.pid


def test_shutdown_answers_new_requests_503_while_in_flight_ones_finish(guarded, jpeg):
    """Last in this module: it stops the server."""
    body = jpeg + b"\0" * 100_000  # trailing bytes after the JPEG's end are ignored by the decoder
    result: dict[str, hostile.Answer] = {}
    proceed = threading.Event()

    async def in_flight() -> hostile.Answer:  # an upload that keeps pace, held open until told to finish
        reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
        head = {"Content-Type": "image/jpeg", "Content-Length": str(len(body))}
        writer.write(hostile.request_head("POST", "/classify/raw", head) + body[:2048])
        sent = 2048
        while not proceed.is_set() and sent < len(body) - 4096:
            await asyncio.sleep(0.25)
            writer.write(body[sent : sent + 4096])  # 16 KiB/s: far above min_upload_rate
            sent += 4096
        writer.write(body[sent:])
        answer = hostile.parse_answer(await hostile.read_answer(reader, 60), 0.0)
        writer.close()
        return answer

    uploader = threading.Thread(target=lambda: result.update(upload=asyncio.run(in_flight())))
    uploader.start()
    try:
        for _ in range(300):  # until the server has the upload in flight (bounded)
            text = httpx.get(guarded.url + "/metrics", timeout=30).text
            if metric(text, "bentoml_service_request_in_progress", endpoint="/classify/raw") >= 1:
                break
            time.sleep(0.1)
        guarded.process.send_signal(signal.SIGTERM)
        for _ in range(300):  # until the API worker drains (bounded)
            if httpx.get(guarded.url + "/readyz", timeout=30).status_code == 503:
                break
            time.sleep(0.1)
        refused = httpx.post(guarded.url + "/classify/raw", content=jpeg, headers={"Content-Type": "image/jpeg"})
    finally:
        proceed.set()
        uploader.join(120)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
    assert refused.json()["kind"] == "shutting_down"
    assert result["upload"].status == 200, result
    try:
        guarded.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("bentoml serve still running 60 s after SIGTERM")
    assert guarded.process.returncode == 0
