"""The Open Inference Protocol v2 (serving/oip.py): Triton's own client against a real `bentoml serve`, and the
protocol's details (JSON tensors, errors, API keys) in one process.

The answers must be /classify's: the same image gives the same probabilities within 1e-5, whether it is sent
as its encoded file (`image_bytes`) or as its evaluation crop (`images`).
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from serving.auth import ApiKeys, AuthMiddleware, hash_key, load_key_hashes
from serving.config import load_config
from serving.oip import oip_app
from serving.uploads import decode_crop

MODELS = "vit,linformer,vitbase"
SETTINGS = {"GALAXYVIT_MODELS": MODELS, "GALAXYVIT_DEFAULT_MODEL": "vit", "GALAXYVIT_INTRA_OP_THREADS": "1"}
SETTINGS |= {"GALAXYVIT_MAX_IMAGES": "8", "GALAXYVIT_MAX_PIXELS": str(2000 * 2000)}  # as the `server` fixture
KEY = "oip-test-key"


@pytest.fixture(scope="module")
def files() -> list[bytes]:
    """The 3 real GZ2 cutouts and a PNG of noise."""
    blobs = [p.read_bytes() for p in sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))]
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(buffer, "PNG")
    return [*blobs, buffer.getvalue()]


@pytest.fixture(scope="module")
def client(server):
    """HTTP to the shared `bentoml serve` (tests/serving_fixtures.py): one API worker, three tiny models."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def card_of(home, model: str):
    from serving.catalog import discover

    return discover(load_config({"GALAXYVIT_MODELS": model}), home).models[model].card


def crops(blobs: list[bytes], card) -> np.ndarray:
    """The evaluation crops the service makes of `blobs` (the decoding of POST /classify): (N, S, S, 3) uint8."""
    return np.stack([decode_crop(b, card.prep, load_config(SETTINGS)) for b in blobs])


def classify(http: httpx.Client, blobs: list[bytes], model: str) -> list[dict]:
    response = http.post("/classify", files=[("images", b) for b in blobs], data={"model": model})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def probabilities(predictions: list[dict]) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in predictions])


def test_tritonclient_against_bentoml_serve(server, tiny_models, files):
    """Ready, metadata, and inferences with binary data for both inputs, equal to /classify's answers."""
    url = server.url.removeprefix("http://")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        expected = classify(http, files, "linformer")
    oip = triton.InferenceServerClient(url, network_timeout=60.0)
    try:
        assert oip.is_server_live() and oip.is_server_ready() and oip.is_model_ready("linformer")
        assert not oip.is_model_ready("no-such-model")
        assert "binary_tensor_data" in oip.get_server_metadata()["extensions"]
        metadata = oip.get_model_metadata("linformer")
        size = metadata["inputs"][0]["shape"][1]
        assert metadata["inputs"] == [
            {"name": "images", "datatype": "UINT8", "shape": [-1, size, size, 3]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        ]
        classes = list(expected[0]["probabilities"])
        assert metadata["parameters"]["class_names"] == classes
        outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
        assert outputs["probabilities"] == ("FP32", [-1, len(classes)]) and outputs["label"] == ("INT64", [-1])
        has_ood = expected[0]["ood_score"] is not None
        assert ("ood_score" in outputs) == has_ood and outputs["embedding"][0] == "FP32"

        encoded = triton.InferInput("image_bytes", [len(files)], "BYTES")
        encoded.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
        by_file = oip.infer("linformer", [encoded])  # no outputs named: all but the embedding, as binary data
        names = [o["name"] for o in by_file.get_response()["outputs"]]
        assert names == ["probabilities", "label"] + ["ood_score"] * has_ood

        card = card_of(tiny_models[0], "linformer")
        pixels = crops(files, card)
        raw = triton.InferInput("images", list(pixels.shape), "UINT8")
        raw.set_data_from_numpy(pixels, binary_data=True)
        wanted = [triton.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "label", "embedding")]
        by_crop = oip.infer("linformer", [raw], outputs=wanted, model_version=card.version)

        reference = probabilities(expected)
        for result in (by_file, by_crop):
            np.testing.assert_allclose(result.as_numpy("probabilities"), reference, atol=1e-5)
            assert result.as_numpy("label").tolist() == [p["label"] for p in expected]
        if has_ood:
            np.testing.assert_allclose(by_file.as_numpy("ood_score"), [p["ood_score"] for p in expected], atol=1e-5)
        embedding = by_crop.as_numpy("embedding")
        assert embedding.dtype == np.float32 and embedding.shape[0] == len(files) and embedding.shape[1] > 1
        assert not np.allclose(embedding[0], embedding[1])  # one per image

        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            oip.infer("nope", [encoded])
        broken = triton.InferInput("image_bytes", [1], "BYTES")
        broken.set_data_from_numpy(np.array([b"\xff\xd8 not a jpeg"], dtype=np.object_), binary_data=True)
        with pytest.raises(InferenceServerException) as refused:
            oip.infer("linformer", [broken])
        assert refused.value.status() == "415" and "image" in refused.value.message()  # as /classify refuses it
        assert oip.is_server_ready()  # and it keeps answering
    finally:
        oip.close()


def infer(client: httpx.Client, model: str, request: dict, binary: bytes = b"", **headers: str) -> httpx.Response:
    body = json.dumps(request).encode()
    if binary:
        headers = {"Inference-Header-Content-Length": str(len(body)), **headers}
    return client.post(f"/v2/models/{model}/infer", content=body + binary, headers=headers)


def test_metadata_health_and_readiness(client):
    server = client.get("/v2")
    assert server.status_code == 200 and server.json()["name"] == "galaxyvit"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    served = {m["name"]: m for m in client.get("/models").json()["models"]}
    for name, info in served.items():
        metadata = client.get(f"/v2/models/{name}").json()
        assert metadata["name"] == name and metadata["versions"] == [info["version"]]
        assert metadata["parameters"]["class_names"] == info["classes"]
        size = metadata["inputs"][0]["shape"][1]
        assert size == info["preprocessing"]["size"]
        versioned = client.get(f"/v2/models/{name}/versions/{info['version']}/ready")
        assert versioned.json() == {"name": name, "ready": True}
    for path in ("/v2/models/nope", "/v2/models/vit/versions/0.0.0-nope/ready", "/v2/models/nope/ready"):
        response = client.get(path)
        assert response.status_code == 404 and list(response.json()) == ["error"], path


def test_json_tensors_give_the_answers_of_classify(client, tiny_models, files):
    """JSON data both ways: base64 files and nested crop lists in, plain numbers out."""
    expected = classify(client, files, "vit")
    pixels = crops(files, card_of(tiny_models[0], "vit"))
    as_files = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)]}
    as_files["data"] = [base64.b64encode(b).decode() for b in files]
    as_crops = {"name": "images", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.tolist()}
    for tensor in (as_files, as_crops):
        response = infer(client, "vit", {"id": "r1", "inputs": [tensor]})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        answer = response.json()
        assert answer["id"] == "r1" and answer["model_name"] == "vit"
        outputs = {o["name"]: o for o in answer["outputs"]}
        # the tiny test models have no OOD rule (no validation images at export): no ood_score for them
        has_ood = expected[0]["ood_score"] is not None
        assert list(outputs) == ["probabilities", "label"] + ["ood_score"] * has_ood
        p = outputs["probabilities"]
        assert p["datatype"] == "FP32" and p["shape"] == [len(files), len(expected[0]["probabilities"])]
        np.testing.assert_allclose(np.reshape(p["data"], p["shape"]), probabilities(expected), atol=1e-5)
        assert outputs["label"]["data"] == [e["label"] for e in expected]
        if has_ood:
            np.testing.assert_allclose(outputs["ood_score"]["data"], [e["ood_score"] for e in expected], atol=1e-5)


def test_binary_outputs_follow_the_json_header(client, files):
    """One output asked as binary, one as JSON: the header says where the binary one lies."""
    header = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {}}],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}, {"name": "label"}],
    }
    blob = len(files[0]).to_bytes(4, "little") + files[0]
    header["inputs"][0]["parameters"]["binary_data_size"] = len(blob)
    response = infer(client, "vit", header, blob)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    size = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:size])
    embedding, label = answer["outputs"]
    assert label["name"] == "label" and len(label["data"]) == 1 and "parameters" not in label
    assert embedding["datatype"] == "FP32" and embedding["parameters"]["binary_data_size"] == 4 * embedding["shape"][1]
    values = np.frombuffer(response.content[size:], "<f4")
    assert values.size == embedding["shape"][1] and np.isfinite(values).all() and values.std() > 0


BAD_REQUESTS = [
    ({"inputs": []}, b"", "non-empty `inputs`"),
    ({"inputs": [{"name": "images", "datatype": "UINT7", "shape": [1], "data": [1]}]}, b"", "unknown datatype"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, b"", "base64"),
    ({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]}, b"", "must be"),
    ({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2], "data": [0, 300]}]}, b"", "range"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, b"", "exactly one input"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}, b"", "image"),
    (
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]},
        b"\x05\x00\x00\x00abc",
        "runs past",
    ),
    (
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}]},
        b"\x03\x00\x00\x00abcEXTRA",
        "belong to no input",
    ),
    (
        {
            "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
            "outputs": [{"name": "x"}],
        },
        b"",
        "no output 'x'",
    ),
]


@pytest.mark.parametrize(("request_json", "binary", "message"), BAD_REQUESTS)
def test_bad_requests_get_the_protocols_4xx_error(client, request_json, binary, message):
    response = infer(client, "vit", request_json, binary)
    assert 400 <= response.status_code < 500, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"]


def test_malformed_bodies_and_limits(client, files):
    not_json = client.post("/v2/models/vit/infer", content=b"\x00\x01")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    lying = client.post("/v2/models/vit/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert lying.status_code == 400 and "does not fit" in lying.json()["error"]
    nine = {"name": "image_bytes", "datatype": "BYTES", "shape": [9], "data": [base64.b64encode(files[0]).decode()] * 9}
    too_many = infer(client, "vit", {"inputs": [nine]})
    assert too_many.status_code == 413 and "limit of 8" in too_many.json()["error"]
    assert client.get("/v2/models/vit/infer").status_code == 405


def test_api_keys_guard_v2_but_not_its_health_checks(tmp_path):
    """serving/auth.py in front of the /v2 routes (not started: a request that passes answers 503 starting)."""
    keys = tmp_path / "keys"
    keys.write_text(hash_key(KEY) + "\n")
    config = load_config({"GALAXYVIT_API_KEYS_FILE": str(keys)})
    app = AuthMiddleware(oip_app(config), keys=ApiKeys(load_key_hashes(keys)), config=config)
    with TestClient(app) as keyed:
        assert keyed.get("/v2/health/live").json() == {"live": True}
        assert keyed.get("/v2/health/ready").status_code == 503  # open, and not ready before the service starts
        for refused in (keyed.get("/v2"), keyed.get("/v2/models/vit"), keyed.post("/v2/models/vit/infer")):
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
        allowed = keyed.post("/v2/models/vit/infer", headers={"Authorization": f"Bearer {KEY}"})
        assert allowed.status_code == 503 and allowed.json() == {"error": "service is starting"}


def test_openapi_document_lists_the_v2_routes_and_validates(client):
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").json()
    validate(document)
    assert {"/v2", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/infer"} <= set(document["paths"])
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"400", "404", "413", "429"} <= set(infer["responses"])
    assert infer["parameters"][0]["schema"]["enum"] == ["vit", "linformer", "vitbase"]
