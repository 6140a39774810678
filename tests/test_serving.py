"""The BentoML service end to end: a real `bentoml serve` on 127.0.0.1 with three tiny exported models."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from serving_fixtures import MODEL_NAMES, metric
from tiny_galaxies import galaxy_image

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import eval_batch
from serving.runtime import load_model

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))


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


def probs_of(prediction: dict) -> np.ndarray:
    assert list(prediction["probabilities"]) == list(CLASS_NAMES)
    return np.array(list(prediction["probabilities"].values()))


def classify(url: str, files: list[tuple[str, bytes]], model: str | None = None) -> httpx.Response:
    data = {"model": model} if model else None
    return httpx.post(url + "/classify", files=[("images", f) for f in files], data=data, timeout=60)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_http_predictions_equal_offline_onnx_runtime(server, tiny_models, samples, name):
    _, dirs = tiny_models
    expected = offline(dirs[name], [b for _, b in samples])
    card_version = httpx.get(server.url + "/models", timeout=30).json()
    version = next(m["version"] for m in card_version["models"] if m["name"] == name)

    multi = classify(server.url, samples, name)
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
        single = classify(server.url, [(filename, blob)], name)
        assert single.status_code == 200
        np.testing.assert_allclose(probs_of(single.json()["predictions"][0]), ref, atol=1e-5)
        content_type = "image/png" if filename.endswith(".png") else "image/jpeg"
        raw = httpx.post(
            server.url + "/classify/raw", params={"model": name}, content=blob, headers={"Content-Type": content_type}
        )
        assert raw.status_code == 200, raw.text
        assert raw.json()["label"] == int(ref.argmax())
        np.testing.assert_allclose(probs_of(raw.json()), ref, atol=1e-5)


def test_default_model_and_models_endpoint(server, samples):
    info = httpx.get(server.url + "/models").json()
    assert info["default"] == "vit" and info["classes"] == list(CLASS_NAMES)
    assert [m["name"] for m in info["models"]] == list(MODEL_NAMES)
    for m in info["models"]:
        assert m["provider"] == "CPUExecutionProvider" and m["providers"][0] == "CPUExecutionProvider"
        assert m["variant"] == "fp32" and m["params"] > 0 and m["class_names"] == list(CLASS_NAMES)
        assert set(m["preprocessing"]) == {"crop", "size", "mean", "std"}
    response = httpx.post(server.url + "/classify/raw", content=samples[0][1], headers={"Content-Type": "image/jpeg"})
    assert response.json()["model"] == "vit"
    metrics = httpx.get(server.url + "/metrics").text
    for name in MODEL_NAMES:
        assert f'galaxyvit_provider{{model="{name}",provider="CPUExecutionProvider"}} 1.0' in metrics
        assert f'galaxyvit_offline_accuracy{{model="{name}",split="valid"}} 0.5' in metrics


def test_other_formats_are_served(server):
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
        response = httpx.post(server.url + "/classify/raw", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["label"] < 8
    response = classify(server.url, [("cube.fits", buf.getvalue())])
    assert response.status_code == 200


def bad_requests(url: str, good: bytes) -> list[tuple[str, httpx.Request, int, str]]:
    """(description, request, expected status, expected kind) for every kind of bad input."""
    big_pixels = png(Image.new("L", (2100, 2000)))  # 4.2 Mpx > limit 4 Mpx, a few KB
    jpg = "image/jpeg"
    truncated = good[: len(good) // 3]
    R = httpx.Request
    return [
        (
            "random bytes",
            R("POST", url + "/classify", files={"images": ("x.jpg", b"\x00\x01garbage" * 50)}),
            415,
            "not_an_image",
        ),
        ("truncated jpeg", R("POST", url + "/classify", files={"images": ("t.jpg", truncated)}), 400, "corrupt_image"),
        (
            "truncated raw",
            R("POST", url + "/classify/raw", content=truncated, headers={"Content-Type": jpg}),
            400,
            "corrupt_image",
        ),
        (
            "empty raw body",
            R("POST", url + "/classify/raw", content=b"", headers={"Content-Type": jpg}),
            400,
            "empty_body",
        ),
        ("empty file", R("POST", url + "/classify", files={"images": ("e.jpg", b"")}), 400, "empty_body"),
        ("no body", R("POST", url + "/classify"), 400, "empty_body"),
        ("no images field", R("POST", url + "/classify", files={"other": ("a.jpg", good)}), 400, "no_images"),
        (
            "text images field",
            R("POST", url + "/classify", data={"images": "abc"}, files={"x": ("a", b"1")}),
            400,
            "bad_multipart",
        ),
        ("json body", R("POST", url + "/classify", json={"images": ["a"]}), 415, "unsupported_media_type"),
        (
            "malformed multipart",
            R(
                "POST",
                url + "/classify",
                content=b"garbage--zz",
                headers={"Content-Type": "multipart/form-data; boundary=zz"},
            ),
            400,
            "bad_multipart",
        ),
        (
            "unknown model",
            R("POST", url + "/classify", files={"images": ("a.jpg", good)}, data={"model": "nope"}),
            404,
            "unknown_model",
        ),
        (
            "unknown model raw",
            R("POST", url + "/classify/raw?model=nope", content=good, headers={"Content-Type": jpg}),
            404,
            "unknown_model",
        ),
        (
            "too many images",
            R("POST", url + "/classify", files=[("images", ("a.jpg", good))] * 9),
            413,
            "too_many_images",
        ),
        (
            "too many bytes",
            R("POST", url + "/classify/raw", content=b"\xff" * (3 * 1024 * 1024 + 1), headers={"Content-Type": jpg}),
            413,
            "too_large",
        ),
        (
            "too many pixels",
            R("POST", url + "/classify/raw", content=big_pixels, headers={"Content-Type": "image/png"}),
            413,
            "too_many_pixels",
        ),
        (
            "wrong content type",
            R("POST", url + "/classify/raw", content=good, headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (
            "feedback unknown id",
            R("POST", url + "/feedback", json={"request_id": "0" * 32, "label": 1}),
            404,
            "unknown_request_id",
        ),
        ("feedback not json", R("POST", url + "/feedback", content=b"{nope"), 400, "bad_json"),
        ("feedback bad label", R("POST", url + "/feedback", json={"request_id": "x", "label": 9}), 400, "bad_label"),
        ("feedback no id", R("POST", url + "/feedback", json={"label": 1}), 400, "bad_json"),
    ]


def test_bad_inputs_get_4xx_json_and_service_keeps_answering(server, samples):
    good = samples[0][1]
    with httpx.Client(timeout=60) as client:
        before = client.get(server.url + "/metrics").text  # the server is shared with other test modules
        for description, request, status, kind in bad_requests(server.url, good):
            response = client.send(request)
            assert response.status_code == status, f"{description}: {response.status_code} {response.text[:300]}"
            body = response.json()
            assert body["kind"] == kind and body["status"] == status and body["error"], description
            assert client.get(server.url + "/livez").status_code == 200, description
        response = client.post(server.url + "/classify/raw", content=good, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200
        metrics = client.get(server.url + "/metrics").text
    for kind, count in (("unknown_model", 2), ("too_many_pixels", 1)):
        new = metric(metrics, "galaxyvit_errors_total", kind=kind) - metric(before, "galaxyvit_errors_total", kind=kind)
        assert new == count, kind


def test_feedback_updates_online_accuracy_exactly(server, samples):
    response = classify(server.url, samples[:4], "vitbase")
    predictions = response.json()["predictions"]
    truths = [p["label"] for p in predictions[:3]] + [(predictions[3]["label"] + 1) % 8]  # 3 right, 1 wrong
    results = []
    for pred, truth in zip(predictions, truths):
        label = CLASS_NAMES[truth] if truth % 2 else truth  # both label forms are accepted
        r = httpx.post(server.url + "/feedback", json={"request_id": pred["request_id"], "label": label})
        assert r.status_code == 200, r.text
        results.append(r.json())
    assert [r["correct"] for r in results] == [True, True, True, False]
    final = results[-1]["online_accuracy"]
    assert (final["total"], final["correct"], final["accuracy"]) == (4, 3, 0.75)
    assert sum(c["total"] for c in final["per_class"].values()) == 4
    again = httpx.post(server.url + "/feedback", json={"request_id": predictions[0]["request_id"], "label": 0})
    assert again.status_code == 409 and again.json()["kind"] == "duplicate_feedback"

    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "galaxyvit_feedback_total", model="vitbase") == 4
    assert metric(metrics, "galaxyvit_feedback_correct_total", model="vitbase") == 3
    assert metric(metrics, "galaxyvit_online_accuracy", model="vitbase", class_name="all") == 0.75
    wrong_class = CLASS_NAMES[truths[3]]
    expected = final["per_class"][wrong_class]["accuracy"]
    assert metric(metrics, "galaxyvit_online_accuracy", model="vitbase", class_name=wrong_class) == expected


def test_openapi_document_lists_endpoints(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    assert {"/classify", "/classify/raw", "/models", "/feedback"} <= set(doc["paths"])
    assert doc["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]
    for path in ("/livez", "/readyz", "/docs.json"):
        assert httpx.get(server.url + path).status_code == 200
    wrong = httpx.get(server.url + "/classify")
    assert wrong.status_code == 405 and wrong.json()["kind"] == "method_not_allowed"
    missing = httpx.post(server.url + "/nowhere", content=b"x")
    assert missing.status_code == 404  # BentoML's router answers unknown paths (plain text)


def test_concurrent_requests_all_answered_and_recorded(server, samples):
    from concurrent.futures import ThreadPoolExecutor

    before = metric(httpx.get(server.url + "/metrics").text, "galaxyvit_predictions_total", model="linformer")

    def send(k: int) -> httpx.Response:
        return classify(server.url, samples[k % 3 : k % 3 + 2], "linformer")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    ids = [p["request_id"] for r in responses for p in r.json()["predictions"]]
    assert len(set(ids)) == 24
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "galaxyvit_predictions_total", model="linformer") == before + 24
    fb = httpx.post(server.url + "/feedback", json={"request_id": ids[-1], "label": 0})
    assert fb.status_code == 200  # the last stored prediction is there
