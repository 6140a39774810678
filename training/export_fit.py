"""What an export fits on validation images beside the parity gate: the temperature and the not-a-galaxy rule.

With --valid-data, for every variant that passes its gate, on that variant's own ONNX outputs for the
gate's validation images:
- calibration (galaxyvit/calibration.py): one temperature fitted by minimising the NLL; NLL and ECE
  (15 bins) before and after go into the card, and `<variant>.reliability.png` beside it;
- the OOD rule (galaxyvit/ood.py): the AUROC of each score between the validation galaxies and the
  non-galaxy image set (training/ood_images.py) decides the score; its threshold lets 95% of the
  validation galaxies pass. The Mahalanobis score's Gaussians are fitted once, on PyTorch embeddings of
  a class-stratified sample of the training split (fitting them on the validation images would make the
  threshold too tight for new galaxies), and saved beside the cards as ood_gaussians.npz. The pixel rule
  (galaxyvit/pixels.py) is fitted on the same training images' evaluation crops, once, and combined with the
  chosen score (galaxyvit/ood.py); it goes into the card's `ood.pixels`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from galaxyvit.calibration import calibrate, write_reliability_diagram
from galaxyvit.card import Artifact, CalibrationRecord, OODRecord, sha256_file
from galaxyvit.ood import (
    GAUSSIANS_ARTIFACT,
    GAUSSIANS_FILE,
    FeatureGaussians,
    choose_method,
    fit_feature_gaussians,
    fit_ood_rule,
)
from galaxyvit.pixels import MIN_CROP, PixelRule, fit_pixel_rule, pixel_features
from galaxyvit.preprocess import Preprocessing, denormalize, eval_array
from training.embeddings import logits_and_embeddings
from training.export_gate import (
    CLASSIFIER_OUTPUTS,
    ExportError,
    GateInputs,
    load_images,
    ort_outputs,
    ort_session,
    read_valid_split,
)
from training.ood_images import ood_images

DEFAULT_MAX_TRAIN = 1024  # training images whose embeddings fit the Mahalanobis Gaussians
DEFAULT_OOD_PER_KIND = 10  # non-galaxy images of each of the 14 kinds (140 in all)
OOD_SEED = 0


@lru_cache(maxsize=1)
def rendered_ood_images(n_per_kind: int) -> tuple[np.ndarray, ...]:
    """The non-galaxy image set (uint8 HWC), rendered once per process (about 0.05 s an image)."""
    return tuple(image for _, image in ood_images(n_per_kind, OOD_SEED))


@dataclass
class FitInputs:
    """What every variant's fit shares: the preprocessed non-galaxy images and the Gaussians (or None)."""

    ood_images: np.ndarray  # (M, 3, H, W) float32, M = 0 when the OOD rule is not fitted
    gaussians: FeatureGaussians | None
    train_pixel_features: np.ndarray | None = None  # galaxyvit.pixels features of the training crops
    prep: Preprocessing | None = None  # set with train_pixel_features: the crops of the validation images


def fit_inputs(
    model: nn.Module,
    prep: Preprocessing,
    num_classes: int,
    data_dir: Path,
    max_train: int = DEFAULT_MAX_TRAIN,
    ood_per_kind: int = DEFAULT_OOD_PER_KIND,
    say: Callable[..., None] = print,
) -> FitInputs:
    """Render and preprocess the non-galaxy images; fit the Gaussians on data_dir's training split if it has one
    (without one, only the logit scores compete and a warning says so)."""
    if ood_per_kind <= 0:
        return FitInputs(np.zeros((0, 3, prep.size, prep.size), np.float32), None)
    images = np.stack([eval_array(Image.fromarray(image), prep) for image in rendered_ood_images(ood_per_kind)])
    gaussians = None
    try:
        paths, labels = read_valid_split(data_dir, max_train, num_classes, split="train") if max_train > 0 else ([], [])
    except ExportError as exc:
        say(f"warning: no training images for the Mahalanobis OOD score ({exc}); only logit scores compete")
    else:
        if len(paths) >= 2:
            train_images = load_images(paths, prep, "training images")
            _, embeddings = logits_and_embeddings(model, train_images)
            gaussians = fit_feature_gaussians(embeddings, np.asarray(labels))
            if prep.size < MIN_CROP:
                say(f"warning: no pixel rule: crops of {prep.size} px (the pixel features need {MIN_CROP}+)")
                return FitInputs(images, gaussians)
            return FitInputs(images, gaussians, pixel_features(denormalize(train_images, prep)), prep)
    return FitInputs(images, gaussians)


def fit_variant(
    onnx_path: Path,
    valid_logits: np.ndarray,
    valid_embeddings: np.ndarray,
    labels: np.ndarray,
    fit: FitInputs,
    diagram: Path,
    title: str = "",
    valid_crops: np.ndarray | None = None,
) -> tuple[CalibrationRecord, OODRecord | None]:
    """The card's `calibration` and `ood` for one variant (from its own outputs); writes the reliability diagram.
    `valid_crops`, the validation images' (N, S, S, 3) uint8 crops, give the pixel rule its pass rates."""
    calibration = calibrate(valid_logits, labels)
    write_reliability_diagram(valid_logits, labels, calibration.temperature, diagram, title)
    record: CalibrationRecord = calibration.to_dict()  # type: ignore[assignment]
    if not len(fit.ood_images):
        return record, None
    ood_logits, ood_embeddings = ort_outputs(ort_session(onnx_path), fit.ood_images, CLASSIFIER_OUTPUTS)
    method, aurocs = choose_method(valid_logits, ood_logits, valid_embeddings, ood_embeddings, fit.gaussians)
    pixels: PixelRule | None = None
    margins = None
    if fit.train_pixel_features is not None and valid_crops is not None:
        valid_features = pixel_features(valid_crops)
        pixels = fit_pixel_rule(fit.train_pixel_features, valid_features)
        margins = pixels.threshold - pixels.distance(valid_features)
    rule = fit_ood_rule(valid_logits, method, valid_embeddings=valid_embeddings, gaussians=fit.gaussians,
                        pixels=pixels, valid_pixel_margins=margins)  # fmt: skip
    ood: OODRecord = {**rule.to_dict(), "aurocs": aurocs, "n_ood": len(fit.ood_images)}  # type: ignore[typeddict-item]
    return record, ood


def artifact(folder: Path, file: str) -> Artifact:
    """The card's entry for folder/file: its name and sha256."""
    return {"file": file, "sha256": sha256_file(folder / file)}


def fit_artifacts(
    onnx_path: Path,
    outputs: list[np.ndarray],
    inputs: GateInputs,
    fit: FitInputs,
    folder: Path,
    variant: str,
    name: str,
) -> tuple[CalibrationRecord, OODRecord | None, dict[str, Artifact]]:
    """fit_variant on a variant's gate outputs (its validation rows); writes <variant>.reliability.png and, for a
    mahalanobis rule, ood_gaussians.npz (once, shared by the variants) into `folder`; the card's entries."""
    if inputs.labels is None:
        raise ValueError("fitting the temperature and the OOD rule needs labelled validation images")
    valid, diagram = inputs.valid_rows, f"{variant}.reliability.png"
    crops = None if fit.prep is None else denormalize(inputs.images[valid], fit.prep)
    calibration, ood = fit_variant(
        onnx_path,
        outputs[0][valid],
        outputs[1][valid],
        inputs.labels,
        fit,
        folder / diagram,
        f"{name} {variant}",
        crops,
    )
    artifacts = {"reliability_diagram": artifact(folder, diagram)}
    if ood is not None and ood["method"] == "mahalanobis" and fit.gaussians is not None:
        if not (folder / GAUSSIANS_FILE).exists():
            fit.gaussians.save(folder / GAUSSIANS_FILE)
        artifacts[GAUSSIANS_ARTIFACT] = artifact(folder, GAUSSIANS_FILE)
    return calibration, ood, artifacts


def fit_summary(calibration: CalibrationRecord, ood: OODRecord | None) -> str:
    c = calibration
    text = (
        f"temperature {c['temperature']:.3f} (validation NLL {c['nll_before']:.3f} → {c['nll_after']:.3f}, "
        f"ECE {100 * c['ece_before']:.2f}% → {100 * c['ece_after']:.2f}%)"
    )
    if ood is not None:
        aurocs = ", ".join(f"{m} {a:.3f}" for m, a in ood["aurocs"].items())
        text += f"; OOD score {ood['method']} (AUROC {aurocs}; threshold {ood['threshold']:.4g})"
        if "pixels" in ood:
            p = ood["pixels"]
            text += (
                f" and pixel rule (distance <= {p['threshold']:.3g}; validation galaxies passing it "
                f"{100 * p['valid_pass_rate']:.1f}%, both {100 * (p['both_pass_rate'] or 0):.1f}%)"
            )
    return text
