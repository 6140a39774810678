"""From a model's outputs to what an answer says: class probabilities (calibrated by the card's
temperature unless the `calibrate` setting is off), the not-a-galaxy score and flag, and the mean of
8 rotated/flipped views with its spread. Numpy only; the inference processes and the front end share it.

With 8-view averaging each view's logits are divided by T before the probabilities are averaged, and the
OOD rule is applied to the identity view: the temperature and the threshold were fitted on single views
(docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galaxyvit.calibration import softmax as calibrated_softmax
from galaxyvit.card import ModelCard
from galaxyvit.ood import OODRule, load_ood_rule
from galaxyvit.tta import dihedral_views, tta_probabilities


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax of raw logits: the uncalibrated probabilities, as the service has always computed them."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Scorer:
    """A model card's temperature and OOD rule, applied to a batch of its outputs."""

    temperature: float | None  # None: probabilities are the plain softmax (calibration off, or none fitted)
    rule: OODRule | None

    @property
    def needs_crops(self) -> bool:
        """Whether `score` needs the evaluation crops (the card's OOD rule has a pixel rule)."""
        return self.rule is not None and self.rule.pixels is not None

    @classmethod
    def for_card(cls, model_dir: str | Path, card: ModelCard, calibrate: bool) -> Scorer:
        """The scorer of `card` (its OOD artifact sha256-checked); `calibrate` False ignores its temperature."""
        temperature = card.temperature if calibrate and card.calibration else None
        return cls(temperature, load_ood_rule(model_dir, card))

    def score(
        self,
        logits: np.ndarray,
        embeddings: np.ndarray | None,
        crops: np.ndarray | list[np.ndarray] | None = None,
        scored: list[bool] | np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """One item per row: `p` (C,) float32 probabilities, `calibrated`, and `ood_score` and
        `in_distribution` (None without a rule; the score of galaxyvit.ood, higher = more like a galaxy).
        `scored` (N,) bool: the rows that get an OOD score (default all; with 8-view averaging only the identity
        views are, see `combine_views`); the others answer None for both. `crops`, the scored rows' (S, S, 3)
        uint8 evaluation crops in order, are needed when the rule has a pixel rule."""
        logits = np.asarray(logits, np.float32)
        if self.temperature is None:
            probs = softmax(logits)
        else:
            probs = calibrated_softmax(logits, self.temperature).astype(np.float32)
        rows = np.arange(len(logits)) if scored is None else np.flatnonzero(np.asarray(scored, bool))
        scores: dict[int, float] = {}
        if self.rule is not None and len(rows):
            picked = None if embeddings is None else np.asarray(embeddings)[rows]
            values = self.rule.ood_scores(logits[rows], picked, crops)
            scores = dict(zip(rows.tolist(), map(float, values), strict=True))
        threshold = self.rule.pass_level if self.rule is not None else 0.0
        return [
            {
                "p": p,
                "calibrated": self.temperature is not None,
                "ood_score": scores.get(i),
                "in_distribution": None if i not in scores else bool(scores[i] >= threshold),
            }
            for i, p in enumerate(probs)
        ]


def view_crops(crops: list[np.ndarray], tta: int) -> list[np.ndarray]:
    """The crops the batcher sees: each crop, or its 8 dihedral views in galaxyvit.tta.DIHEDRAL order (the
    identity first: `is_identity_view`)."""
    if tta == 1:
        return crops
    return [np.ascontiguousarray(view) for crop in crops for view in dihedral_views(crop)]


def is_identity_view(row: int, tta: int) -> bool:
    """Whether row `row` of `view_crops(..., tta)` is an image's identity view, the one its OOD score is of."""
    return row % tta == 0


def combine_views(items: list[dict[str, Any]], tta: int) -> list[dict[str, Any]]:
    """Per image: its item (tta 1), or the mean probabilities of its 8 views with `spread` (the standard
    deviation across views of the winning class's probability) and the identity view's OOD score and flag."""
    if tta == 1:
        return [{**item, "p": np.asarray(item["p"], np.float64)} for item in items]
    combined = []
    for start in range(0, len(items), tta):
        views = items[start : start + tta]
        mean, spread = tta_probabilities(np.stack([np.asarray(v["p"], np.float64) for v in views]))
        combined.append({**views[0], "p": mean, "spread": float(spread)})
    return combined
