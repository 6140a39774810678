"""What an export adds for the service: the fitted temperature and not-a-galaxy rule in the card (applied with
numpy and ONNX Runtime alone, as the service will), the OOD Gaussians artifact, the explain variant and the
embedding output under the parity gate, and old cards that still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from tiny_galaxies import HEADER, write_tiny_dataset

from galaxyvit.calibration import fit_temperature, nll, softmax
from galaxyvit.card import IntegrityError, load_card, sha256_file, verified_artifact
from galaxyvit.ood import METHODS, load_ood_rule
from galaxyvit.preprocess import Preprocessing, denormalize
from galaxyvit.store import model_store, register_model, stored_model_dir
from training import export_gate
from training.attention import attention_maps
from training.checkpoint import model_from_checkpoint, save_model
from training.embeddings import logits_and_embeddings
from training.export import ExportError, export_checkpoint
from training.export_gate import (
    CLASSIFIER_OUTPUTS,
    EXPLAIN_OUTPUTS,
    gate_inputs,
    load_images,
    ort_outputs,
    ort_session,
    read_valid_split,
)
from training.models import build_model
from training.ood_images import OOD_KINDS
from training.random_models import export_random
from training.registry import get_run

N_VALID, OOD_PER_KIND, SHARPEN = 96, 3, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n_train=32, n_valid=N_VALID, n_test=8)


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory, data):
    """A tiny ViT over-confident by construction, exported with validation images and registered;
    (model folder, fp32 card, checkpoint, BentoML home).

    As the unit test's fixture (tests/test_calibration.py): with random weights the model's logits z are
    calibrated for labels drawn from softmax(z), so the validation labels are drawn that way (the head
    scaled first so that z spreads over a few units), and then the head is scaled by SHARPEN: its logits
    are SHARPEN * z, over-confident, and the best temperature is about SHARPEN."""
    root = tmp_path_factory.mktemp("overconfident")
    run = get_run("vit-110321").with_overrides(depth=2, dim=32, heads=2, mlp_dim=64)
    torch.manual_seed(0)
    model = build_model(run, pretrained=False).eval()
    paths, _ = read_valid_split(data, N_VALID, 8)
    images = torch.from_numpy(load_images(paths, Preprocessing(), "valid"))
    head = model.mlp_head[1]
    with torch.no_grad():
        scale = 1.5 / float(model(images).std())  # z = scale * the random logits: a spread of a few units
        head.weight.mul_(scale)
        head.bias.mul_(scale)
        rng = np.random.default_rng(0)
        labels = [int(rng.choice(8, p=row)) for row in softmax(model(images).double().numpy())]
        head.weight.mul_(SHARPEN)  # logits SHARPEN * z: over-confident
        head.bias.mul_(SHARPEN)
    rows = [f"{path.stem},{label},{label},{label},{label}\n" for path, label in zip(paths, labels)]
    (data / "gz2_valid.csv").write_text(HEADER + "".join(rows))
    save_model(root / "best.pt", model, run, epoch=1, valid_acc=0.0)
    (card,) = export_checkpoint(
        root / "best.pt",
        root / "models",
        "oc",
        valid_dir=data,
        ood_per_kind=OOD_PER_KIND,
        home=root / "home",
        quiet=True,
    )
    return root / "models" / "oc", card, root / "best.pt", root / "home"


def valid_outputs(model_dir, card, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, embeddings, labels) of the gate's validation images from fp32.onnx alone, run on the gate's
    inputs in the gate's batches (so that the numbers are those the export saw, to the last bit)."""
    inputs = gate_inputs(card.prep, len(card.class_names), data, max_valid=512)
    logits, embeddings = ort_outputs(ort_session(model_dir / card.onnx_file), inputs.images, CLASSIFIER_OUTPUTS)
    return logits[inputs.valid_rows], embeddings[inputs.valid_rows], inputs.labels


def test_export_fits_the_temperature_of_an_overconfident_model(overconfident, data):
    model_dir, card, _, _ = overconfident
    cal = card.calibration
    assert cal["n_bins"] == 15 and cal["n_samples"] == N_VALID
    assert SHARPEN / 2 < cal["temperature"] < SHARPEN * 2 and card.temperature == cal["temperature"]  # undoes it
    assert cal["nll_after"] < cal["nll_before"] - 0.5 and cal["ece_after"] < cal["ece_before"] / 2
    # the service's side: the numbers follow from fp32.onnx's logits and softmax(logits / T)
    logits, _, labels = valid_outputs(model_dir, card, data)
    assert nll(logits, labels, card.temperature) == pytest.approx(cal["nll_after"], abs=1e-5)
    assert fit_temperature(logits, labels) == pytest.approx(cal["temperature"], rel=1e-4)
    calibrated = softmax(logits, card.temperature)
    assert calibrated.max(1).mean() < softmax(logits).max(1).mean()  # less confident, same answers
    np.testing.assert_array_equal(calibrated.argmax(1), logits.argmax(1))
    diagram = verified_artifact(model_dir, card, "reliability_diagram")
    assert diagram.name == "fp32.reliability.png" and Image.open(diagram).format == "PNG"


def test_export_fits_an_ood_rule_the_service_applies_with_numpy(overconfident, data):
    model_dir, card, _, home = overconfident
    ood = card.ood
    assert set(ood["aurocs"]) == set(METHODS) and ood["method"] == max(ood["aurocs"], key=ood["aurocs"].get)
    assert ood["n_valid"] == N_VALID and ood["n_ood"] == len(OOD_KINDS) * OOD_PER_KIND and ood["keep"] == 0.95
    assert ood["valid_pass_rate"] >= 0.95
    # on a model whose logits say nothing, the embedding-space score is the one that separates (docs/explain.md)
    assert ood["method"] == "mahalanobis" and card.artifacts["ood_gaussians"]["file"] == "ood_gaussians.npz"

    logits, embeddings, _ = valid_outputs(model_dir, card, data)
    rule = load_ood_rule(model_dir, card)
    assert (rule.scores(logits, embeddings) >= rule.threshold).mean() == pytest.approx(ood["valid_pass_rate"])
    # with the pixel rule fitted on the training images' crops: both must pass
    inputs = gate_inputs(card.prep, len(card.class_names), data, max_valid=512)
    crops = denormalize(inputs.images[inputs.valid_rows], card.prep)
    both = rule.in_distribution(logits, embeddings, crops).mean()
    assert rule.pixels is not None and both == pytest.approx(ood["pixels"]["both_pass_rate"])
    # the documented formula, by hand from the .npz: score = -min_c (e - mu_c)^T P (e - mu_c)
    with np.load(model_dir / "ood_gaussians.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["means", "precision"]
        means, precision = npz["means"], npz["precision"]
    assert means.dtype == precision.dtype == np.float64 and precision.shape == (means.shape[1],) * 2
    centred = embeddings.astype(np.float64)[:, None, :] - means[None]
    by_hand = -np.einsum("ncd,de,nce->nc", centred, precision, centred).min(axis=1)
    np.testing.assert_allclose(rule.scores(logits, embeddings), by_hand, rtol=1e-7)
    assert (rule.scores(logits, embeddings) >= ood["threshold"]).mean() == ood["valid_pass_rate"]

    stored = stored_model_dir("oc", home)  # the model store holds the artifacts too
    assert load_ood_rule(stored, load_card(stored / "fp32.card.json")).threshold == ood["threshold"]


def test_a_modified_ood_artifact_is_refused(overconfident, tmp_path):
    model_dir, card, _, _ = overconfident
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    blob = bytearray((copy / "ood_gaussians.npz").read_bytes())
    blob[-40] ^= 0xFF
    (copy / "ood_gaussians.npz").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="ood_gaussians"):
        load_ood_rule(copy, card)
    (copy / "ood_gaussians.npz").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_ood_rule(copy, card)


def test_a_card_from_before_these_fields_still_loads(overconfident, tmp_path):
    model_dir, _, _, _ = overconfident
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(model_dir / "fp32.onnx", old / "fp32.onnx")
    card = json.loads((model_dir / "fp32.card.json").read_text())
    for key in ("embedding_name", "calibration", "ood", "explain", "artifacts"):
        del card[key]
    for key in ("max_abs_embedding_diff", "embedding_tolerance"):
        del card["parity"][key]
    (old / "fp32.card.json").write_text(json.dumps(card))
    loaded = load_card(old / "fp32.card.json")
    assert loaded.temperature == 1.0 and loaded.embedding_name is None and loaded.artifacts == {}
    assert load_ood_rule(old, loaded) is None and loaded.explain is None
    assert register_model(old, tmp_path / "home").startswith("galaxyvit-oc:")  # registers without artifacts


@pytest.mark.parametrize("family", ["vit", "linformer", "vitbase"])
def test_explain_variant_and_embedding_match_pytorch(family, tmp_path):
    model_dir = export_random(family, tmp_path, tmp_path / "home", tiny=True)
    card = load_card(model_dir / "fp32.card.json")
    explain = verified_artifact(model_dir, card, "explain")
    assert explain.name == "explain.onnx" and card.artifacts["explain"]["sha256"] == sha256_file(explain)
    assert [o.name for o in onnx.load(str(explain)).graph.output] == list(EXPLAIN_OUTPUTS) == card.explain["outputs"]
    assert card.explain["map_method"] == ("linformer-value-projection" if family == "linformer" else "rollout")
    parity = card.explain["parity"]
    assert parity["top1_agreement"] == 1.0 and parity["n_inputs"] == card.parity["n_inputs"]
    assert all(parity[f"max_abs_{name}_diff"] <= parity[f"{name}_tolerance"] for name in EXPLAIN_OUTPUTS)

    model, _ = model_from_checkpoint(tmp_path / "checkpoints" / family / "best.pt")
    torch.manual_seed(1)
    images = torch.randn(3, 3, 224, 224)
    logits, embedding, heads, rollout = ort_session(explain).run(list(EXPLAIN_OUTPUTS), {"images": images.numpy()})
    fp32_logits, fp32_embedding = ort_session(model_dir / "fp32.onnx").run(
        ["logits", "embedding"], {"images": images.numpy()}
    )
    torch_logits, head_input = logits_and_embeddings(model, images)
    maps = attention_maps(model, images)
    g, h = card.explain["grid"], card.explain["heads"]
    assert rollout.shape == (3, g, g) and heads.shape == (3, h, g, g) and embedding.shape == head_input.shape
    for got in (logits, fp32_logits):
        np.testing.assert_allclose(got, torch_logits, atol=1e-4)
    for got in (embedding, fp32_embedding):  # the embedding output is the PyTorch head's input
        assert np.abs(got - head_input).max() <= 1e-4 * np.abs(head_input).max()
    np.testing.assert_allclose(rollout, maps.overview, atol=1e-4 * np.abs(maps.overview).max())
    np.testing.assert_allclose(heads, maps.heads, atol=1e-4 * np.abs(maps.heads).max())
    if family != "linformer":  # a distribution over the patches (the CLS token keeps the rest)
        assert (rollout.sum(axis=(1, 2)) <= 1 + 1e-5).all() and (rollout >= 0).all()


@pytest.mark.parametrize("explain", [False, True])
def test_an_embedding_or_map_off_the_gate_writes_nothing(explain, overconfident, tmp_path, monkeypatch):
    _, _, checkpoint, _ = overconfident
    monkeypatch.setattr(export_gate, "scaled_tolerance", lambda reference: -1.0)  # no output can meet it
    out = tmp_path / "models"
    stage = "explain parity gate failed: embedding" if explain else "fp32 parity gate failed: max |Δembedding|"
    with pytest.raises(ExportError, match=stage.replace("|", r"\|")):
        export_checkpoint(checkpoint, out, explain=explain, home=tmp_path / "home", quiet=True)
    assert list(out.iterdir()) == [] and model_store(tmp_path / "home").list() == []


def test_random_models_can_carry_calibration_and_ood(data, tmp_path):
    """The helper the serving tests use exports a model with the fitted fields when given validation data."""
    card = load_card(export_random("vit", tmp_path, tmp_path / "home", tiny=True, valid_dir=data) / "fp32.card.json")
    # the helper's max_valid, and its images per kind
    assert card.calibration["n_samples"] == 64 and card.ood["n_ood"] == len(OOD_KINDS) * 4
