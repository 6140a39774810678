"""Learning from few labels: the distillation loss against a hand computation, the DistillableViT layout and its
parameter count, the ResNet-50 teacher family, SimCLR's NT-Xent loss and views, a pre-trained encoder loading
into the classifier with only the head new, and `pretrain`, `train --init/--freeze` and `train --teacher` (a
checkpoint teacher and an ONNX one) from the command line on tiny data, with the distilled student exported."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_galaxies import write_tiny_dataset

from app.cli import main as cli_main
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.distill import DistillableViT, DistillationLoss, DistillNet, distillation_params, distillation_term
from training.distributed import GlobalWeightedLoss, Processes
from training.models import build_model, count_trainable_params
from training.pretrain import encoder_of, load_pretrained, save_pretrained
from training.registry import get_run
from training.resnet import resnet50
from training.simclr import galaxy_views, nt_xent

TINY_VIT = get_run("vit-110421").with_overrides(image_size=32, patch_size=8, depth=1, dim=16, heads=2, mlp_dim=16)
TINY_LINFORMER = get_run("linformer-010522").with_overrides(image_size=32, patch_size=8, depth=2, dim=16, heads=2, k=4)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_distillation_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    cls, dist, teacher = (rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3))
    labels = np.array([0, 2, 1, 2])
    weights = np.array([1.0, 2.0, 0.5], np.float32)
    alpha, tau = 0.3, 2.0
    # the run's weighted cross-entropy: sum(w_y * -log p_y) / sum(w_y)
    ce = -_log_softmax(cls)[np.arange(4), labels]
    class_loss = (weights[labels] * ce).sum() / weights[labels].sum()
    hard = -_log_softmax(dist)[np.arange(4), teacher.argmax(1)].mean()
    q = np.exp(_log_softmax(teacher / tau))
    soft = tau**2 * (q * (np.log(q) - _log_softmax(dist / tau))).sum(1).mean()

    t = {name: torch.from_numpy(a) for name, a in (("cls", cls), ("dist", dist), ("teacher", teacher))}
    class_fn = GlobalWeightedLoss(torch.from_numpy(weights), Processes())
    for mode, term in (("hard", hard), ("soft", soft)):
        assert float(distillation_term(t["dist"], t["teacher"], mode, tau)) == pytest.approx(term, rel=1e-5)
        loss, share = DistillationLoss(class_fn, mode, alpha, tau)(
            (t["cls"], t["dist"], t["teacher"]), torch.tensor(labels)
        )
        expected = (1 - alpha) * class_loss + alpha * term
        assert float(loss) == pytest.approx(expected, rel=1e-5) and share == pytest.approx(4 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="unknown distillation"):
        DistillationLoss(class_fn, "medium")


@pytest.mark.parametrize("run", [TINY_VIT, TINY_LINFORMER], ids=["vit", "linformer"])
def test_distillable_student_is_the_run_plus_one_token_and_one_head(run):
    torch.manual_seed(0)
    student = build_model(run.with_overrides(distill_token=True), num_classes=8)
    plain = build_model(run, num_classes=8)
    assert isinstance(student, DistillableViT) and not isinstance(plain, DistillableViT)
    token_and_head = 16 + 2 * 16 + 16 * 8 + 8  # token, LayerNorm, Linear
    linformer_rows = 2 * 2 * 4 if run.family == "linformer" else 0  # one more sequence row of E and F per layer
    extra = token_and_head + linformer_rows
    assert count_trainable_params(student) == count_trainable_params(plain) + extra
    assert distillation_params(run, 8) == (count_trainable_params(plain), count_trainable_params(plain) + extra)
    assert {"distillation_token", "distill_mlp.1.weight"} <= set(student.state_dict())

    images = torch.randn(3, 3, 32, 32)
    student.eval()
    cls_logits, distill_logits = student.forward_heads(images)
    assert not torch.allclose(cls_logits, distill_logits)
    assert torch.allclose(student(images), (cls_logits + distill_logits) / 2)  # inference: the mean of the heads
    outputs = DistillNet(student, lambda x: torch.zeros(len(x), 8))(images)
    assert len(outputs) == 3 and outputs[2].shape == (3, 8)
    assert [name for name, _ in DistillNet(student, plain).named_children()] == ["student"]  # no teacher weights


def test_resnet50_is_torchvisions_layout():
    with torch.device("meta"):
        assert count_trainable_params(resnet50(1000)) == 25_557_032  # torchvision.models.resnet50
        model = resnet50(8)
    assert count_trainable_params(model) == 23_524_424
    assert {"conv1.weight", "layer4.2.bn3.running_var", "layer1.0.downsample.0.weight", "fc.bias"} <= set(
        model.state_dict()
    )
    small = resnet50(8, width=8).eval()
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_nt_xent_equals_a_hand_computation():
    rng = np.random.default_rng(1)
    z0, z1 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    z = np.concatenate([z0, z1])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim, tau, n = z @ z.T / 0.5, 0.5, 3
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        losses.append(-sim[i, positive] + math.log(sum(math.exp(sim[i, j]) for j in others)))
    got = nt_xent(torch.tensor(z0, dtype=torch.float32), torch.tensor(z1, dtype=torch.float32), tau)
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-5)
    same = torch.tensor(z0, dtype=torch.float32)
    assert float(nt_xent(same, same)) < float(got)  # identical views are the easy case


def test_galaxy_views_are_random_reproducible_and_keep_colour():
    from galaxyvit.preprocess import preprocessing_for

    prep = preprocessing_for("vit", 32)
    crops = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    crops[:, 12:20, 10:22] = torch.tensor([200, 120, 60], dtype=torch.uint8)  # a red galaxy on black sky
    a = galaxy_views(crops, prep, torch.Generator().manual_seed(0))
    b = galaxy_views(crops, prep, torch.Generator().manual_seed(0))
    c = galaxy_views(crops, prep, torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # each image its own view
    rgb = a * torch.tensor(prep.std).view(1, 3, 1, 1) + torch.tensor(prep.mean).view(1, 3, 1, 1)
    bright = rgb.sum(1) > 0.5  # the galaxy's pixels stay red (no colour inversion or jitter)
    assert bright.any() and (rgb[:, 0][bright] > rgb[:, 2][bright]).all()


@pytest.mark.parametrize("run", [TINY_VIT, TINY_LINFORMER], ids=["vit", "linformer"])
def test_pretrained_encoder_loads_with_only_the_head_new(run, tmp_path):
    torch.manual_seed(0)
    encoder, features = encoder_of(build_model(run, num_classes=8))
    assert features == 16 and encoder(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    save_pretrained(tmp_path / "pretrained.pt", encoder, run, epoch=3, images="x")
    saved = load_checkpoint(tmp_path / "pretrained.pt")

    torch.manual_seed(1)
    model = build_model(run, num_classes=5)
    head_before = model.mlp_head[1].weight.clone()
    new = load_pretrained(model, tmp_path / "pretrained.pt")
    assert sorted(new) == ["mlp_head.1.bias", "mlp_head.1.weight"]
    for key, value in model.state_dict().items():
        if key in new:
            continue
        assert torch.equal(value, saved["model"][key]), key
    assert torch.equal(model.mlp_head[1].weight, head_before) and model.mlp_head[1].out_features == 5

    probe = build_model(run.with_overrides(distill_token=True), num_classes=5)
    new = load_pretrained(probe, tmp_path / "pretrained.pt", freeze=True)
    assert set(new) == {"mlp_head.1.weight", "mlp_head.1.bias", "distillation_token"} | {
        f"distill_mlp.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")
    }
    assert {name for name, p in probe.named_parameters() if p.requires_grad} == set(new)

    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained(build_model(run.with_overrides(dim=32), num_classes=5), tmp_path / "pretrained.pt")


SIZE = ["--set", "image_size=32", "--set", "crop=224", "--set", "patch_size=8"]
STUDENT = [*SIZE, "--set", "depth=1", "--set", "dim=16", "--set", "heads=2", "--set", "k=4"]


def test_pretrain_init_and_teacher_from_the_command_line(tmp_path):
    data = write_tiny_dataset(tmp_path / "tiny", n_train=16, n_valid=8, n_test=8)
    fast = ["--workers", "0", "--threads", "2", "--no-progress", "--results", "", "--batch-size", "8"]
    train = ["train", "linformer-010522", "--data", "gz2", "--dataset", str(data), "--epochs", "1", *fast, *STUDENT]

    pre = ["pretrain", "linformer", "--images", str(data / "images"), "--epochs", "1", "--batch-size", "8"]
    assert cli_main([*pre, *STUDENT, "--out", str(tmp_path / "pre"), "--no-progress"]) == 0
    assert cli_main([*pre[:5], "2", *pre[6:], *STUDENT, "--out", str(tmp_path / "pre"), "--resume"]) == 0
    history = (tmp_path / "pre" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and (tmp_path / "pre" / "tb").is_dir()
    pretrained = tmp_path / "pre" / "pretrained.pt"
    assert load_checkpoint(pretrained)["epoch"] == 2
    assert cli_main([*pre[:5], "2", *pre[6:], *STUDENT, "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "pretrained.pt")["model"]
    resumed = load_checkpoint(pretrained)["model"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)  # a resume reaches the same weights

    assert cli_main([*train, "--init", str(pretrained), "--freeze", "--out", str(tmp_path / "probe")]) == 0
    probe, _ = model_from_checkpoint(tmp_path / "probe" / "best.pt")
    encoder = load_checkpoint(pretrained)["model"]
    assert torch.equal(probe.state_dict()["pos_embedding"], encoder["pos_embedding"])  # frozen: unchanged

    assert cli_main([*train, "--out", str(tmp_path / "teacher"), "--set", "dim=8"]) == 0
    teacher = tmp_path / "teacher" / "best.pt"
    assert cli_main([*train, "--teacher", str(teacher), "--out", str(tmp_path / "student")]) == 0
    student, data_dict = model_from_checkpoint(tmp_path / "student" / "best.pt")
    assert isinstance(student, DistillableViT) and data_dict["run"]["distill_token"] is True
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and metrics["data"]["n_test"] == 8

    from training.export import export_checkpoint

    (card,) = export_checkpoint(
        tmp_path / "student" / "best.pt", out_root=tmp_path / "models", register=False, quiet=True, explain=False
    )
    assert card.parity["max_abs_logit_diff"] <= 1e-4 and card.params == count_trainable_params(student)
    onnx_teacher = tmp_path / "models" / "linformer-010522" / "fp32.onnx"
    soft = ["--teacher", str(onnx_teacher), "--distill", "soft", "--out", str(tmp_path / "student2")]
    assert cli_main([*train, *soft]) == 0
    assert (
        cli_main([*train, "--teacher", str(teacher), "--set", "crop=200", "--out", str(tmp_path / "x")]) == 2
    )  # other sky


def test_a_vitbase_teacher_sees_the_students_batch_in_its_own_normalisation(tmp_path):
    from transformers import ViTConfig

    from galaxyvit.preprocess import normalize, preprocessing_for
    from training.checkpoint import save_model
    from training.teacher import Teacher
    from training.vitbase import build_vitbase

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=16
    )
    torch.manual_seed(0)
    vitbase = build_vitbase(pretrained=False, config=config).eval()
    run = get_run("vitbase-121121").with_overrides(image_size=32)
    save_model(tmp_path / "best.pt", vitbase, run, epoch=1, valid_acc=0.5)
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    student = preprocessing_for("vit", 32)
    teacher = Teacher(tmp_path / "best.pt", student, torch.device("cpu"), 8)
    expected = torch.from_numpy(normalize(crops, preprocessing_for("vitbase", 32)))
    got = teacher.inputs(torch.from_numpy(normalize(crops, student)))
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(teacher(torch.from_numpy(normalize(crops, student))), vitbase(expected), atol=1e-4)
    with pytest.raises(ValueError, match="same part of the sky"):
        Teacher(tmp_path / "best.pt", preprocessing_for("vit", 64), torch.device("cpu"), 8)
    with pytest.raises(ValueError, match="classes"):
        Teacher(tmp_path / "best.pt", student, torch.device("cpu"), 3)
