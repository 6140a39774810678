"""Multi-worker correctness of metrics and feedback, and `bentoml build` of the repository: the built bento
serves from its own folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from serving_fixtures import ROOT, metric

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from load_tests.reliability import process_tree
from serving.process import ServerProcess

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def two_workers(tiny_models, tmp_path_factory):
    home, _ = tiny_models
    settings = {"models": "vit,linformer", "workers": 2, "intra_op_threads": 1}
    with ServerProcess(settings, store=home, workdir=tmp_path_factory.mktemp("server2"), ready_timeout=180) as srv:
        yield srv


def test_metrics_and_feedback_are_exact_with_two_workers(two_workers):
    url = two_workers.url
    blobs = [p.read_bytes() for p in REAL]
    request_ids, labels = [], []
    with httpx.Client(timeout=60) as client:
        for i in range(6):  # 6 single-image raw requests...
            r = client.post(url + "/classify/raw", content=blobs[i % 3], headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
            request_ids.append(r.json()["request_id"])
            labels.append(r.json()["label"])
        r = client.post(url + "/classify", files=[("images", b) for b in blobs], data={"model": "vit"})  # ...+ 3 images
        assert r.status_code == 200
        request_ids += [p["request_id"] for p in r.json()["predictions"]]
        labels += [p["label"] for p in r.json()["predictions"]]
        for _ in range(2):
            bad = client.post(url + "/classify/raw", content=b"not an image", headers={"Content-Type": "image/png"})
            assert bad.status_code == 415
        # feedback for every prediction, each on a fresh connection: whichever worker answers it finds the
        # prediction (made by either worker) in the shared store, and the counts below stay exact
        truths = [label if k % 3 else (label + 1) % 8 for k, label in enumerate(labels)]
        for rid, truth in zip(request_ids, truths):
            fb = httpx.post(url + "/feedback", json={"request_id": rid, "label": truth}, timeout=30)
            assert fb.status_code == 200, fb.text
        metrics = client.get(url + "/metrics").text
    correct = sum(t == label for t, label in zip(truths, labels))
    assert metric(metrics, "galaxyvit_predictions_total", model="vit") == 9
    assert metric(metrics, "galaxyvit_batch_size_sum", model="vit") == 9
    assert metric(metrics, "galaxyvit_queue_seconds_count", model="vit") == 9
    assert metric(metrics, "galaxyvit_batch_size_count", model="vit") == metric(
        metrics, "galaxyvit_inference_seconds_count", model="vit"
    )
    assert metric(metrics, "galaxyvit_predictions_total", model="linformer") == 0
    assert metric(metrics, "galaxyvit_errors_total", kind="not_an_image") == 2
    assert metric(metrics, "galaxyvit_feedback_total", model="vit") == 9
    assert metric(metrics, "galaxyvit_feedback_correct_total", model="vit") == correct == 6
    assert metric(metrics, "galaxyvit_online_accuracy", model="vit", class_name="all") == pytest.approx(6 / 9)


def test_bentoml_build_succeeds_without_torch_and_the_bento_serves(tiny_models, tmp_path):
    home, _ = tiny_models
    build_home = tmp_path / "home"
    build_home.mkdir()
    (build_home / "models").symlink_to(home / "models")
    env = {**os.environ, "BENTOML_HOME": str(build_home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT)}
    env["GALAXYVIT_MODELS"] = "vit,linformer,vitbase"
    bentoml = Path(sys.executable).with_name("bentoml")
    done = subprocess.run([str(bentoml), "build", "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (bento,) = [p for p in (build_home / "bentos" / "galaxyvit").iterdir() if p.name != "latest"]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:GalaxyClassifier"
    models = [m["tag"].split(":")[0] for s in info["services"] for m in s["models"]]
    assert sorted(models) == ["galaxyvit-linformer", "galaxyvit-vit", "galaxyvit-vitbase"]
    requirements = (bento / "env" / "python" / "requirements.in").read_text()
    assert "onnxruntime-gpu" in requirements and "torch" not in requirements
    assert {"orjson", "simplejpeg"} <= {line.split("==")[0] for line in requirements.splitlines()}
    assert not (bento / "src" / "training").exists()
    assert "\nUSER bentoml" in (bento / "env" / "docker" / "Dockerfile").read_text()  # non-root container

    # the bento serves from its own folder: its src/ is the working directory and the only code on PYTHONPATH
    src = bento / "src"
    assert {"serving", "inference", "galaxyvit"} <= {p.name for p in src.iterdir()}
    assert not list(src.rglob("__pycache__"))
    settings = {"models": "vit", "intra_op_threads": 1}
    served = ServerProcess(settings, store=home, workdir=tmp_path / "serve", env={"PYTHONPATH": ""}, code=src)
    assert served.env["PYTHONPATH"] == str(src) and ROOT not in (src, *src.parents)
    with served:
        r = httpx.post(served.url + "/classify", files=[("images", REAL[0].read_bytes())], timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["model"] == "vit"
        workers = [p for p in process_tree(served.pid) if "--service-name" in p.cmdline()]
        assert workers and all(Path(p.cwd()) == src for p in workers)  # the bento's code, not the checkout's
