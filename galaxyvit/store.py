"""The BentoML model store: one place for the tag of a served model and for the store's home.

An exported model `models/<name>/` is imported as the BentoML model `galaxyvit-<name>:<version>`;
the service serves every `galaxyvit-*` model of the store (or those it is told). Every function
takes the store's home (BENTOML_HOME) as an argument, so nobody swaps `os.environ` to register
into another store; `None` means the BENTOML_HOME of the current environment, else ~/bentoml.
bentoml is imported only when a function needs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from galaxyvit.card import VARIANTS, ModelCard, card_path, load_card

TAG_PREFIX = "galaxyvit-"


def tag(name: str, version: str = "latest") -> str:
    """The BentoML tag of served model `name`: galaxyvit-<name>:<version>."""
    return f"{TAG_PREFIX}{name}:{version}"


def default_home() -> Path:
    """BENTOML_HOME as it is *now* (BentoML itself caches its home on first use), else ~/bentoml."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def model_store(home: Path | None = None) -> Any:
    """BentoML's ModelStore under `home` (pass as `_model_store=` to bentoml.models.*)."""
    from bentoml._internal.models import ModelStore

    models = (home or default_home()) / "models"
    models.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(models))


def discover_models(home: Path | None = None) -> list[str]:
    """Served names of every `galaxyvit-<name>` model in the store (sorted)."""
    import bentoml

    stored = bentoml.models.list(_model_store=model_store(home))
    return sorted({m.tag.name[len(TAG_PREFIX) :] for m in stored if m.tag.name.startswith(TAG_PREFIX)})


def stored_model_dir(name: str, home: Path | None = None) -> Path:
    """Folder of the latest stored version of `name`; bentoml.exceptions.NotFound when there is none."""
    import bentoml

    return Path(bentoml.models.get(tag(name), _model_store=model_store(home)).path)


def is_registered(name: str, home: Path | None = None) -> bool:
    import bentoml

    try:
        stored_model_dir(name, home)
    except bentoml.exceptions.NotFound:
        return False
    return True


def _metadata_value(value: Any) -> Any:
    """BentoML metadata allows str/int/float/bool, lists and dicts of them; no None."""
    if isinstance(value, dict):
        return {str(k): _metadata_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_metadata_value(v) for v in value]
    return "" if value is None else value


def register_model(folder: Path, home: Path | None = None) -> str:
    """Import an exported model folder (its variants' ONNX files and cards, and the artifacts the cards list)
    into the store under `home`.

    Returns the tag, galaxyvit-<name>:<version>, name and version from the fp32 card."""
    import bentoml

    folder = Path(folder)
    cards: list[ModelCard] = [load_card(card_path(folder, v)) for v in VARIANTS if card_path(folder, v).is_file()]
    fp32 = next((c for c in cards if c.variant == "fp32"), None)
    if fp32 is None:
        raise FileNotFoundError(f"{folder} has no fp32.card.json: not an exported model folder")
    labels = {
        "family": fp32.family,
        "run_id": fp32.run_id.lower(),
        "variants": "-".join(c.variant for c in cards),
        "source": "galaxyvit-export",
    }
    with bentoml.models.create(
        tag(fp32.name, fp32.version),
        labels=labels,
        metadata=_metadata_value(fp32.to_dict()),
        _model_store=model_store(home),
    ) as bento_model:
        for card in cards:
            shutil.copy2(folder / card.onnx_file, Path(bento_model.path) / card.onnx_file)
            shutil.copy2(card_path(folder, card.variant), card_path(bento_model.path, card.variant))
        for file in sorted({entry["file"] for card in cards for entry in card.artifacts.values()}):
            shutil.copy2(folder / file, Path(bento_model.path) / file)  # explain.onnx, OOD Gaussians, diagrams
    return str(bento_model.tag)
