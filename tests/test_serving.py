"""The service's routes in one process, and through a real `bentoml serve` what needs its worker processes.

In one process: `serving.deployment.build(config).to_asgi()` under Starlette's TestClient, with the three
tiny exported models in ONNX Runtime behind the routes (the inference service runs as a local instance).
Through `bentoml serve` (the shared `server` fixture): concurrent requests batched across processes and
/metrics merged from them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from prometheus_client import REGISTRY
from serving_fixtures import MODEL_NAMES, metric
from starlette.testclient import TestClient
from tiny_galaxies import galaxy_image

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import eval_batch
from inference.runtime import load_model
from serving.config import load_config
from serving.deployment import build
from serving.routes import http_app

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))
# the limits of the `server` fixture (tests/serving_fixtures.py), so both see the same bad requests
SETTINGS = {
    "GALAXYVIT_MODELS": ",".join(MODEL_NAMES),
    "GALAXYVIT_DEFAULT_MODEL": "vit",
    "GALAXYVIT_MAX_IMAGES": "8",
    "GALAXYVIT_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
    "GALAXYVIT_MAX_PIXELS": str(2000 * 2000),
    "GALAXYVIT_INTRA_OP_THREADS": "1",
}


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory):
    """The whole service in this process: its routes, admission control, and the models in ONNX Runtime."""
    home, _ = tiny_models
    config = load_config({**SETTINGS, "GALAXYVIT_STORE_DIR": str(tmp_path_factory.mktemp("store"))})
    with TestClient(build(config, home).to_asgi()) as client:
        yield client


def sample(name: str, **labels: str) -> float:
    """Sum of this process's samples of metric `name` whose labels include `labels`."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, bytes]]:
    """(filename, bytes): the 3 real GZ2 cutouts, 2 synthetic galaxies, a random-noise image and an odd-sized PNG."""
    assert len(REAL) == 3, "the 3 real GZ2 samples are missing from data/gz2_real_samples"
    rng = np.random.default_rng(0)
    items = [(p.name, p.read_bytes()) for p in REAL]
    items += [(f"synthetic{k}.jpg", jpeg(galaxy_image(k, rng))) for k in (1, 4)]
    items.append(("noise.png", png(Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)))))
    items.append(("small.png", png(Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)))))
    return items


def offline(model_dir: Path, blobs: list[bytes]) -> np.ndarray:
    """Reference probabilities: Pillow decode + eval_batch + a fresh ONNX Runtime session, no server."""
    model = load_model("ref", model_dir, device="cpu", threads=1)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    return model.predict(eval_batch(images, model.card.prep))


def probs_of(prediction: dict, classes: list[str] | tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    assert list(prediction["probabilities"]) == list(classes)
    return np.array(list(prediction["probabilities"].values()))


def classify(client: Any, files: list[tuple[str, bytes]], model: str | None = None) -> httpx.Response:
    data = {"model": model} if model else None
    return client.post("/classify", files=[("images", f) for f in files], data=data)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predictions_equal_offline_onnx_runtime(client, tiny_models, samples, name):
    _, dirs = tiny_models
    expected = offline(dirs[name], [b for _, b in samples])
    version = next(m["version"] for m in client.get("/models").json()["models"] if m["name"] == name)

    multi = classify(client, samples, name)
    assert multi.status_code == 200, multi.text
    predictions = multi.json()["predictions"]
    assert len(predictions) == len(samples)
    for pred, ref in zip(predictions, expected):
        assert pred["model"] == name and pred["model_version"] == version
        assert pred["label"] == int(ref.argmax()) and pred["class_name"] == CLASS_NAMES[pred["label"]]
        np.testing.assert_allclose(probs_of(pred), ref, atol=1e-5)
        assert re.fullmatch(r"[0-9a-f]{32}", pred["request_id"])
    assert len({p["request_id"] for p in predictions}) == len(samples)

    for (filename, blob), ref in zip(samples[:4], expected[:4]):
        single = classify(client, [(filename, blob)], name)
        assert single.status_code == 200
        np.testing.assert_allclose(probs_of(single.json()["predictions"][0]), ref, atol=1e-5)
        content_type = "image/png" if filename.endswith(".png") else "image/jpeg"
        raw = client.post("/classify/raw", params={"model": name}, content=blob, headers={"Content-Type": content_type})
        assert raw.status_code == 200, raw.text
        assert raw.json()["label"] == int(ref.argmax())
        np.testing.assert_allclose(probs_of(raw.json()), ref, atol=1e-5)


def test_default_model_and_models_endpoint(client, samples):
    info = client.get("/models").json()
    assert info["default"] == "vit" and "classes" not in info  # classes belong to each model
    assert [m["name"] for m in info["models"]] == list(MODEL_NAMES)
    for m in info["models"]:
        assert m["provider"] == "CPUExecutionProvider" and m["providers"][0] == "CPUExecutionProvider"
        assert m["variant"] == "fp32" and m["params"] > 0
        assert m["classes"] == m["class_names"] == list(CLASS_NAMES)  # the card's classes
        assert set(m["preprocessing"]) == {"crop", "size", "mean", "std"}
    response = client.post("/classify/raw", content=samples[0][1], headers={"Content-Type": "image/jpeg"})
    assert response.json()["model"] == "vit"
    for name in MODEL_NAMES:
        assert sample("galaxyvit_provider", model=name, provider="CPUExecutionProvider") == 1.0
        assert sample("galaxyvit_offline_accuracy", model=name, split="valid") == 0.5


def test_other_formats_are_served(client):
    rng = np.random.default_rng(3)
    cube = rng.normal(1.0, 0.2, (3, 64, 64)).astype(np.float32)
    buf = io.BytesIO()
    fits.PrimaryHDU(cube).writeto(buf)
    tiff = io.BytesIO()
    Image.fromarray(rng.integers(0, 60000, (50, 70), dtype=np.uint16)).save(tiff, format="TIFF")
    cmyk = io.BytesIO()
    Image.new("CMYK", (80, 80), (10, 20, 30, 0)).save(cmyk, format="JPEG")
    for body, content_type in (
        (buf.getvalue(), "image/fits"),
        (tiff.getvalue(), "image/tiff"),
        (cmyk.getvalue(), "image/jpeg"),
    ):
        response = client.post("/classify/raw", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["label"] < 8
    response = classify(client, [("cube.fits", buf.getvalue())])
    assert response.status_code == 200


def bad_requests(good: bytes) -> list[tuple[str, dict, int, str]]:
    """(description, request arguments, expected status, expected kind) for every kind of bad input."""
    big_pixels = png(Image.new("L", (2100, 2000)))  # 4.2 Mpx > limit 4 Mpx, a few KB
    jpg = {"Content-Type": "image/jpeg"}
    truncated = good[: len(good) // 3]
    classify, raw, feedback = "/classify", "/classify/raw", "/feedback"
    return [
        (
            "random bytes",
            {"url": classify, "files": {"images": ("x.jpg", b"\x00\x01garbage" * 50)}},
            415,
            "not_an_image",
        ),
        ("truncated jpeg", {"url": classify, "files": {"images": ("t.jpg", truncated)}}, 400, "corrupt_image"),
        ("truncated raw", {"url": raw, "content": truncated, "headers": jpg}, 400, "corrupt_image"),
        ("empty raw body", {"url": raw, "content": b"", "headers": jpg}, 400, "empty_body"),
        ("empty file", {"url": classify, "files": {"images": ("e.jpg", b"")}}, 400, "empty_body"),
        ("no body", {"url": classify}, 400, "empty_body"),
        ("no images field", {"url": classify, "files": {"other": ("a.jpg", good)}}, 400, "no_images"),
        (
            "text images field",
            {"url": classify, "data": {"images": "abc"}, "files": {"x": ("a", b"1")}},
            400,
            "bad_multipart",
        ),
        ("json body", {"url": classify, "json": {"images": ["a"]}}, 415, "unsupported_media_type"),
        (
            "malformed multipart",
            {
                "url": classify,
                "content": b"garbage--zz",
                "headers": {"Content-Type": "multipart/form-data; boundary=zz"},
            },
            400,
            "bad_multipart",
        ),
        (
            "unknown model",
            {"url": classify, "files": {"images": ("a.jpg", good)}, "data": {"model": "nope"}},
            404,
            "unknown_model",
        ),
        ("unknown model raw", {"url": raw + "?model=nope", "content": good, "headers": jpg}, 404, "unknown_model"),
        ("too many images", {"url": classify, "files": [("images", ("a.jpg", good))] * 9}, 413, "too_many_images"),
        ("too many bytes", {"url": raw, "content": b"\xff" * (3 * 1024 * 1024 + 1), "headers": jpg}, 413, "too_large"),
        (
            "too many pixels",
            {"url": raw, "content": big_pixels, "headers": {"Content-Type": "image/png"}},
            413,
            "too_many_pixels",
        ),
        (
            "wrong content type",
            {"url": raw, "content": good, "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "feedback unknown id",
            {"url": feedback, "json": {"request_id": "0" * 32, "label": 1}},
            404,
            "unknown_request_id",
        ),
        ("feedback not json", {"url": feedback, "content": b"{nope"}, 400, "bad_json"),
        ("feedback bad label", {"url": feedback, "json": {"request_id": "x", "label": 9}}, 400, "bad_label"),
        ("feedback bool label", {"url": feedback, "json": {"request_id": "x", "label": True}}, 400, "bad_label"),
        ("feedback unknown name", {"url": feedback, "json": {"request_id": "x", "label": "spiral"}}, 400, "bad_label"),
        ("feedback no id", {"url": feedback, "json": {"label": 1}}, 400, "bad_json"),
    ]


def test_bad_inputs_get_4xx_json_and_service_keeps_answering(client, samples):
    good = samples[0][1]
    before = {kind: sample("galaxyvit_errors_total", kind=kind) for kind in ("unknown_model", "too_many_pixels")}
    for description, request, status, kind in bad_requests(good):
        response = client.post(**request)
        assert response.status_code == status, f"{description}: {response.status_code} {response.text[:300]}"
        body = response.json()
        assert body["kind"] == kind and body["status"] == status and body["error"], description
        assert client.get("/livez").status_code == 200, description
    response = client.post("/classify/raw", content=good, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    for kind, count in (("unknown_model", 2), ("too_many_pixels", 1)):
        assert sample("galaxyvit_errors_total", kind=kind) - before[kind] == count, kind


def test_feedback_updates_online_accuracy_exactly(client, samples):
    response = classify(client, samples[:4], "vitbase")
    predictions = response.json()["predictions"]
    truths = [p["label"] for p in predictions[:3]] + [(predictions[3]["label"] + 1) % 8]  # 3 right, 1 wrong
    results = []
    for pred, truth in zip(predictions, truths):
        label = CLASS_NAMES[truth] if truth % 2 else truth  # both label forms are accepted
        r = client.post("/feedback", json={"request_id": pred["request_id"], "label": label})
        assert r.status_code == 200, r.text
        results.append(r.json())
    assert [r["correct"] for r in results] == [True, True, True, False]
    assert [r["label"] for r in results] == truths
    final = results[-1]["online_accuracy"]
    assert (final["total"], final["correct"], final["accuracy"]) == (4, 3, 0.75)
    assert sum(c["total"] for c in final["per_class"].values()) == 4 and set(final["per_class"]) <= set(CLASS_NAMES)
    again = client.post("/feedback", json={"request_id": predictions[0]["request_id"], "label": 0})
    assert again.status_code == 409 and again.json()["kind"] == "duplicate_feedback"

    assert sample("galaxyvit_feedback_total", model="vitbase") == 4
    assert sample("galaxyvit_feedback_correct_total", model="vitbase") == 3
    assert sample("galaxyvit_online_accuracy", model="vitbase", class_name="all") == 0.75
    wrong_class = CLASS_NAMES[truths[3]]
    expected = final["per_class"][wrong_class]["accuracy"]
    assert sample("galaxyvit_online_accuracy", model="vitbase", class_name=wrong_class) == expected


def test_openapi_document_lists_endpoints_and_the_models_classes(client):
    doc = client.get("/openapi.json").json()
    assert {"/classify", "/classify/raw", "/explain", "/models", "/feedback"} <= set(doc["paths"])
    assert doc["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]
    prediction = doc["paths"]["/classify/raw"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert prediction["properties"]["class_name"]["enum"] == list(CLASS_NAMES)
    assert prediction["properties"]["model"]["enum"] == list(MODEL_NAMES)
    for path in ("/livez", "/readyz", "/docs.json"):
        assert client.get(path).status_code == 200
    wrong = client.get("/classify")
    assert wrong.status_code == 405 and wrong.json()["kind"] == "method_not_allowed"
    missing = client.post("/nowhere", content=b"x")
    assert missing.status_code == 404  # BentoML's router answers unknown paths (plain text)


def test_routes_answer_503_until_the_service_instance_starts():
    # the POST endpoints are BentoML's, which routes to them only once the instance exists; GET /models is not
    app = http_app(load_config({"GALAXYVIT_RETRY_AFTER_S": "4"}))  # no service instance has set its handlers
    with TestClient(app) as starting:
        response = starting.get("/models")
    assert response.status_code == 503 and response.headers["Retry-After"] == "4"
    assert response.json() == {"error": "service is starting", "kind": "not_ready", "status": 503}


def test_concurrent_requests_are_batched_across_processes_and_recorded(server, tiny_models, samples):
    """A real `bentoml serve`: concurrent requests meet in the inference process's batches, each answer is
    its own images' offline prediction, and /metrics merges the worker processes' counts."""
    from concurrent.futures import ThreadPoolExecutor

    _, dirs = tiny_models
    expected = offline(dirs["linformer"], [b for _, b in samples[:4]])
    before = metric(httpx.get(server.url + "/metrics").text, "galaxyvit_predictions_total", model="linformer")

    def send(k: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            return classify(http, samples[k % 3 : k % 3 + 2], "linformer")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [r.text[:300] for r in responses if r.status_code != 200]
    for k, response in enumerate(responses):
        for pred, ref in zip(response.json()["predictions"], expected[k % 3 : k % 3 + 2]):
            np.testing.assert_allclose(probs_of(pred), ref, atol=1e-5)
    ids = [p["request_id"] for r in responses for p in r.json()["predictions"]]
    assert len(set(ids)) == 24
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "galaxyvit_predictions_total", model="linformer") == before + 24
    assert metric(metrics, "galaxyvit_provider", model="linformer", provider="CPUExecutionProvider") == 1.0
    fb = httpx.post(server.url + "/feedback", json={"request_id": ids[-1], "label": 0})
    assert fb.status_code == 200  # the last stored prediction is there
