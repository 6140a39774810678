"""BentoML's own clients against a real `bentoml serve`: the endpoints are @bentoml.api methods.

SyncHTTPClient lists them and calls classify, classify_raw, models and feedback; AsyncHTTPClient calls
classify; another service calls them through `bentoml.depends(GalaxyClassifier)`; the OpenAPI document
(/docs.json, read by BentoML's UI at /, the same at /openapi.json) is valid and lists every endpoint with
its error statuses.
"""

from __future__ import annotations

import asyncio
import textwrap

import bentoml
import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from serving.process import ServerProcess

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))
ENDPOINTS = {"classify", "classify_raw", "explain", "models", "feedback"}


def test_sync_client_lists_and_calls_the_endpoints(server):
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        assert ENDPOINTS <= set(client.endpoints)
        result = client.classify(images=REAL[:2], model="linformer")
        assert result["model"] == "linformer" and len(result["predictions"]) == 2
        first = result["predictions"][0]
        assert list(first["probabilities"]) == list(CLASS_NAMES) and first["class_name"] in CLASS_NAMES
        assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

        raw = httpx.post(
            server.url + "/classify/raw?model=linformer",
            content=REAL[0].read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        ).json()
        np.testing.assert_allclose(list(first["probabilities"].values()), list(raw["probabilities"].values()))
        one = client.classify_raw(image=REAL[0], model="linformer", tta=8)
        assert one["tta"] == 8 and one["model"] == "linformer" and "spread" in one

        models = client.models()
        assert models["default"] == "vit" and {m["name"] for m in models["models"]} == {"vit", "linformer", "vitbase"}

        feedback = client.feedback(request_id=first["request_id"], label=first["class_name"])
        assert feedback["correct"] is True and feedback["online_accuracy"]["total"] >= 1

        with pytest.raises(bentoml.exceptions.BentoMLException):  # the service's 404, raised by the client
            client.classify(images=REAL[:1], model="nope")


def test_async_client_calls_classify(server):
    async def main() -> list[dict]:
        async with bentoml.AsyncHTTPClient(server.url, timeout=120) as client:
            return await asyncio.gather(*(client.classify(images=[path]) for path in REAL))

    results = asyncio.run(main())
    assert [r["model"] for r in results] == ["vit"] * len(REAL)
    assert all(len(r["predictions"]) == 1 for r in results)


def test_openapi_document_is_valid_and_lists_every_endpoint_with_its_errors(server):
    docs = httpx.get(server.url + "/docs.json", timeout=30).json()
    assert httpx.get(server.url + "/openapi.json", timeout=30).json() == docs
    validate(docs)
    paths = docs["paths"]
    for path in ("/classify", "/classify/raw", "/explain", "/feedback"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "413", "429", "503"} <= set(responses), path
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    assert {"get", "post"} <= set(paths["/models"])
    raw = paths["/classify/raw"]["post"]
    assert {"image/jpeg", "image/fits", "multipart/form-data"} <= set(raw["requestBody"]["content"])
    assert {p["name"] for p in raw["parameters"]} == {"model", "tta"}
    assert {"/livez", "/readyz", "/metrics"} <= set(paths)  # BentoML's own endpoints stay documented
    index = httpx.get(server.url + "/", timeout=30)  # BentoML's UI: Swagger UI, whose "Try it out" reads docs.json
    assert index.status_code == 200 and "swagger-initializer.js" in index.text
    initializer = httpx.get(server.url + "/static_content/swagger-initializer.js", timeout=30)
    assert initializer.status_code == 200 and "docs.json" in initializer.text


SURVEY = '''
from pathlib import Path

import bentoml

from serving.service import GalaxyClassifier


@bentoml.service(name="survey")
class Survey:
    """Another service of the same deployment that calls the classifier through bentoml.depends."""

    galaxies = bentoml.depends(GalaxyClassifier)

    @bentoml.api
    async def first_class(self, image: Path) -> str:
        result = await self.galaxies.to_async.classify(images=[image], model="vitbase")
        return result.predictions[0].class_name
'''


def test_another_service_calls_the_classifier_through_depends(tiny_models, tmp_path):
    home, _ = tiny_models
    code = tmp_path / "code"
    code.mkdir()
    (code / "survey.py").write_text(textwrap.dedent(SURVEY))
    settings = {"models": "vit,vitbase", "intra_op_threads": 1}
    env = {"PYTHONPATH": str(code)}
    with ServerProcess(settings, store=home, workdir=tmp_path / "run", env=env, service="survey:Survey") as srv:
        with bentoml.SyncHTTPClient(srv.url, timeout=120) as client:
            assert client.first_class(image=REAL[0]) in CLASS_NAMES
