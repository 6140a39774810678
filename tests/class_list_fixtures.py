"""A user's own classes beside the study's: a 4-class "folder" model and an 8-class GZ2 model in one model store.

Both are tiny scratch ViTs with random weights, saved as training checkpoints (with their class names)
and exported by training.export.export_checkpoint into the BentoML home the fixture passes, exactly as
`galaxyvit export` does for a trained run.
"""

from __future__ import annotations

from pathlib import Path

from galaxyvit.classes import CLASS_NAMES

FOLDER_CLASSES = ["elliptical", "spiral", "edge-on", "merger"]  # a user's classes.json
CLASS_LISTS = {"folder4": FOLDER_CLASSES, "gz2": list(CLASS_NAMES)}


def export_tiny_vit(name: str, class_names: list[str], home: Path, work: Path, seed: int) -> Path:
    """Save a tiny random-weights ViT checkpoint with `class_names` and export it into the store under `home`."""
    import torch

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run

    torch.manual_seed(seed)
    run = get_run("vit-102721").with_overrides(depth=1, dim=32, mlp_dim=64, heads=2)
    model = build_model(run, num_classes=len(class_names))
    checkpoint = work / name / "best.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_model(checkpoint, model.eval(), run, epoch=1, valid_acc=0.5, class_names=class_names)
    export_checkpoint(checkpoint, out_root=work / "models", name=name, quiet=True, max_valid=0, home=home)
    return work / "models" / name


def export_class_list_models(base: Path) -> tuple[Path, dict[str, Path]]:
    """(BENTOML_HOME under `base` holding galaxyvit-folder4 and galaxyvit-gz2, {name: exported model dir})."""
    home = base / "bentoml_home"
    dirs = {}
    for seed, (name, classes) in enumerate(CLASS_LISTS.items()):
        dirs[name] = export_tiny_vit(name, classes, home, base, seed)
    return home, dirs
