"""A tiny ViT exported as `galaxyvit export --valid-data` exports: a fitted temperature far from 1 and a Mahalanobis
not-a-galaxy rule (the rule that needs the CLS embeddings) with the pixel rule (the one that needs the crops),
registered in a BentoML home; for the tests of what the service and the catalogue answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_galaxies import write_tiny_dataset

from galaxyvit.card import sha256_file
from galaxyvit.ood import GAUSSIANS_ARTIFACT, GAUSSIANS_FILE, fit_feature_gaussians, fit_ood_rule
from galaxyvit.pixels import PixelRule
from galaxyvit.preprocess import eval_batch, eval_crop
from galaxyvit.store import stored_model_dir
from inference.runtime import load_model


def fit_rule_into_store(home: Path, name: str, data: Path) -> None:
    """Replace the stored model's OOD rule by a Mahalanobis rule fitted on its fp32 embeddings of the training
    galaxies (threshold: 95% of the validation galaxies pass), joined with the export's pixel rule, written as
    `galaxyvit export` writes it."""
    folder = stored_model_dir(name, home)
    model = load_model("fit", folder, device="cpu", threads=1)
    splits, valid_crops = {}, []
    for split in ("train", "valid"):
        rows = [line.split(",") for line in (data / f"gz2_{split}.csv").read_text().splitlines()[1:]]
        images = [Image.open(data / "images" / f"{r[0]}.jpg").convert("RGB") for r in rows]
        logits, embeddings = model.outputs(eval_batch(images, model.card.prep))
        splits[split] = (logits, embeddings, np.array([int(r[1]) for r in rows]))
        valid_crops = [eval_crop(image, model.card.prep) for image in images]
    card_file = folder / "fp32.card.json"
    card = json.loads(card_file.read_text())
    pixels = PixelRule.from_dict(card["ood"]["pixels"])  # the export's, fitted on the training images' crops
    gaussians = fit_feature_gaussians(splits["train"][1], splits["train"][2])
    rule = fit_ood_rule(splits["valid"][0], "mahalanobis", valid_embeddings=splits["valid"][1], gaussians=gaussians,
                        pixels=pixels, valid_pixel_margins=pixels.margin(valid_crops))  # fmt: skip
    gaussians.save(folder / GAUSSIANS_FILE)
    card["ood"] = {**rule.to_dict(), "aurocs": {}, "n_ood": 0}
    card["artifacts"][GAUSSIANS_ARTIFACT] = {"file": GAUSSIANS_FILE, "sha256": sha256_file(folder / GAUSSIANS_FILE)}
    card_file.write_text(json.dumps(card))


def export_calibrated(root: Path, name: str = "cal", temperature: float = 0.25) -> tuple[Path, Path]:
    """(BentoML home holding galaxyvit-NAME, its tiny dataset): a tiny ViT with random weights (not invariant
    under the 8 views: --tta 8 changes its answers), exported with validation images, Mahalanobis rule.

    The temperature fitted to a random model's validation answers flattens every answer to near 1/8; the card's
    is replaced by `temperature`, so that the answers, and the 8 views' answers, differ far more than 1e-5."""
    import torch

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run

    data = write_tiny_dataset(root / "data", n_train=64, n_valid=32, n_test=8)
    run = get_run("vit-110421").with_overrides(depth=2, dim=32, heads=2, mlp_dim=64)
    torch.manual_seed(0)
    model = build_model(run, pretrained=False).eval()
    with torch.no_grad():
        model.mlp_head[1].weight.mul_(3.0)  # logits spread over a few units: a temperature far from 1
    save_model(root / "best.pt", model, run, epoch=1, valid_acc=0.0)
    home = root / "home"
    export_checkpoint(root / "best.pt", root / "models", name, valid_dir=data, ood_per_kind=2, home=home, quiet=True,
                      max_train=64, explain=False)  # fmt: skip
    fit_rule_into_store(home, name, data)
    card_file = stored_model_dir(name, home) / "fp32.card.json"
    card = json.loads(card_file.read_text())
    card["calibration"]["temperature"] = temperature
    card_file.write_text(json.dumps(card))
    return home, data


CALIBRATED = "cal"  # the model name of the `calibrated` fixture


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BentoML home holding galaxyvit-cal (export_calibrated), shared by the test modules that need one."""
    home, _ = export_calibrated(tmp_path_factory.mktemp("calibrated"), CALIBRATED)
    return home
