"""Models of the three families with random weights, saved and exported exactly like trained ones.

Speed, ONNX parity and the service's behaviour do not depend on the weights, so the tests, the load
tests and the GPU check need no trained checkpoint: each family is built at its study run's size (or
tiny, for tests), saved as best.pt and exported by training.export.export_checkpoint as `galaxyvit
export` does, which registers it as `galaxyvit-<family>` in the BentoML home given.

  python -m training.random_models --out /tmp/lt --home /tmp/lt/bentoml_home            # study sizes
  python -m training.random_models --out /tmp/t --home /tmp/t/bentoml_home --tiny vit   # tiny, one family
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from galaxyvit.classes import CLASS_NAMES

# family -> (study run whose architecture is used, overrides that make it tiny for tests)
FAMILIES: dict[str, tuple[str, dict]] = {
    "vit": ("vit-110421", dict(depth=2, dim=32, mlp_dim=64, heads=2)),
    "linformer": ("linformer-010522B", dict(depth=1, dim=32, heads=2, k=16)),
    "vitbase": ("vitbase-010822B", {}),
}
# ViT-Base's study size is ViTConfig()'s default (86M parameters, patch 16); this one has 2 small layers
TINY_VITBASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=32)


def export_random(
    family: str,
    out: Path,
    home: Path,
    *,
    tiny: bool = False,
    seed: int = 0,
    valid_acc: float = 0.0,
    name: str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    valid_dir: Path | None = None,
    variants: tuple[str, ...] = ("fp32",),
) -> Path:
    """Build `family` with random weights, save out/checkpoints/<family>/best.pt, export it into
    out/models/<family> and register it in the BentoML home `home`; the exported model folder.

    valid_acc is recorded in the checkpoint as its validation accuracy (the model is untrained:
    tests record a known value to follow it to the model card and /metrics). `name` (default the family)
    names the exported model; `class_names` gives a scratch model a class list of its own (a user's classes).
    With `valid_dir` (a dataset folder), the export also fits the temperature and the OOD rule on its images;
    `variants` as `galaxyvit export --variants` (fp32 always)."""
    import torch
    from transformers import ViTConfig

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run
    from training.vitbase import build_vitbase

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    run_id, tiny_overrides = FAMILIES[family]
    name = name or family
    if run_id.startswith("vitbase") and list(class_names) != list(CLASS_NAMES):
        raise ValueError("a random ViT-Base keeps the 8 GZ2 classes")
    run = get_run(run_id)
    torch.manual_seed(seed)
    if run.family == "vitbase":
        model = build_vitbase(pretrained=False, config=ViTConfig(**TINY_VITBASE) if tiny else ViTConfig())
    else:
        run = run.with_overrides(**tiny_overrides) if tiny else run
        model = build_model(run, num_classes=len(class_names), pretrained=False)
    checkpoint = Path(out) / "checkpoints" / name / "best.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_model(checkpoint, model.eval(), run, epoch=0, valid_acc=valid_acc, class_names=class_names)
    export_checkpoint(
        checkpoint,
        out_root=Path(out) / "models",
        name=name,
        quiet=True,
        valid_dir=valid_dir,
        max_valid=64 if valid_dir else 0,
        max_train=64,
        ood_per_kind=4,
        home=home,
        variants=variants,
    )
    return Path(out) / "models" / name


def export_random_models(
    out: Path,
    home: Path,
    families: tuple[str, ...] = tuple(FAMILIES),
    *,
    tiny: bool = False,
    valid_acc: float = 0.0,
    variants: tuple[str, ...] = ("fp32",),
) -> dict[str, Path]:
    """export_random for each family; family -> exported model folder."""
    return {
        family: export_random(family, out, home, tiny=tiny, valid_acc=valid_acc, variants=variants)
        for family in families
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.random_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("families", nargs="*", default=list(FAMILIES), help="vit, linformer, vitbase (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints/ and models/")
    parser.add_argument("--home", type=Path, required=True, help="BentoML home to register the models in")
    parser.add_argument("--tiny", action="store_true", help="tiny models (tests), not the study sizes")
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    for family in args.families:
        print(f"exporting {family}...", file=sys.stderr, flush=True)
        print(export_random(family, args.out, args.home, tiny=args.tiny))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
