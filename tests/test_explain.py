"""`galaxyvit explain`: figures and raw maps per image, from a checkpoint or an exported model's card."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from galaxyvit.card import ModelCard
from galaxyvit.preprocess import preprocessing_for
from training.checkpoint import save_model
from training.explain import ExplainError, checkpoint_for_model, configure, main
from training.models import build_model
from training.registry import get_run
from training.synthetic import render_galaxy

VIT = get_run("vit-110421").with_overrides(image_size=64, patch_size=16, depth=2, dim=32, mlp_dim=32, heads=3)
LINFORMER = get_run("linformer-010522B").with_overrides(image_size=64, patch_size=16, depth=2, dim=32, heads=2, k=8)


def write_checkpoint(path, run):
    torch.manual_seed(0)
    model = build_model(run).eval()
    save_model(path, model, run, epoch=1, valid_acc=0.5)
    return model


def write_images(folder, n=2):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"galaxy{i}.jpg"
        Image.fromarray(render_galaxy(i, rng, 128)).save(path)
        paths.append(path)
    return paths


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    configure(parser)
    return main(parser.parse_args(argv))


def test_explain_writes_a_figure_and_the_raw_maps(tmp_path, capsys):
    write_checkpoint(tmp_path / "best.pt", VIT)
    images = write_images(tmp_path)
    out = tmp_path / "out"
    assert run_cli([*map(str, images), "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for path in images:
        assert f"{path}:" in printed and f"-> {out / path.stem}.png" in printed
        with Image.open(out / f"{path.stem}.png") as figure:
            assert figure.format == "PNG" and figure.width > 600
        heads, rollout = np.load(out / f"{path.stem}.heads.npy"), np.load(out / f"{path.stem}.rollout.npy")
        assert heads.shape == (3, 4, 4) and rollout.shape == (4, 4)  # 3 heads, 64 / 16 = 4
        assert 0 < rollout.sum() <= 1 and (heads >= 0).all()


def test_linformer_writes_the_head_mean_not_a_rollout(tmp_path):
    write_checkpoint(tmp_path / "best.pt", LINFORMER)
    (image,) = write_images(tmp_path, 1)
    assert run_cli([str(image), "--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path)]) == 0
    heads = np.load(tmp_path / "galaxy0.heads.npy")
    assert heads.shape == (2, 4, 4)
    np.testing.assert_allclose(np.load(tmp_path / "galaxy0.head_mean.npy"), heads.mean(0), rtol=1e-6)
    assert not (tmp_path / "galaxy0.rollout.npy").exists()


def test_unreadable_images_fail_alone_and_same_names_do_not_clash(tmp_path, capsys):
    write_checkpoint(tmp_path / "best.pt", VIT)
    (image,) = write_images(tmp_path, 1)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / image.name
    twin.write_bytes(image.read_bytes())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    code = run_cli([str(image), str(broken), str(twin), "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out)])
    assert code == 1
    assert "broken.jpg: cannot read image" in capsys.readouterr().err
    assert (out / "galaxy0.png").is_file() and (out / "galaxy0-2.png").is_file()


def write_card(models_dir, name, run, params):
    folder = models_dir / name
    folder.mkdir(parents=True)
    ModelCard(
        name=name,
        version="1",
        variant="fp32",
        run_id=run.id,
        family=run.family,
        run_config=run.to_dict(),
        class_names=[],
        preprocessing=preprocessing_for(run.family, run.image_size).to_dict(),
        params=params,
        onnx_file="fp32.onnx",
        sha256="0" * 64,
        opset=17,
    ).save(folder / "fp32.card.json")


def test_model_name_leads_to_the_checkpoint_of_its_run(tmp_path):
    models, runs = tmp_path / "models", tmp_path / "runs"
    (runs / VIT.id).mkdir(parents=True)
    model = write_checkpoint(runs / VIT.id / "best.pt", VIT)
    params = sum(p.numel() for p in model.state_dict().values())
    write_card(models, "galaxy", VIT, params)
    assert checkpoint_for_model("galaxy", models, runs) == runs / VIT.id / "best.pt"
    (image,) = write_images(tmp_path, 1)
    argv = [str(image), "--model", "galaxy", "--models-dir", str(models), "--runs-dir", str(runs)]
    assert run_cli([*argv, "--out", str(tmp_path / "out")]) == 0


def test_model_name_refuses_a_missing_or_different_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))  # the store is searched too: an empty one
    models, runs = tmp_path / "models", tmp_path / "runs"
    write_card(models, "galaxy", VIT, params=123)
    with pytest.raises(ExplainError, match="pass --checkpoint"):
        checkpoint_for_model("galaxy", models, runs)  # no runs/<run>/best.pt
    (runs / VIT.id).mkdir(parents=True)
    write_checkpoint(runs / VIT.id / "best.pt", VIT)  # the right run, but not 123 weights: another training
    with pytest.raises(ExplainError, match="is not the checkpoint"):
        checkpoint_for_model("galaxy", models, runs)
    with pytest.raises(ExplainError, match="no exported model 'nothing'"):
        checkpoint_for_model("nothing", models, runs)
