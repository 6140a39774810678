"""`galaxyvit loadtest`: a short real sweep against a service on 127.0.0.1, its report, and its refusals."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests import sweep
from serving.client import multipart
from training.random_models import export_random

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.configure(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """A BentoML home holding one tiny exported ViT, galaxyvit-vit."""
    base = tmp_path_factory.mktemp("loadtest-models")
    home = base / "bentoml_home"
    export_random("vit", base, home, tiny=True)
    return home


def test_short_sweep_writes_table_and_plot_without_errors(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tiny_store))
    out = tmp_path / "report"
    args = parse(
        ["--start", "--models", "vit", "--concurrency", "1,2", "--duration", "3", "--warmup", "1"]
        + ["--engine-seconds", "0.5", "--max-latency-ms", "20000", "--out", str(out)]
    )
    assert sweep.main(args) == 0

    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    assert data["settings"]["max_latency_ms"] == 20000  # passed on to the service it started
    points = data["points"]
    assert [(p["model"], p["concurrency"]) for p in points] == [("vit", 1), ("vit", 2)]
    for p in points:
        assert p["requests"] > 0 and p["failures"] == 0 and p["failure_messages"] == []
        assert p["img_s"] == pytest.approx(p["req_s"])  # one image per request, none failed
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
        assert p["provider"] == "CPUExecutionProvider" and p["variant"] == "fp32" and p["family"] == "vit"
        # the service's own count of images in the window matches Locust's count up to the requests in flight
        images = p["mean_batch"] * p["batches"]
        assert p["mean_batch"] >= 1 and abs(images - p["requests"]) <= 2 * p["concurrency"] + 0.1 * p["requests"]
        assert p["engine_batch"] == max(1, round(p["mean_batch"])) and p["engine_img_s"] > 0
        assert p["efficiency"] == pytest.approx(p["img_s"] / p["engine_reference"])  # before and after the point
        assert (out / "raw" / f"vit-raw-c{p['concurrency']}_stats.csv").is_file()
        # where the CPU went: every process of the service and the client worked, within the machine's cores
        assert p["cpu_ms_api"] > 0 and p["cpu_ms_inference"] > 0 and p["cpu_ms_client"] > 0
        # the bare engine's own CPU per image is part of what the service's inference process spends
        assert 0 < p["engine_cpu_ms"] < p["cpu_ms_inference"]
        assert 0 < p["cores_used"] <= data["machine"]["cores"] * 1.1

    table = (out / "results.md").read_text()
    header = "| model | variant | provider | protocol | run | concurrency | img/req | req/s | img/s | p50 ms | p95 ms"
    assert header in table
    for n in (1, 2):  # `*` flags a p99 latency long compared with the window
        assert re.search(rf"^\| vit \(vit\) \| fp32 \| CPU \| raw \| 1 \| {n}\*? \| 1 \| ", table, re.M)
    assert f"{data['machine']['cores']} cores" in table
    assert "| CPU ms/img API / inference / client / engine | cores |" in table
    png = (out / "loadtest.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.parametrize("url", ["http://10.0.0.5:3000", "http://example.com:3000", "http://0.0.0.0:3000"])
def test_non_loopback_targets_are_refused(url, tmp_path, capsys):
    assert sweep.main(parse(["--url", url, "--out", str(tmp_path / "r")])) == 2
    assert "only loopback targets are allowed" in capsys.readouterr().err


def test_loopback_urls_are_accepted():
    assert sweep.check_loopback("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert sweep.check_loopback("http://localhost:8080") == "http://localhost:8080"
    assert sweep.check_loopback("http://[::1]:3000") == "http://[::1]:3000"
    with pytest.raises(sweep.LoadTestError, match="http://HOST:PORT"):
        sweep.check_loopback("ftp://127.0.0.1/")


def test_service_settings_need_start(tmp_path, capsys):
    args = parse(["--url", "http://127.0.0.1:9", "--max-batch-size", "8", "--out", str(tmp_path / "r")])
    assert sweep.main(args) == 2
    assert "--max-batch-size" in capsys.readouterr().err


def test_multipart_body_parses_as_a_form():
    """The locustfile's hand-made multipart body (FastHttpUser has no files=) is what a form parser reads."""
    from starlette.requests import Request

    images = [b"\xff\xd8first\r\n--not-a-boundary", b"\xff\xd8second"]
    body, content_type = multipart(images, "linformer")

    async def read() -> tuple[list[bytes], str]:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}
        form = await Request(scope, receive).form()
        return [await f.read() for f in form.getlist("images")], form["model"]

    got, model = asyncio.run(read())
    assert got == images and model == "linformer"


def test_sweep_does_not_import_locust():
    """Importing Locust monkey-patches the process for gevent: only the load_tests.point subprocess may do it."""
    code = "import sys, load_tests.sweep, load_tests.report, load_tests.engine, load_tests.payloads; "
    code += "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'locust imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_every_protocol_repeated_gives_medians_and_yardsticks_around_each_point(tiny_store, tmp_path, monkeypatch):
    """Each protocol's Locust user against a real service: every request answered with its image's label, the
    engine measured before and after each point, and a table of medians over the runs."""
    monkeypatch.setenv("BENTOML_HOME", str(tiny_store))
    out = tmp_path / "report"
    protocols = ["classify", "raw", "oip-json", "oip-binary", "oip-bytes"]
    args = parse(
        ["--models", "vit", "--concurrency", "2", "--duration", "2", "--warmup", "1", "--repeat", "2"]
        + ["--protocols", ",".join(protocols), "--engine-seconds", "0.3", "--out", str(out)]
    )
    assert sweep.main(args) == 0
    data = json.loads((out / "results.json").read_text())
    points = data["points"]
    assert [(p["protocol"], p["run"]) for p in points] == [(p, r) for r in (1, 2) for p in protocols]
    for p in points:
        assert p["requests"] > 0 and p["failures"] == 0, p["failure_messages"]
        assert p["engine_before_img_s"] > 0 and p["engine_img_s"] > 0 and p["cpu_ms_api"] > 0
        if p["engine_before_batch"] == p["engine_batch"]:
            assert p["engine_reference"] == pytest.approx((p["engine_before_img_s"] + p["engine_img_s"]) / 2)
        assert p["efficiency"] == pytest.approx(p["img_s"] / p["engine_reference"])
        assert p["load_before"] >= 0 and p["load_after"] >= 0
    table = (out / "results.md").read_text()
    assert "## Medians over the runs" in table
    for protocol in protocols:
        assert re.search(rf"^\| vit \| {protocol} \| 2 \| 1 \| 2 \| ", table, re.M), protocol


def test_protocol_options_are_checked(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert sweep.main(parse(["--url", "http://127.0.0.1:9", "--protocols", "grpc", "--out", out])) == 2
    assert "unknown protocol(s) grpc" in capsys.readouterr().err
    args = ["--url", "http://127.0.0.1:9", "--protocols", "raw", "--images-per-request", "2", "--out", out]
    assert sweep.main(parse(args)) == 2
    assert "one image per request" in capsys.readouterr().err


def test_oip_bodies_are_what_the_service_reads():
    """The load test's Open Inference Protocol bodies parse with the service's own codec into the crops."""
    from load_tests.payloads import crop_pool, oip_bodies
    from serving.oip_codec import HEADER_LENGTH, read_inputs, split_body

    prep = json.dumps({"crop": 64, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    crops = crop_pool(prep)
    for binary in (False, True):
        body, headers = oip_bodies(prep, 32, 3, binary)[1]
        header, rest = split_body(body, headers.get(HEADER_LENGTH.title()))
        (tensor,) = read_inputs(header, rest).values()
        assert tensor.name == "images" and tensor.shape == (3, 32, 32, 3)
        assert [bytes(row.tobytes()) for row in tensor.value] == [crops[1], crops[2], crops[3]]
        assert header.get("parameters", {}).get("binary_data_output", False) is binary
