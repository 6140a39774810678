"""Attention maps of a trained model for some images: what the CLS token looks at.

  galaxyvit explain IMAGE... --checkpoint runs/vit-110421/best.pt --out explained/
  galaxyvit explain IMAGE... --model vit-110421 --out explained/

For each IMAGE, OUT/<name>.png shows the crop the model sees, the attention rollout over it, the last
layer's per-head maps and the predicted class with its probability; the raw maps are saved beside it:
OUT/<name>.heads.npy (heads, g, g) and OUT/<name>.rollout.npy (g, g), with g = image size / patch size.
For a Linformer there is no rollout: OUT/<name>.head_mean.npy holds the mean of the per-head maps,
which are the CLS attention over the k projected tokens carried back to patches through the learned
sequence projection (signed weights, one layer; see training/attention.py for what they mean).

--model NAME reads the exported model's card (models/NAME/fp32.card.json, or the BentoML store) to
find the PyTorch weights, since maps need the model in PyTorch: the card's `checkpoint` entry when
it has one, else runs/<run id>/best.pt, the trainer's default. That checkpoint is used only if it is
for the card's run and has the card's parameter count; otherwise pass --checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from galaxyvit.card import card_path
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.overlay import figure, prediction_title
from galaxyvit.preprocess import Preprocessing, eval_crop, normalize
from training.attention import AttentionMaps, attention_maps
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint


class ExplainError(RuntimeError):
    """The command cannot run: no usable checkpoint, no model card."""


# --------------------------------------------------------------------------- finding the weights


def read_card(name: str, models_dir: Path) -> tuple[dict, Path]:
    """The fp32 card of exported model `name` as raw JSON (unknown keys kept), from models_dir or the store."""
    path = card_path(Path(models_dir) / name)
    if not path.is_file():
        try:
            from galaxyvit.store import stored_model_dir

            path = card_path(stored_model_dir(name))
        except Exception:  # not in the store either, or no store at all
            raise ExplainError(
                f"no exported model {name!r}: neither {path} nor a BentoML model galaxyvit-{name} exists"
            ) from None
    return json.loads(path.read_text()), path


def checkpoint_for_model(name: str, models_dir: Path = Path("models"), runs_dir: Path = Path("runs")) -> Path:
    """The best.pt the card of `name` points to (its `checkpoint` entry, else runs/<run id>/best.pt), checked."""
    card, path = read_card(name, models_dir)
    recorded = card.get("checkpoint")
    checkpoint = Path(recorded) if recorded else Path(runs_dir) / card["run_id"] / "best.pt"
    how = "recorded in the card" if recorded else "the trainer's default place for the card's run"
    if not checkpoint.is_file():
        raise ExplainError(
            f"attention maps need the PyTorch weights of {name!r}, and {checkpoint} ({how}) does not exist; "
            "pass --checkpoint PATH/best.pt"
        )
    data = load_checkpoint(checkpoint)
    run_id = data["run"].get("id")
    n_params = sum(t.numel() for t in data["model"].values())
    if run_id != card["run_id"] or n_params != card["params"]:
        raise ExplainError(
            f"{checkpoint} ({how}) is not the checkpoint {name!r} was exported from (run {run_id!r}, "
            f"{n_params} weights; the card {path} says run {card['run_id']!r}, {card['params']}); pass --checkpoint"
        )
    return checkpoint


# --------------------------------------------------------------------------- maps and figures


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def write_figure(
    crop: np.ndarray,
    maps: AttentionMaps,
    index: int,
    class_names: list[str],
    path: Path,
    title: str = "",
    temperature: float = 1.0,
) -> Path:
    """PNG (galaxyvit/overlay.py, the figure of POST /explain?format=png): the crop, the overview map over it,
    a colour bar and the per-head maps, titled with the prediction (softmax of logits / temperature; a
    temperature other than 1 is marked "calibrated")."""
    probs = softmax(maps.logits[index], temperature)
    top = int(probs.argmax())
    heading = prediction_title(class_names[top], float(probs[top]), temperature != 1.0, title)
    signed = maps.rollout is None  # Linformer maps are signed weights, not distributions
    figure(crop, maps.overview[index], signed, heading, heads=maps.heads[index]).save(path)
    return path


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem, i = path.stem, 1
    while stem in taken:
        i += 1
        stem = f"{path.stem}-{i}"
    taken.add(stem)
    return stem


def explain_images(
    model: torch.nn.Module,
    prep: Preprocessing,
    class_names: list[str],
    images: list[Path],
    out_dir: Path,
    projection: str = "value",
    temperature: float = 1.0,
) -> list[dict]:
    """Maps, figure and .npy files for each image; returns one record per image (error set when unreadable).

    `temperature` divides the logits for the probability shown (1: uncalibrated)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    records, taken = [], set()
    for path in images:
        path = Path(path)
        try:
            with Image.open(path) as image:
                crop = eval_crop(image, prep)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            records.append({"image": str(path), "error": f"cannot read image: {exc}"})
            continue
        maps = attention_maps(model, normalize(crop, prep)[None], projection=projection)
        stem = _unique_stem(path, taken)
        np.save(out_dir / f"{stem}.heads.npy", maps.heads[0])
        overview_name = "rollout" if maps.rollout is not None else "head_mean"
        np.save(out_dir / f"{stem}.{overview_name}.npy", maps.overview[0])
        figure = write_figure(crop, maps, 0, class_names, out_dir / f"{stem}.png", path.name, temperature)
        probs = softmax(maps.logits[0], temperature)
        records.append(
            {
                "image": str(path),
                "class": class_names[int(probs.argmax())],
                "probability": float(probs.max()),
                "png": str(figure),
                "maps": [str(out_dir / f"{stem}.heads.npy"), str(out_dir / f"{stem}.{overview_name}.npy")],
                "method": maps.method,
            }
        )
    return records


# --------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a best.pt written by `galaxyvit train`")
    source.add_argument("--model", metavar="NAME", help="an exported model; its card leads to the checkpoint")
    parser.add_argument("--out", type=Path, default=Path("explained"), help="output folder (default: explained)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="exported models (default: models)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="training runs (default: runs)")
    parser.add_argument(
        "--linformer-projection",
        choices=("value", "key"),
        default="value",
        help="Linformer: carry attention back to patches through the value (default) or key projection",
    )


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        checkpoint = args.checkpoint or checkpoint_for_model(args.model, args.models_dir, args.runs_dir)
        model, data = model_from_checkpoint(checkpoint)
    except (ExplainError, CheckpointError) as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 1
    prep = Preprocessing.from_dict(data["preprocessing"])
    class_names = list(data.get("class_names") or CLASS_NAMES)
    records = explain_images(model, prep, class_names, args.images, args.out, args.linformer_projection)
    failed = 0
    for record in records:
        if "error" in record:
            failed += 1
            print(f"{record['image']}: {record['error']}", file=sys.stderr)
        else:
            print(f"{record['image']}: {record['class']} ({100 * record['probability']:.1f}%) -> {record['png']}")
    return 1 if failed else 0
