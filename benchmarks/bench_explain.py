"""Rotation averaging, calibration and the out-of-distribution flag, measured on synthetic galaxies.

Trains a small ViT and a small Linformer-ViT briefly (CPU) on synthetic cutouts (training/synthetic.py,
all 8 classes in equal numbers) with the study's augmentation (training/transforms.py: rotation up to
90 degrees, flips, resized crop), then on held-out synthetic galaxies measures:
  - accuracy without and with 8-view rotation/flip averaging (galaxyvit/tta.py), validation and test;
  - temperature scaling fitted on validation logits: NLL and ECE (15 bins) before/after, validation and test;
  - AUROC of the OOD scores (energy, max softmax, Mahalanobis on the CLS embedding) between the test
    galaxies and the non-galaxy images of training/ood_images.py, per kind, and the share of each kind
    flagged by the threshold that passes 95% of validation galaxies;
and writes the attention-map figure of one test galaxy per model and the ViT's reliability diagram.

  python benchmarks/bench_explain.py                       # the numbers in docs/explain.md
  python benchmarks/bench_explain.py --n-train 400 --epochs 3 --out /tmp/quick   # a quick look

Results go to OUT/explain_results.json (and a summary on stdout). Not a test: numbers depend on the
sizes chosen, and the models are far smaller and shorter-trained than the study's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from galaxyvit.calibration import calibrate, expected_calibration_error, nll, softmax, write_reliability_diagram
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.ood import LOGIT_METHODS, auroc, fit_feature_gaussians, fit_ood_rule, galaxy_score
from galaxyvit.preprocess import Preprocessing, center_crop, normalize
from galaxyvit.tta import dihedral_views, tta_probabilities
from training.attention import attention_maps
from training.embeddings import logits_and_embeddings
from training.explain import write_figure
from training.linformer_vit import build_linformer_vit
from training.ood_images import ood_images
from training.synthetic import render_galaxy
from training.transforms import sample_rng, train_array
from training.vit import build_vit

PREP = Preprocessing()  # the study's: centre crop 224 of the 424 cutout, GZ2 normalisation
ARCH = {
    "vit": dict(image_size=224, patch_size=16, dim=64, depth=4, heads=4, dim_head=16, mlp_dim=128),
    "linformer": dict(image_size=224, patch_size=16, dim=64, depth=4, heads=4, k=32, shared_kv=False),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def render_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 224, 224, 3) uint8 centre crops of synthetic 424 cutouts, labels cycling over the 8 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    crops = [np.asarray(center_crop(Image.fromarray(render_galaxy(int(k), rng)), PREP.crop)) for k in labels]
    return np.stack(crops), labels


def build(family: str) -> torch.nn.Module:
    if family == "vit":
        return build_vit(num_classes=len(CLASS_NAMES), **ARCH["vit"])
    return build_linformer_vit(num_classes=len(CLASS_NAMES), **ARCH["linformer"])


def train(family: str, crops: np.ndarray, labels: np.ndarray, epochs: int, seed: int, batch: int = 32):
    torch.manual_seed(seed)
    model = build(family)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=1e-3, total_steps=epochs * -(-len(crops) // batch), pct_start=0.15
    )
    images = [Image.fromarray(c) for c in crops]
    targets = torch.from_numpy(labels)
    for epoch in range(epochs):
        model.train()
        order = np.random.default_rng((seed, epoch)).permutation(len(crops))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = torch.from_numpy(np.stack([train_array(images[i], PREP, sample_rng(seed, epoch, i)) for i in idx]))
            loss = torch.nn.functional.cross_entropy(model(x), targets[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        log(f"{family} epoch {epoch + 1}/{epochs}: train loss {total / len(crops):.3f}")
    return model.eval()


def tta_probs(model: torch.nn.Module, normalised: np.ndarray, batch: int = 32) -> np.ndarray:
    """(N, 8, C) class probabilities of the 8 dihedral views of every image."""
    out = []
    for start in range(0, len(normalised), batch):
        chunk = normalised[start : start + batch]
        views = dihedral_views(chunk, channels_last=False)  # (8, b, 3, H, W)
        logits, _ = logits_and_embeddings(model, np.ascontiguousarray(views.reshape(-1, *chunk.shape[1:])))
        out.append(softmax(logits).reshape(8, len(chunk), -1).swapaxes(0, 1))
    return np.concatenate(out)


def measure(family: str, model, data: dict, ood: tuple[list[str], np.ndarray], out: Path) -> dict:
    result: dict = {"params": sum(p.numel() for p in model.parameters())}
    outputs = {}
    for split in ("train", "valid", "test"):
        normalised = normalize(data[split][0], PREP)
        logits, embeddings = logits_and_embeddings(model, normalised)
        outputs[split] = (logits, embeddings, normalised)
    labels = {split: data[split][1] for split in data}

    # rotation / flip averaging
    for split in ("valid", "test"):
        logits, _, normalised = outputs[split]
        mean, spread = tta_probabilities(tta_probs(model, normalised))
        plain = float((logits.argmax(1) == labels[split]).mean())
        averaged = float((mean.argmax(1) == labels[split]).mean())
        result[f"tta_{split}"] = {
            "accuracy": plain,
            "accuracy_tta8": averaged,
            "change_points": 100 * (averaged - plain),
            "mean_spread": float(spread.mean()),
            "nll": nll(logits, labels[split]),
            "nll_tta8": float(-np.log(np.maximum(mean[np.arange(len(mean)), labels[split]], 1e-12)).mean()),
        }
        log(f"{family} {split}: accuracy {plain:.2%} -> {averaged:.2%} with 8 views")

    # calibration: fitted on validation, checked on test
    calibration = calibrate(outputs["valid"][0], labels["valid"])
    t = calibration.temperature
    test_logits = outputs["test"][0]
    result["calibration"] = {
        **calibration.to_dict(),
        "test_nll_before": nll(test_logits, labels["test"]),
        "test_nll_after": nll(test_logits, labels["test"], t),
        "test_ece_before": expected_calibration_error(softmax(test_logits), labels["test"]),
        "test_ece_after": expected_calibration_error(softmax(test_logits, t), labels["test"]),
    }
    if family == "vit":
        write_reliability_diagram(
            test_logits, labels["test"], t, out / "explain_reliability.png", title=f"small {family}, synthetic test set"
        )

    # out of distribution: test galaxies against the non-galaxy kinds
    kinds, ood_normalised = ood
    ood_logits, ood_embeddings = logits_and_embeddings(model, ood_normalised)
    gaussians = fit_feature_gaussians(outputs["train"][1], labels["train"])
    scores = {m: (galaxy_score(test_logits, m), galaxy_score(ood_logits, m)) for m in LOGIT_METHODS}
    scores["mahalanobis"] = (gaussians.score(outputs["test"][1]), gaussians.score(ood_embeddings))
    kinds_arr = np.array(kinds)
    result["ood"] = {}
    for method, (galaxy, other) in scores.items():
        rule = fit_ood_rule(outputs["valid"][0], method, valid_embeddings=outputs["valid"][1], gaussians=gaussians)
        result["ood"][method] = {
            "auroc_all": auroc(galaxy, other),
            "auroc_by_kind": {k: auroc(galaxy, other[kinds_arr == k]) for k in dict.fromkeys(kinds)},
            "flagged_by_kind": {
                k: float((other[kinds_arr == k] < rule.threshold).mean()) for k in dict.fromkeys(kinds)
            },
            "test_galaxies_passing": float((galaxy >= rule.threshold).mean()),
        }
        log(f"{family} OOD {method}: AUROC {result['ood'][method]['auroc_all']:.3f}")

    # one attention figure: the first correctly classified barred spiral of the test set (else the first image)
    test_crops = data["test"][0]
    right = np.flatnonzero((test_logits.argmax(1) == labels["test"]) & (labels["test"] == 4))
    index = int(right[0]) if len(right) else 0
    maps = attention_maps(model, outputs["test"][2][index : index + 1])
    title = f"small {family}, synthetic test galaxy {index} (true: {CLASS_NAMES[labels['test'][index]]})"
    write_figure(test_crops[index], maps, 0, list(CLASS_NAMES), out / f"explain_attention_{family}.png", title)
    return result


def write_ood_montage(path: Path, seed: int, tile: int = 150) -> None:
    """One image of each non-galaxy kind, as the model sees it (centre crop), in a row with its name (JPEG: the
    noise image alone would make a PNG of a quarter megabyte)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = ood_images(1, seed=seed)
    fig, axes = plt.subplots(1, len(examples), figsize=(1.6 * len(examples), 1.9), constrained_layout=True)
    for ax, (kind, image) in zip(axes, examples):
        ax.imshow(center_crop(Image.fromarray(image), PREP.crop).resize((tile, tile), Image.BILINEAR))
        ax.set_title(kind.replace("_", " "), fontsize=8)
        ax.axis("off")
    fig.savefig(path, dpi=100, pil_kwargs={"quality": 85})
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=1600)
    parser.add_argument("--n-valid", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--ood-per-kind", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", default="vit,linformer")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log("rendering synthetic galaxies")
    data = {
        split: render_split(n, args.seed * 10 + i)
        for i, (split, n) in enumerate((("train", args.n_train), ("valid", args.n_valid), ("test", args.n_test)))
    }
    kinds, images = zip(*ood_images(args.ood_per_kind, seed=args.seed))
    ood = (
        list(kinds),
        normalize(np.stack([np.asarray(center_crop(Image.fromarray(i), PREP.crop)) for i in images]), PREP),
    )
    results = {
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "architectures": ARCH},  # no local path
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    for family in args.families.split(","):
        log(f"training {family}")
        start = time.time()
        model = train(family, *data["train"], epochs=args.epochs, seed=args.seed)
        results[family] = {"train_seconds": round(time.time() - start), **measure(family, model, data, ood, args.out)}
    write_ood_montage(args.out / "explain_ood_kinds.jpg", args.seed)
    results["total_seconds"] = round(time.time() - started)
    (args.out / "explain_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {f: {k: results[f][k] for k in ("tta_valid", "tta_test", "calibration")} for f in args.families.split(",")},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
