"""A user's own classes beside the study's: a 4-class "folder" model and an 8-class GZ2 model in one model store.

Both are tiny scratch ViTs with random weights (training.random_models), saved as training checkpoints
with their class names and exported into the BentoML home the fixture passes, as `galaxyvit export` does.
"""

from __future__ import annotations

from pathlib import Path

from galaxyvit.classes import CLASS_NAMES
from training.random_models import export_random

FOLDER_CLASSES = ["elliptical", "spiral", "edge-on", "merger"]  # a user's classes.json
CLASS_LISTS = {"folder4": FOLDER_CLASSES, "gz2": list(CLASS_NAMES)}


def export_class_list_models(base: Path) -> tuple[Path, dict[str, Path]]:
    """(BENTOML_HOME under `base` holding galaxyvit-folder4 and galaxyvit-gz2, {name: exported model dir})."""
    home = base / "bentoml_home"
    dirs = {}
    for seed, (name, classes) in enumerate(CLASS_LISTS.items()):
        dirs[name] = export_random(
            "vit", base, home, tiny=True, seed=seed, valid_acc=0.5, name=name, class_names=classes
        )
    return home, dirs
