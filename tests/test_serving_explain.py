"""Calibrated probabilities, the not-a-galaxy flag, 8-view averaging and POST /explain, through the service.

Through `bentoml serve` (serving.process.ServerProcess): a tiny ViT made invariant under the 8 dihedral
views by construction, exported with validation images (so it is calibrated), whose OOD rule is fitted
here on its own embeddings; and the same weights exported without the explain variant and without
validation images. The shared `server` fixture serves /explain for the three tiny families, with
worker processes none of which loads torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from calibrated_models import fit_rule_into_store
from PIL import Image
from tiny_galaxies import galaxy_image, write_tiny_dataset

from galaxyvit.calibration import softmax
from galaxyvit.card import load_card, verified_artifact
from galaxyvit.ood import GAUSSIANS_ARTIFACT
from galaxyvit.overlay import GAP, crop_box
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import eval_batch, eval_crop
from galaxyvit.store import stored_model_dir
from inference.runtime import load_model
from serving.process import ServerProcess
from training.checkpoint import save_model
from training.export import export_checkpoint
from training.models import build_model
from training.ood_images import ood_images
from training.registry import get_run

REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def images_of(blobs: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """BentoML home with `inv` (dihedral-invariant, calibrated, OOD rule, explain) and `plain` (same weights,
    no calibration, no rule, no explain), and the tiny dataset."""
    root = tmp_path_factory.mktemp("explainserve")
    data = write_tiny_dataset(root / "data", n_train=64, n_valid=32, n_test=8)
    run = get_run("vit-110421").with_overrides(depth=2, dim=32, heads=2, mlp_dim=64)
    torch.manual_seed(0)
    model = build_model(run, pretrained=False).eval()
    with torch.no_grad():
        # a rotated or mirrored patch has the same channel means, and without position embeddings attention
        # is the same for any order of the patches: the 8 views of a crop give the same logits
        linear, p = model.to_patch_embedding[1], model.to_patch_embedding.patch_size
        weight = linear.weight.view(linear.weight.shape[0], p * p, 3)
        weight.copy_(weight.mean(1, keepdim=True).expand_as(weight))
        model.pos_embedding.zero_()
        model.mlp_head[1].weight.mul_(3.0)  # logits spread over a few units: a temperature far from 1
    save_model(root / "best.pt", model, run, epoch=1, valid_acc=0.0)
    home = root / "home"
    common = dict(home=home, quiet=True, max_train=64)
    export_checkpoint(root / "best.pt", root / "models", "inv", valid_dir=data, ood_per_kind=2, **common)
    export_checkpoint(root / "best.pt", root / "models", "plain", explain=False, **common)
    fit_rule_into_store(home, "inv", data)
    return home, data


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    """A `bentoml serve` of `inv` and `plain` (up to 16 images, so 2 with tta=8), and an HTTP client of it.
    (One process holds one in-process service: tests/test_serving.py's.)"""
    settings = {"models": "inv,plain", "max_images": 16, "intra_op_threads": 1}
    workdir = tmp_path_factory.mktemp("server")
    with ServerProcess(settings, store=models[0], workdir=workdir, ready_timeout=180) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def galaxies() -> list[bytes]:
    rng = np.random.default_rng(7)
    return [p.read_bytes() for p in REAL] + [jpeg(galaxy_image(k % 8, rng)) for k in range(8)]


def raw(client: httpx.Client, blob: bytes, path: str = "/classify/raw", **params: str):
    return client.post(path, params=params, content=blob, headers={"Content-Type": "image/jpeg"})


def probs_of(prediction: dict) -> np.ndarray:
    return np.array(list(prediction["probabilities"].values()))


def test_calibrated_probabilities_are_softmax_of_logits_over_t(client, models, galaxies):
    home, _ = models
    folder = stored_model_dir("inv", home)
    offline = load_model("ref", folder, device="cpu", threads=1)
    logits, _ = offline.outputs(eval_batch(images_of(galaxies), offline.card.prep))
    temperature = offline.card.temperature
    assert offline.card.calibration is not None and abs(temperature - 1) > 0.05
    files = [("images", (f"g{i}.jpg", b)) for i, b in enumerate(galaxies[:8])]
    answer = client.post("/classify", files=files, data={"model": "inv"}).json()["predictions"]
    for prediction, row in zip(answer, logits[:8], strict=True):
        assert prediction["calibrated"] is True and prediction["tta"] == 1 and "spread" not in prediction
        np.testing.assert_allclose(probs_of(prediction), softmax(row[None], temperature)[0], atol=1e-5)

    plain = raw(client, galaxies[0], model="plain").json()  # no calibration, no rule
    assert plain["calibrated"] is False and plain["ood_score"] is None and plain["in_distribution"] is None


def test_with_calibrate_off_the_old_probabilities_come_back_exactly(models, galaxies, tmp_path):
    """Through `bentoml serve` with `calibrate` off: bit for bit the plain softmax of a fresh session."""
    home, _ = models
    offline = load_model("ref", stored_model_dir("inv", home), device="cpu", threads=1)
    settings = {"models": "inv", "calibrate": False, "intra_op_threads": 1}
    with ServerProcess(settings, store=home, workdir=tmp_path, ready_timeout=180) as server:
        for blob in galaxies[:4]:
            expected = offline.predict(eval_batch(images_of([blob]), offline.card.prep))[0]
            answer = httpx.post(f"{server.url}/classify/raw", content=blob, headers={"Content-Type": "image/jpeg"})
            assert answer.json()["calibrated"] is False
            assert list(probs_of(answer.json())) == [float(v) for v in expected]


def test_eight_views_of_an_invariant_model_equal_one_view(client, galaxies):
    for blob in galaxies[:4]:
        one, eight = raw(client, blob, model="inv").json(), raw(client, blob, model="inv", tta="8").json()
        assert eight["tta"] == 8 and 0 <= eight["spread"] < 1e-5
        assert eight["label"] == one["label"] and eight["in_distribution"] == one["in_distribution"]
        np.testing.assert_allclose(probs_of(eight), probs_of(one), atol=1e-5)
    form = client.post("/classify", files=[("images", ("a.jpg", galaxies[0]))], data={"model": "inv", "tta": "8"})
    assert form.status_code == 200 and form.json()["predictions"][0]["tta"] == 8


def test_eight_views_of_a_model_that_is_not_invariant_report_their_spread(client, galaxies, models):
    """`plain` scores the 8 views differently once the patch weights differ; the answer is their mean."""
    from galaxyvit.preprocess import eval_crop, normalize
    from galaxyvit.tta import dihedral_views, tta_probabilities

    home, _ = models
    offline = load_model("ref", stored_model_dir("plain", home), device="cpu", threads=1)
    crop = eval_crop(images_of([galaxies[0]])[0], offline.card.prep)
    views = dihedral_views(np.asarray(crop))
    mean, spread = tta_probabilities(offline.predict(normalize(views, offline.card.prep)))
    answer = raw(client, galaxies[0], model="plain", tta="8").json()
    np.testing.assert_allclose(probs_of(answer), mean, atol=1e-5)
    assert answer["spread"] == pytest.approx(float(spread), abs=1e-5)


@pytest.mark.parametrize("value", ["3", "0", "2", "eight", "-8", "8.0"])
def test_tta_other_than_1_or_8_is_a_400(client, galaxies, value):
    for response in (
        raw(client, galaxies[0], tta=value),
        client.post("/classify", files=[("images", ("a.jpg", galaxies[0]))], data={"tta": value}),
    ):
        assert response.status_code == 400 and response.json()["kind"] == "bad_tta", response.text


def test_views_count_against_the_image_limit(client, galaxies):
    files = [("images", (f"{i}.jpg", galaxies[i])) for i in range(3)]  # 3 x 8 views > max_images 16
    response = client.post("/classify", files=files, data={"tta": "8"})
    assert response.status_code == 413 and response.json()["kind"] == "too_many_images"
    ok = client.post("/classify", files=files[:2], data={"tta": "8"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_ood_flag_rejects_blank_sky_and_noise_and_accepts_galaxies(client, galaxies, models):
    home, _ = models
    folder = stored_model_dir("inv", home)
    card = load_card(folder / "fp32.card.json")
    assert card.ood is not None and card.ood["method"] == "mahalanobis"
    verified_artifact(folder, card, GAUSSIANS_ARTIFACT)
    others = [jpeg(Image.fromarray(image)) for _, image in ood_images(3, seed=0, kinds=("blank_sky", "pure_noise"))]
    others.append(jpeg(Image.new("RGB", (424, 424), (0, 0, 0))))
    for blob in others:
        answer = raw(client, blob, model="inv").json()
        assert answer["in_distribution"] is False and answer["ood_score"] < card.ood["threshold"]
    flags = [raw(client, blob, model="inv", tta="8").json()["in_distribution"] for blob in galaxies[3:]]
    assert sum(flags) >= 6, flags  # synthetic galaxies the rule never saw: most pass (95% of validation did)


def explain_reference(folder: Path, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, rollout, heads) of explain.onnx for one image, outside the service."""
    card = load_card(folder / "fp32.card.json")
    session = ort.InferenceSession(str(verified_artifact(folder, card, "explain")), providers=["CPUExecutionProvider"])
    names = ["logits", "rollout", "heads"]
    logits, rollout, heads = session.run(names, {"images": eval_batch(images_of([blob]), card.prep)})
    return logits[0], rollout[0], heads[0]


def test_explain_answers_the_prediction_and_the_rollout(client, models, galaxies):
    home, _ = models
    folder = stored_model_dir("inv", home)
    temperature = load_card(folder / "fp32.card.json").temperature
    for blob in galaxies[:3]:
        logits, rollout, heads = explain_reference(folder, blob)
        answer = raw(client, blob, "/explain", model="inv").json()
        assert answer["map_method"] == "rollout" and answer["grid"] == rollout.shape[0] == len(answer["rollout"])
        np.testing.assert_allclose(np.array(answer["rollout"]), rollout, atol=1e-5)
        assert np.array(answer["heads"]).shape == heads.shape == (2, *rollout.shape)  # the tiny ViT's 2 heads
        np.testing.assert_allclose(np.array(answer["heads"]), heads, atol=1e-5)
        np.testing.assert_allclose(probs_of(answer), softmax(logits[None], temperature)[0], atol=1e-5)
        assert answer["calibrated"] is True and isinstance(answer["in_distribution"], bool)
        assert client.post("/feedback", json={"request_id": answer["request_id"], "label": 0}).status_code == 200

    picture = raw(client, galaxies[0], "/explain", model="inv", format="png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(picture.content)).convert("RGB"))
    left, top, right, bottom = crop_box(224, "title\nmodel")  # a title of two lines: prediction, model
    crop = np.asarray(eval_crop(images_of([galaxies[0]])[0], load_card(folder / "fp32.card.json").prep))
    np.testing.assert_array_equal(image[top:bottom, left:right], crop)  # the crop the model saw, then the overlay
    shifted = image[top:bottom, right + GAP : right + GAP + 224]
    assert shifted.shape == crop.shape and (shifted != crop).any()
    assert picture.headers["x-class-name"] in load_card(folder / "fp32.card.json").class_names


def test_explain_refuses_what_classify_refuses(client, galaxies):
    big = io.BytesIO()
    Image.new("RGB", (5000, 5000)).save(big, format="PNG")
    cases = [
        ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, {}),
        ({"content": b"not an image", "headers": {"Content-Type": "image/jpeg"}}, {}),
        ({"content": galaxies[0], "headers": {"Content-Type": "text/plain"}}, {}),
        ({"content": galaxies[0], "headers": {"Content-Type": "image/jpeg"}}, {"model": "nope"}),
        ({"content": big.getvalue(), "headers": {"Content-Type": "image/png"}}, {}),
    ]
    for request, params in cases:
        classify = client.post("/classify/raw", params=params, **request)
        explain = client.post("/explain", params=params, **request)
        assert 400 <= classify.status_code < 500 and explain.status_code == classify.status_code, explain.text
        assert explain.json()["kind"] == classify.json()["kind"]
    missing = raw(client, galaxies[0], "/explain", model="plain")
    assert missing.status_code == 404 and missing.json()["kind"] == "no_explain"
    bad = raw(client, galaxies[0], "/explain", model="inv", format="gif")
    assert bad.status_code == 400 and bad.json()["kind"] == "bad_format"


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return found


def test_explain_through_bentoml_serve_without_torch(server, tiny_models):
    _, dirs = tiny_models
    blob = REAL[0].read_bytes()
    for name in ("vit", "linformer"):
        response = httpx.post(
            f"{server.url}/explain", params={"model": name}, content=blob, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        _, rollout, heads = explain_reference(dirs[name], blob)
        np.testing.assert_allclose(np.array(answer["rollout"]), rollout, atol=1e-5)
        np.testing.assert_allclose(np.array(answer["heads"]), heads, atol=1e-5)
        assert heads.ndim == 3 and heads.shape[1:] == rollout.shape
        if name == "linformer":  # it has no rollout: its overview is the head mean (training/attention.py)
            np.testing.assert_allclose(np.array(answer["heads"]).mean(axis=0), answer["rollout"], atol=1e-5)
        assert answer["map_method"] == ("rollout" if name == "vit" else "linformer-value-projection")
        picture = httpx.post(f"{server.url}/explain?format=png", content=blob, headers={"Content-Type": "image/jpeg"})
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        eight = httpx.post(f"{server.url}/classify/raw?tta=8&model={name}", content=blob,
                           headers={"Content-Type": "image/jpeg"})  # fmt: skip
        assert eight.status_code == 200 and eight.json()["tta"] == 8 and eight.json()["spread"] >= 0
    processes = descendants(server.pid)
    assert len(processes) >= 3  # bentoml serve, an API worker, an inference worker
    for pid in processes:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, pid


def test_open_inference_protocol_answers_calibrated_with_the_ood_score(client, galaxies):
    """POST /v2/models/inv/infer (serving/oip.py) on a calibrated model with an OOD rule: /classify's
    calibrated probabilities and OOD scores, and the embedding the rule was fitted on when asked for."""
    import base64

    files = [("images", (f"g{i}.jpg", b)) for i, b in enumerate(galaxies[:4])]
    expected = client.post("/classify", files=files, data={"model": "inv"}).json()["predictions"]
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [4]}
    tensor["data"] = [base64.b64encode(b).decode() for b in galaxies[:4]]
    wanted = [{"name": n} for n in ("probabilities", "ood_score", "embedding")]
    answer = client.post("/v2/models/inv/infer", json={"inputs": [tensor], "outputs": wanted})
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    probabilities = np.reshape(outputs["probabilities"]["data"], outputs["probabilities"]["shape"])
    np.testing.assert_allclose(probabilities, [probs_of(p) for p in expected], atol=1e-5)
    assert all(p["calibrated"] for p in expected)
    np.testing.assert_allclose(outputs["ood_score"]["data"], [p["ood_score"] for p in expected], rtol=1e-5)
    assert outputs["embedding"]["shape"] == [4, 32]  # the tiny ViT's dim
    metadata = client.get("/v2/models/inv").json()
    assert {o["name"]: o["shape"] for o in metadata["outputs"]}["embedding"] == [-1, 32]
    assert "ood_score" not in {o["name"] for o in client.get("/v2/models/plain").json()["outputs"]}
