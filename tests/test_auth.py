"""Optional API keys (serving/auth.py) and what /models shows, through a real `bentoml serve`.

With `api_keys_file`: every endpoint but the health checks (and /metrics unless `protect_metrics`) needs
an allowed Bearer key (401); /feedback takes only JSON (415), only for request ids issued to the same key
(403), and at most `feedback_burst` at once per key (429 + Retry-After). Without it nothing changes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from serving_fixtures import ROOT, metric

from galaxyvit.card import load_verified
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from serving.auth import ApiKeys, AuthMiddleware, hash_key, load_key_hashes
from serving.config import load_config
from serving.deployment import build
from serving.process import ServerProcess
from serving.routes import card_fields

ALPHA, BETA = "alpha-key-0123456789", "beta-key-9876543210"
JPEG = {"Content-Type": "image/jpeg"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def image() -> bytes:
    return sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def keyed(tiny_models, tmp_path_factory):
    home, _ = tiny_models
    work = tmp_path_factory.mktemp("keyed")
    keys = work / "api_keys"
    keys.write_text(f"# two clients\n{hash_key(ALPHA)}\n\n{hash_key(BETA).upper()}  # beta\n")
    settings = {"models": "vit", "intra_op_threads": 1, "api_keys_file": str(keys)}
    settings.update(feedback_burst=4, feedback_per_minute=1)
    with ServerProcess(settings, store=home, workdir=work / "server", ready_timeout=180) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


def test_every_endpoint_but_health_checks_needs_an_allowed_key(keyed, image):
    before = metric(keyed.get("/metrics").text, "galaxyvit_errors_total", kind="unauthorized")
    refused = [
        keyed.post("/classify/raw", content=image, headers=JPEG),
        keyed.post("/classify/raw", content=image, headers={**JPEG, **bearer("wrong")}),
        keyed.post("/classify/raw", content=image, headers={**JPEG, "Authorization": f"Basic {ALPHA}"}),
        keyed.get("/models"),
        keyed.get("/openapi.json"),
        keyed.get("/docs.json"),
        keyed.post("/feedback", json={"request_id": "x", "label": 1}),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["kind"] == "unauthorized" and response.headers["WWW-Authenticate"] == "Bearer"
    assert ALPHA not in str([r.text for r in refused])
    metrics = keyed.get("/metrics")  # open without a key (protect_metrics is off)
    assert metric(metrics.text, "galaxyvit_errors_total", kind="unauthorized") - before == len(refused)
    for path in ("/livez", "/readyz"):
        assert keyed.get(path).status_code == 200, path
    for key in (ALPHA, BETA):  # the stored hash may be upper case
        assert keyed.get("/models", headers=bearer(key)).status_code == 200
    lower = {"Authorization": f"bearer {ALPHA}"}
    assert keyed.post("/classify/raw", content=image, headers={**JPEG, **lower}).status_code == 200


def test_feedback_only_as_json_for_the_same_key_and_within_its_rate(keyed, image):
    made = keyed.post("/classify/raw", content=image, headers={**JPEG, **bearer(ALPHA)})
    assert made.status_code == 200, made.text
    request_id = made.json()["request_id"]
    other = keyed.post("/feedback", json={"request_id": request_id, "label": 1}, headers=bearer(BETA))
    assert other.status_code == 403 and other.json()["kind"] == "forbidden", other.text
    text = keyed.post(
        "/feedback",
        content=f'{{"request_id": "{request_id}", "label": 1}}',
        headers={"Content-Type": "text/plain", **bearer(ALPHA)},
    )
    assert text.status_code == 415 and text.json()["kind"] == "unsupported_media_type"
    own = keyed.post("/feedback", json={"request_id": request_id, "label": 1}, headers=bearer(ALPHA))
    assert own.status_code == 200, own.text

    statuses = []  # a flood: the burst (4, one of them used above) passes, then 429 (1 token a minute)
    for k in range(8):
        r = keyed.post("/feedback", json={"request_id": f"flood{k}", "label": 1}, headers=bearer(ALPHA))
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["kind"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    assert statuses == [404] * 3 + [429] * 5, statuses
    beta = keyed.post("/feedback", json={"request_id": "flood", "label": 1}, headers=bearer(BETA))
    assert beta.status_code == 404  # the rate is per key


def test_models_hides_training_details_unless_exposed(keyed, tiny_models):
    (hidden,) = keyed.get("/models", headers=bearer(ALPHA)).json()["models"]
    assert "run_config" not in hidden and "confusion_matrix" not in hidden
    assert hidden["sha256"] and hidden["class_names"]  # the rest of the card is still there
    _, dirs = tiny_models
    _, card = load_verified(dirs["vit"], "fp32")
    assert {"run_config", "confusion_matrix"} <= set(card_fields(card, expose_details=True))
    assert set(card_fields(card, expose_details=False)) == set(card.to_dict()) - {"run_config", "confusion_matrix"}


def test_without_keys_nothing_needs_one(tiny_models):
    home, _ = tiny_models
    entry = build(load_config({"GALAXYVIT_MODELS": "vit"}), home)
    assert [m.__name__ for m, _ in entry.middlewares] == ["AdmissionMiddleware"]


def test_key_files_hold_hashes_and_hash_key_reads_the_key_from_stdin(tmp_path):
    path = tmp_path / "keys"
    path.write_text(ALPHA + "\n")
    with pytest.raises(ValueError, match="not a SHA-256"):  # a key pasted by mistake is not served as one
        load_key_hashes(path)
    path.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no API key"):
        load_key_hashes(path)
    keys = ApiKeys([hash_key(ALPHA)])
    for protect, metrics_open in ((False, True), (True, False)):  # BentoML's /metrics needs a real server
        config = load_config({"GALAXYVIT_API_KEYS_FILE": str(path), "GALAXYVIT_PROTECT_METRICS": str(protect)})
        assert ("/metrics" in AuthMiddleware(None, keys, config).open_paths) is metrics_open
    assert keys.identify(f"Bearer {ALPHA}") == hash_key(ALPHA)[:16]
    assert keys.identify(f"Bearer {BETA}") is None and keys.identify(None) is None and keys.identify("Bearer ") is None

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--hash-key"],
        input=ALPHA + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hash_key(ALPHA) and ALPHA not in done.stdout + done.stderr
