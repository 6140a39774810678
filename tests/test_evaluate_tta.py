"""`galaxyvit evaluate --tta 8`: the torch views are the 8 dihedral transforms, a model invariant by construction
scores the same with 8 views as with 1, an ordinary one does not, and any other count is an argparse error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from tiny_galaxies import write_tiny_dataset

from app.cli import main as cli_main
from galaxyvit.tta import dihedral_views
from training.checkpoint import save_model
from training.models import build_model
from training.registry import get_run
from training.tta_eval import dihedral_batch, tta_summary


def test_torch_views_are_the_numpy_dihedral_views():
    images = torch.randn(3, 3, 8, 8)
    np.testing.assert_array_equal(dihedral_batch(images).numpy(), dihedral_views(images.numpy(), channels_last=False))
    assert len({view.numpy().tobytes() for view in dihedral_batch(images)}) == 8  # 8 different views
    with pytest.raises(ValueError, match="square"):
        dihedral_batch(torch.zeros(1, 3, 8, 6))


def test_tta_summary_counts_one_view_against_the_mean():
    views = np.zeros((2, 8, 3))
    views[0, :, 0] = 1.0  # image 0: every view says class 0
    views[1, 0, 1], views[1, 1:, 2] = 1.0, 1.0  # image 1: the identity view says 1, the other seven say 2
    summary = tta_summary(views, np.array([0, 2]))
    assert summary["accuracy_1_view"] == 0.5 and summary["accuracy_8_views"] == 1.0 and summary["change"] == 0.5
    assert summary["mean_spread"] == pytest.approx(np.sqrt(7 / 64) / 2)  # image 1: class 2 at 1 in 7 of 8 views


def make_rotation_invariant(model: torch.nn.Module) -> torch.nn.Module:
    """A ViT whose output cannot depend on the view: each patch's embedding ignores where in the patch a pixel
    is (weights constant over the patch per colour channel) and every patch gets the same position embedding,
    so a rotation or flip of the crop only permutes the patch tokens, and the CLS token attends to all alike."""
    linear = model.to_patch_embedding[1]
    p = model.to_patch_embedding.patch_size
    with torch.no_grad():
        weight = linear.weight.reshape(linear.out_features, p, p, -1)  # input order (p1, p2, c)
        linear.weight.copy_(weight.mean(dim=(1, 2), keepdim=True).expand_as(weight).reshape_as(linear.weight))
        model.pos_embedding[:, 1:] = model.pos_embedding[:, 1:].mean(dim=1, keepdim=True)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(dataset, {kind: best.pt}) for a tiny ViT with random weights, as is and made rotation-invariant."""
    root = tmp_path_factory.mktemp("tta")
    data = write_tiny_dataset(root / "data", n_train=8, n_valid=8, n_test=16)
    run = get_run("vit-110321").with_overrides(depth=1, dim=32, heads=2, mlp_dim=64)
    paths = {}
    for kind in ("ordinary", "invariant"):
        torch.manual_seed(0)
        model = build_model(run, pretrained=False).eval()
        with torch.no_grad():
            model.mlp_head[1].weight.mul_(20)  # confident random logits, so that a dependence on the view shows
        if kind == "invariant":
            make_rotation_invariant(model)
        paths[kind] = root / kind / "best.pt"
        save_model(paths[kind], model, run, epoch=1, valid_acc=0.0)
    return data, paths


def evaluate(checkpoint, data, out, *extra) -> tuple[dict, np.ndarray]:
    args = ["evaluate", str(checkpoint), "--data", "gz2", "--dataset", str(data), "--out", str(out), "--no-progress"]
    assert cli_main([*args, *extra]) == 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in rows])
    return json.loads((out / "metrics.json").read_text()), probs


def test_tta_8_of_a_rotation_invariant_model_equals_tta_1(checkpoints, tmp_path):
    data, paths = checkpoints
    one, probs_one = evaluate(paths["invariant"], data, tmp_path / "one")
    eight, probs_eight = evaluate(paths["invariant"], data, tmp_path / "eight", "--tta", "8")
    assert probs_one.shape == (16, 8) and not (tmp_path / "one" / "tta.json").exists()
    np.testing.assert_allclose(probs_eight, probs_one, atol=1e-5)
    assert eight["test_acc"] == one["test_acc"] and eight["confusion_counts"] == one["confusion_counts"]
    summary = json.loads((tmp_path / "eight" / "tta.json").read_text())
    assert summary["views"] == 8 and summary["n_images"] == 16
    assert summary["accuracy_1_view"] == summary["accuracy_8_views"] == one["test_acc"]
    assert summary["mean_spread"] < 1e-5


def test_tta_8_changes_an_ordinary_model(checkpoints, tmp_path):
    """The same check can fail: an ordinary ViT's probabilities depend on the view."""
    data, paths = checkpoints
    _, probs_one = evaluate(paths["ordinary"], data, tmp_path / "one")
    _, probs_eight = evaluate(paths["ordinary"], data, tmp_path / "eight", "--tta", "8")
    assert np.abs(probs_eight - probs_one).max() > 1e-3  # 100x the invariant model's limit
    assert json.loads((tmp_path / "eight" / "tta.json").read_text())["mean_spread"] > 1e-4


@pytest.mark.parametrize("views", ["2", "4", "0", "eight"])
def test_tta_other_than_1_or_8_is_an_argparse_error(checkpoints, tmp_path, views, capsys):
    data, paths = checkpoints
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", str(paths["invariant"]), "--dataset", str(data), "--tta", views])
    assert exit_info.value.code == 2 and "--tta" in capsys.readouterr().err
