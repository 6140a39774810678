"""A user's own classes end to end: the served model's card is the one truth for its class names.

A 4-class folder model (elliptical, spiral, edge-on, merger) and an 8-class GZ2 model in one real
`bentoml serve`: each answers with its own names in `class_name`, `probabilities`, /models, /metrics
and /feedback, and the OpenAPI document describes both.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from class_list_fixtures import CLASS_LISTS, FOLDER_CLASSES, export_class_list_models
from PIL import Image
from serving_fixtures import metric

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import eval_batch
from inference.runtime import load_model
from serving.process import ServerProcess

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def class_list_models(tmp_path_factory):
    return export_class_list_models(tmp_path_factory.mktemp("class-lists"))


@pytest.fixture(scope="module")
def server(class_list_models, tmp_path_factory):
    home, _ = class_list_models
    settings = {"models": "folder4,gz2", "intra_op_threads": 1, "max_latency_ms": 50}
    workdir = tmp_path_factory.mktemp("class-lists-server")
    with ServerProcess(settings, store=home, workdir=workdir, ready_timeout=180) as srv:
        yield srv


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    assert len(REAL) == 3, "the 3 real GZ2 samples are missing from data/gz2_real_samples"
    return [p.read_bytes() for p in REAL]


def offline(model_dir, blobs: list[bytes]) -> np.ndarray:
    model = load_model("ref", model_dir, device="cpu", threads=1)
    return model.predict(eval_batch([Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], model.card.prep))


def test_each_model_answers_with_its_own_class_names(server, class_list_models, blobs):
    _, dirs = class_list_models
    with httpx.Client(base_url=server.url, timeout=60) as client:
        info = client.get("/models").json()
        assert {m["name"]: m["classes"] for m in info["models"]} == CLASS_LISTS
        assert {m["name"]: m["class_names"] for m in info["models"]} == CLASS_LISTS  # as on the cards
        for name, classes in CLASS_LISTS.items():
            expected = offline(dirs[name], blobs)
            assert expected.shape == (3, len(classes))
            multi = client.post("/classify", files=[("images", b) for b in blobs], data={"model": name})
            raw = client.post(
                "/classify/raw", params={"model": name}, content=blobs[0], headers={"Content-Type": "image/jpeg"}
            )
            assert multi.status_code == raw.status_code == 200, multi.text + raw.text
            for pred, ref in [*zip(multi.json()["predictions"], expected), (raw.json(), expected[0])]:
                assert list(pred["probabilities"]) == classes
                np.testing.assert_allclose(list(pred["probabilities"].values()), ref, atol=1e-5)
                assert pred["label"] == int(ref.argmax()) and pred["class_name"] == classes[pred["label"]]
        metrics = client.get("/metrics").text
    for name, classes in CLASS_LISTS.items():
        assert metric(metrics, "galaxyvit_predictions_total", model=name) == 4
        labelled = {
            line.split('class_name="')[1].split('"')[0]
            for line in metrics.splitlines()
            if line.startswith("galaxyvit_predictions_total{") and f'model="{name}"' in line
        }
        assert labelled and labelled <= set(classes), labelled


def predict(client: httpx.Client, name: str, blob: bytes) -> dict:
    response = client.post(
        "/classify/raw", params={"model": name}, content=blob, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_feedback_takes_the_predicting_models_labels(server, blobs):
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def feedback(prediction: dict, label: object) -> httpx.Response:
            return client.post("/feedback", json={"request_id": prediction["request_id"], "label": label})

        folder = [predict(client, "folder4", blobs[k % 3]) for k in range(4)]
        gz2 = [predict(client, "gz2", blobs[k % 3]) for k in range(3)]
        # labels the other model has, or indices past this model's classes: 400 bad_label, nothing recorded
        for prediction, label in ((folder[0], 4), (folder[0], "barred spiral"), (gz2[0], "spiral"), (gz2[0], 8)):
            refused = feedback(prediction, label)
            assert refused.status_code == 400 and refused.json()["kind"] == "bad_label", (label, refused.text)
        # "merger" is label 3 of the folder model and label 7 of the GZ2 model
        answers = [feedback(folder[0], "edge-on"), feedback(folder[1], "merger"), feedback(folder[2], 3)]
        answers += [feedback(gz2[0], "merger"), feedback(gz2[1], 0)]
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        results = [a.json() for a in answers]
        assert [(r["model"], r["label"]) for r in results] == [
            ("folder4", 2),
            ("folder4", 3),
            ("folder4", 3),
            ("gz2", 7),
            ("gz2", 0),
        ]
        assert [r["correct"] for r in results] == [
            folder[0]["label"] == 2,
            folder[1]["label"] == 3,
            folder[2]["label"] == 3,
            gz2[0]["label"] == 7,
            gz2[1]["label"] == 0,
        ]
        assert set(results[2]["online_accuracy"]["per_class"]) == {"edge-on", "merger"}
        assert results[2]["online_accuracy"]["per_class"]["merger"]["total"] == 2
        assert set(results[4]["online_accuracy"]["per_class"]) == {"merger", "round elliptical"}
        metrics = client.get("/metrics").text
    assert metric(metrics, "galaxyvit_feedback_total", model="folder4", class_name="edge-on") == 1
    assert metric(metrics, "galaxyvit_feedback_total", model="folder4", class_name="merger") == 2
    assert metric(metrics, "galaxyvit_feedback_total", model="gz2", class_name="merger") == 1
    assert metric(metrics, "galaxyvit_feedback_total", model="gz2", class_name="round elliptical") == 1
    assert metric(metrics, "galaxyvit_feedback_total") == 5
    right = sum(r["correct"] for r in results[:3])
    assert metric(metrics, "galaxyvit_online_accuracy", model="folder4", class_name="all") == pytest.approx(right / 3)


def test_openapi_document_describes_both_class_lists(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    prediction = doc["paths"]["/classify/raw"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert prediction["properties"]["class_name"]["enum"] == FOLDER_CLASSES + [
        c for c in CLASS_NAMES if c not in FOLDER_CLASSES
    ]
    assert prediction["properties"]["label"]["maximum"] == 7
    assert "folder4: elliptical, spiral, edge-on, merger" in doc["info"]["description"]
    label = doc["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(label["properties"]["label"]["oneOf"][1]["enum"]) == set(FOLDER_CLASSES) | set(CLASS_NAMES)
