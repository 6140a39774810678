"""The not-a-galaxy flag, leave one kind out: fit the rule without a kind of non-galaxy image, score that kind.

  python benchmarks/ood_kinds.py --model demo --data data/demo-synthetic [--per-kind 20]

--model is a registered model name (BentoML model galaxyvit-NAME) or an exported model folder. For every
kind of training/ood_images.py the score is chosen (galaxyvit.ood.choose_method) on the other kinds only and
the threshold fitted on the validation galaxies of --data as an export does (95% pass). The Mahalanobis
Gaussians are fitted on the ONNX embeddings of up to 1024 training images of --data (the export fits them on
the same images' PyTorch embeddings), the pixel rule (galaxyvit/pixels.py) on the same images' crops as an
export fits it: on galaxies only, so no kind is in it. The table gives the AUROC of validation galaxies
against the held-out kind with the model's score alone and with the combined rule (both must pass; its
ood_score), and the share of the kind the combined rule flags. Then the model's own rule (its card) on the
three real GZ2 cutouts.
Prints Markdown; exit status 1 if a held-out AUROC of the combined rule is below 0.95 or a real cutout is flagged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from galaxyvit.ood import KEEP, choose_method, fit_feature_gaussians, fit_ood_rule, leave_one_kind_out, load_ood_rule
from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS
from galaxyvit.pixels import fit_pixel_rule, pixel_features
from galaxyvit.preprocess import denormalize, eval_array, eval_crop, normalize
from galaxyvit.store import is_registered, stored_model_dir
from inference.runtime import load_model
from training.export_gate import load_images, read_valid_split
from training.ood_images import ood_images

MIN_AUROC = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered model name or exported model folder")
    parser.add_argument("--data", type=Path, required=True, help="dataset with gz2_{train,valid}.csv and images/")
    parser.add_argument("--per-kind", type=int, default=20, help="non-galaxy images per kind (default 20)")
    parser.add_argument("--max-valid", type=int, default=512, help="validation galaxies (default 512)")
    parser.add_argument("--max-train", type=int, default=1024, help="training images for the Gaussians (1024)")
    args = parser.parse_args()

    folder = stored_model_dir(args.model) if is_registered(args.model) else Path(args.model)
    model = load_model(args.model, folder)
    prep, num_classes = model.card.prep, len(model.card.class_names)

    def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [model.outputs(images[i : i + 32]) for i in range(0, len(images), 32)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])  # type: ignore[misc]

    valid_paths, _ = read_valid_split(args.data, args.max_valid, num_classes)
    valid_images = load_images(valid_paths, prep, "validation")
    valid_logits, valid_embeddings = outputs(valid_images)
    train_paths, train_labels = read_valid_split(args.data, args.max_train, num_classes, split="train")
    train_images = load_images(train_paths, prep, "training")
    _, train_embeddings = outputs(train_images)
    gaussians = fit_feature_gaussians(train_embeddings, np.asarray(train_labels))
    kinds, images = zip(*ood_images(args.per_kind, seed=1))  # seed 1: not the images an export fits on (seed 0)
    ood_crops = np.stack([eval_crop(Image.fromarray(im), prep) for im in images])
    ood_logits, ood_embeddings = outputs(np.stack([eval_array(Image.fromarray(im), prep) for im in images]))
    valid_features = pixel_features(denormalize(valid_images, prep))
    pixels = fit_pixel_rule(pixel_features(denormalize(train_images, prep)), valid_features)
    margins = (
        pixels.threshold - pixels.distance(valid_features),
        pixels.threshold - pixels.distance(pixel_features(ood_crops)),
    )

    common = (valid_logits, ood_logits, list(kinds), valid_embeddings, ood_embeddings, gaussians)
    alone = leave_one_kind_out(*common)
    held = leave_one_kind_out(*common, pixels=pixels, pixel_margins=margins)
    method, _ = choose_method(valid_logits, ood_logits, valid_embeddings, ood_embeddings, gaussians)  # all kinds
    rule = fit_ood_rule(valid_logits, method, KEEP, valid_embeddings, gaussians, pixels, margins[0])
    print(f"Leave one kind out: {args.model}, {len(valid_paths)} validation galaxies, {args.per_kind} per kind")
    print(f"pixel rule fitted on {pixels.n_fit} training galaxies (distance <= {pixels.threshold:.3g}); validation "
          f"galaxies passing it {pixels.valid_pass_rate:.1%}, the model's {method} rule {rule.valid_pass_rate:.1%}, "
          f"both {rule.pixels.both_pass_rate:.1%} (fitted on all kinds, as an export)\n")  # fmt: skip
    print("| held-out kind | score chosen without it | AUROC model | AUROC combined | flagged combined |")
    print("| --- | --- | --- | --- | --- |")
    for a, h in zip(alone, held, strict=True):
        print(f"| {h.kind} | {h.method} | {a.auroc:.3f} | {h.auroc:.3f} | {h.flagged:.0%} |")
    low = [h.kind for h in held if h.auroc < MIN_AUROC]
    print(
        f"\nlowest AUROC {min(h.auroc for h in held):.3f}" + (f"; below {MIN_AUROC}: {', '.join(low)}" if low else "")
    )

    own = load_ood_rule(folder, model.card)
    flagged = []
    if own is not None:
        with_pixels = "with" if own.pixels is not None else "without"
        print(f"\nThe model's own rule ({own.method}, threshold {own.threshold:.4g}, {with_pixels} a pixel rule; "
              f"pass level {own.pass_level:.4g}) on the real GZ2 cutouts:")  # fmt: skip
        crops = np.stack([eval_crop(Image.open(REAL_SAMPLE_IMAGES / name), prep) for name in REAL_SAMPLE_LABELS])
        logits, embeddings = model.outputs(np.stack([normalize(c, prep) for c in crops]))
        scores = own.ood_scores(logits, embeddings, crops)
        for name, score, ok in zip(REAL_SAMPLE_LABELS, scores, scores >= own.pass_level):
            print(f"  {name}: score {score:.4g} in_distribution {bool(ok)}")
            if not ok:
                flagged.append(name)
    return 1 if low or flagged else 0


if __name__ == "__main__":
    sys.exit(main())
