"""The served models: which ones, where they are stored, and their cards (the one truth for their classes).

`discover` does the I/O (the BentoML model store, the sha256 check of every artifact against its
card) when it is called; nothing here runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from galaxyvit.card import CardError, IntegrityError, ModelCard, load_verified
from galaxyvit.store import discover_models, stored_model_dir
from serving.config import ServingConfig
from serving.errors import ServiceError


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path  # the stored model's folder in the BentoML model store
    card: ModelCard  # the card of the served variant; its artifact matched the card's sha256

    @property
    def classes(self) -> list[str]:
        """Class names in label order: what `class_name`, `probabilities`, /feedback and the metrics use."""
        return list(self.card.class_names)


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ServedModel]  # in serving order
    default: str

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def get(self, requested: str | None) -> ServedModel:
        """The model a request names (blank: the default); an unknown name is a 404 `unknown_model`."""
        name = (requested or "").strip() or self.default
        if name not in self.models:
            raise ServiceError("unknown_model", 404, f"unknown model {name!r}; served models: {', '.join(self.models)}")
        return self.models[name]

    def all_classes(self) -> list[str]:
        """Every class name of every served model, each once, in first-seen order."""
        return list(dict.fromkeys(c for model in self.models.values() for c in model.classes))


def discover(config: ServingConfig, home: Path | None = None) -> Catalog:
    """The models to serve (`config.models`, else every galaxyvit-* model in the store under `home`), verified.

    A tampered or corrupted artifact stops `bentoml serve` (and `bentoml build`) at once with a clear
    error, instead of an inference worker that fails, restarts forever and never turns ready.
    """
    names = config.models or discover_models(home)
    if not names:
        raise RuntimeError(
            "no model to serve: register one with `galaxyvit export CHECKPOINT` (BentoML model galaxyvit-<name>) "
            "or name them in GALAXYVIT_MODELS"
        )
    default = config.default_model or names[0]
    if default not in names:
        raise RuntimeError(f"default model {default!r} is not among the served models {names}")
    models = {}
    for name in names:
        folder = stored_model_dir(name, home)
        try:
            _, card = load_verified(folder, config.variant)
        except (CardError, IntegrityError) as exc:
            raise IntegrityError(f"refusing to serve model {name!r}: {exc}") from None
        models[name] = ServedModel(name=name, folder=folder, card=card)
    return Catalog(models=models, default=default)
