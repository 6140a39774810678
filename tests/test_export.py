"""ONNX export: parity gate for all three families (logits and the CLS embedding), model cards, integrity
check, --best, registration, the class-stratified validation sample of the gate. The explain variant,
calibration and the OOD rule of an export: tests/test_export_explain.py."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from tiny_galaxies import HEADER, galaxy_image
from transformers import ViTConfig

from app.cli import main as cli_main
from galaxyvit.card import CardError, IntegrityError, load_card, load_verified, verified_artifact
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import Preprocessing
from galaxyvit.store import model_store, tag
from training import export, export_gate
from training.checkpoint import save_model
from training.embeddings import logits_and_embeddings
from training.export import ExportError, export_checkpoint
from training.export_gate import gate_inputs, ort_session, read_valid_split, stratified_sample
from training.metrics import RunMetrics
from training.models import build_model
from training.onnx_graph import export_ready
from training.registry import get_run
from training.synthetic import write_dataset
from training.vitbase import build_vitbase

TINY_VITBASE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224, patch_size=32
)


def _model(run_id: str):
    torch.manual_seed(0)
    if run_id.startswith("vitbase"):
        return get_run(run_id), build_vitbase(pretrained=False, config=ViTConfig(**TINY_VITBASE))
    run = get_run(run_id)
    if run.family == "vit":
        run = run.with_overrides(depth=2)  # the architecture of vit-110321, shallower to stay fast
    model = build_model(run, pretrained=False)
    # a few SGD steps so that the weights are not the initial ones
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 224, 224)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run, model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for run_id in ("vit-110321", "linformer-010522", "vitbase-121121"):
        run, model = _model(run_id)
        save_model(root / run_id / "best.pt", model, run, epoch=2, valid_acc=0.25)
        paths[run_id] = root / run_id / "best.pt"
    return paths


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth") / "data", 64, seed=1, workers=1, progress=False)


@pytest.fixture
def bentoml_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return tmp_path / "bentoml"


@pytest.mark.parametrize("run_id", ["vit-110321", "linformer-010522", "vitbase-121121"])
def test_export_passes_parity_and_registers(run_id, checkpoints, valid_dir, tmp_path, bentoml_home):
    (card,) = export_checkpoint(checkpoints[run_id], out_root=tmp_path / "models", valid_dir=valid_dir, quiet=True)
    model_dir = tmp_path / "models" / run_id
    files = ["explain.onnx", "fp32.card.json", "fp32.onnx", "fp32.reliability.png"]
    if card.ood["method"] == "mahalanobis":
        files.append("ood_gaussians.npz")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(files)  # self-contained: no external data
    assert sorted(entry["file"] for entry in card.artifacts.values()) == sorted(
        set(files) - {"fp32.card.json", "fp32.onnx"}
    )
    onnx_path, loaded = load_verified(model_dir, "fp32")
    assert loaded == load_card(model_dir / "fp32.card.json") and loaded.to_dict() == card.to_dict()
    assert card.run_id == run_id and card.family == get_run(run_id).family and card.class_names == list(CLASS_NAMES)
    assert card.opset == export.OPSET and card.variant == "fp32" and card.params > 0

    parity = card.parity
    assert parity["provider"] == "CPUExecutionProvider"
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["n_random"] > 0 and parity["n_valid"] > 0
    assert parity["n_real"] == len(list((REAL_SAMPLE_IMAGES).glob("*.jpg"))) > 0
    assert parity["onnx_valid_acc"] == parity["torch_valid_acc"]

    # dynamic batch axis, names, and the same logits as PyTorch at another batch size
    graph = onnx.load(str(onnx_path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["logits", "embedding"]  # logits first, as before
    assert card.output_name == "logits" and card.embedding_name == "embedding"
    assert parity["max_abs_embedding_diff"] <= parity["embedding_tolerance"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    from training.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoints[run_id])
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model(images).numpy()
    got, embedding = ort_session(onnx_path).run(["logits", "embedding"], {"images": images.numpy()})
    assert got.shape == (3, len(CLASS_NAMES)) and np.abs(got - expected).max() <= 1e-4
    _, head_input = logits_and_embeddings(model, images)  # what the PyTorch head reads
    assert (
        embedding.shape == head_input.shape and np.abs(embedding - head_input).max() <= 1e-4 * np.abs(head_input).max()
    )

    import bentoml

    registered = bentoml.models.get(tag(run_id), _model_store=model_store())
    assert str(registered.tag) == tag(run_id, card.version)
    assert registered.info.labels["family"] == card.family and registered.info.labels["run_id"] == run_id
    assert registered.info.metadata["sha256"] == card.sha256
    load_verified(registered.path, "fp32")  # the store copy is complete and intact, artifacts included
    assert all(verified_artifact(registered.path, card, key).is_file() for key in card.artifacts)


@pytest.mark.parametrize("run_id", ["vit-110321", "linformer-010522"])
def test_export_graph_rewrite_keeps_the_function(run_id, checkpoints, tmp_path):
    """The export-time swaps (conv patch embedding, MatMul attention) compute what the trained model computes."""
    from training.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoints[run_id])
    rewritten = export_ready(model)
    assert rewritten is not model and any(type(m).__name__ == "PatchEmbedding" for m in model.modules())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (rewritten(images) - model(images)).abs().max() <= 1e-5
    fresh, _ = model_from_checkpoint(checkpoints[run_id])  # the original was not modified in place
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    export.export_onnx(model, tmp_path / "m.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Einsum" not in ops and "Split" not in ops and ops.count("Conv") == 1


def test_quantised_variants_record_drift_and_accuracy(checkpoints, valid_dir, tmp_path):
    cards = export_checkpoint(
        checkpoints["vit-110321"],
        out_root=tmp_path,
        name="q",
        variants=("int8", "fp16"),
        valid_dir=valid_dir,
        register=False,
        quiet=True,
    )
    assert [c.variant for c in cards] == ["fp32", "int8", "fp16"]
    for card in cards[1:]:
        assert 0 < card.parity["max_abs_logit_diff"] < 1.0  # quantised: drift is real and recorded
        assert card.parity["valid_acc_change"] >= -export_gate.MAX_ACC_DROP
        assert card.version == cards[0].version and card.sha256 != cards[0].sha256
        assert 0 < card.parity["max_abs_embedding_diff"] and card.parity["embedding_tolerance"] is None
        assert card.artifacts["explain"] == cards[0].artifacts["explain"]  # one explain.onnx, fp32
        assert card.artifacts["reliability_diagram"]["file"] == f"{card.variant}.reliability.png"
        assert card.calibration["n_samples"] == cards[0].calibration["n_samples"] > 0  # fitted on its own outputs
        path, _ = load_verified(tmp_path / "q", card.variant)
        outputs = ort_session(path).run(["logits", "embedding"], {"images": np.zeros((2, 3, 224, 224), np.float32)})
        assert [o.dtype for o in outputs] == [np.float32] * 2 and outputs[0].shape == (2, len(CLASS_NAMES))
    assert (tmp_path / "q" / "int8.onnx").stat().st_size < (tmp_path / "q" / "fp32.onnx").stat().st_size / 2


def test_corrupted_artifact_and_bad_cards_are_refused(checkpoints, tmp_path):
    export_checkpoint(checkpoints["vitbase-121121"], out_root=tmp_path, name="m", register=False, quiet=True)
    model_dir = tmp_path / "m"
    blob = bytearray((model_dir / "fp32.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (model_dir / "fp32.onnx").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="does not match its model card"):
        load_verified(model_dir, "fp32")

    card = json.loads((model_dir / "fp32.card.json").read_text())
    (model_dir / "fp32.card.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_verified(model_dir, "fp32")
    del card["sha256"]
    (model_dir / "fp32.card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="sha256"):
        load_verified(model_dir, "fp32")
    (model_dir / "fp32.card.json").unlink()
    with pytest.raises(CardError, match="missing"):
        load_verified(model_dir, "fp32")


def test_failed_fp32_gate_writes_and_registers_nothing(checkpoints, tmp_path, bentoml_home, monkeypatch):
    out = tmp_path / "models"
    monkeypatch.setattr(export_gate, "FP32_TOLERANCE", -1.0)  # no export can meet it
    with pytest.raises(ExportError, match="fp32 parity gate failed"):
        export_checkpoint(checkpoints["vit-110321"], out_root=out, quiet=True, explain=False)
    assert list(out.iterdir()) == []  # no model folder, no temp folder
    assert model_store().list() == []


def test_quantised_variant_refused_alone(checkpoints, valid_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_gate, "MAX_ACC_DROP", -1.0)  # demands a 100-point accuracy gain: int8 is refused
    cards = export_checkpoint(
        checkpoints["vit-110321"], out_root=tmp_path, variants=("int8",), valid_dir=valid_dir, register=False
    )
    assert [c.variant for c in cards] == ["fp32"]
    assert not [p.name for p in (tmp_path / "vit-110321").iterdir() if p.name.startswith("int8")]
    assert "int8 refused: validation accuracy" in capsys.readouterr().err


def test_best_picks_highest_valid_acc(checkpoints, tmp_path, capsys):
    results = tmp_path / "results"
    for run_dir, acc, with_checkpoint in [("a", 0.41, True), ("b", 0.63, True), ("c", 0.55, True), ("d", 0.9, False)]:
        (results / run_dir).mkdir(parents=True, exist_ok=True)
        RunMetrics(
            run_id=f"vit-{run_dir}",
            family="vit",
            split="test",
            test_acc=acc - 0.01,
            per_class_acc=[acc] * 8,
            macro_recall=acc,
            macro_f1=acc,
            confusion_matrix=np.eye(8).tolist(),
            confusion_counts=np.eye(8, dtype=int).tolist(),
            n_evaluated=8,
            n_unreadable=0,
            class_names=list(CLASS_NAMES),
            data={"kind": "gz2", "path": "gz2_splits", "n_train": 8, "n_valid": 8, "n_test": 8},
            valid_acc=acc,
        ).save(results / run_dir / "metrics.json")
        if with_checkpoint:
            shutil.copy(checkpoints["vit-110321"], results / run_dir / "best.pt")
    out = tmp_path / "models"
    code = cli_main(["export", "--best", str(results), "--out", str(out), "--name", "best", "--no-register"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"chose {results / 'b' / 'best.pt'}" in printed and "63.00" in printed and "missing" in printed
    card = load_card(out / "best" / "fp32.card.json")
    assert card.valid_acc == 0.63 and card.test_acc == pytest.approx(0.62) and card.per_class_acc == [0.63] * 8
    assert card.confusion_matrix == np.eye(8).tolist()


def test_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["export", str(tmp_path / "best.pt"), "--out", str(tmp_path / "m"), "--no-register"]) == 1
    assert "unreadable" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


def write_class_sorted_valid(root, counts: list[int]) -> list[int]:
    """root/valid.csv sorted by class (counts[c] rows of class c) + tiny JPEGs in root/images; the labels."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    rows = []
    for i, label in enumerate(labels):
        galaxy_image(label, rng, size=32).save(root / "images" / f"{500 + i}.jpg")
        rows.append(f"{500 + i},{label},0,0,0\n")
    (root / "valid.csv").write_text(HEADER + "".join(rows))
    return labels


def test_gate_samples_validation_images_stratified_by_class(tmp_path):
    """On a CSV sorted by class, the gate's validation images are every class in its share, not the first rows."""
    labels = write_class_sorted_valid(tmp_path, [40, 20, 10, 10])  # 80 rows: 50%, 25%, 12.5%, 12.5%
    paths, picked = read_valid_split(tmp_path, 16, num_classes=4)
    assert np.bincount(picked, minlength=4).tolist() == [8, 4, 2, 2]
    assert [int(p.stem) - 500 for p in paths] != list(range(16))  # not the first rows (all of class 0)
    assert [labels[int(p.stem) - 500] for p in paths] == picked
    assert read_valid_split(tmp_path, 16, num_classes=4) == (paths, picked)  # fixed seed: the same sample
    inputs = gate_inputs(Preprocessing(), 4, valid_dir=tmp_path, samples_dir=None, max_valid=16)
    assert inputs.kinds.count("valid") == 16 and inputs.labels.tolist() == picked
    assert stratified_sample([0] * 5 + [1] * 5, 20) == list(range(10))  # fewer rows than the limit: all of them
    spare = stratified_sample([0] * 3 + [1] * 3 + [2] * 3, 4)  # 4 places for 3 equal classes: one gets two
    assert len(spare) == 4 and sorted(np.bincount([(i // 3) for i in spare], minlength=3).tolist()) == [1, 1, 2]
