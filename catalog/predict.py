"""The service's answer for a batch of catalogue images: the ONNX model's outputs scored by inference/scoring.py,
exactly as the service scores them (serving/inference.py, then serving/routes.py for the 8 views).

  normalised crops (k, 3, S, S) -> each crop, or its 8 dihedral views (crop-major, galaxyvit.tta.DIHEDRAL order)
    -> ONNX Runtime: logits and CLS embeddings -> Scorer.score (temperature, OOD rule) -> combine_views (8-view mean,
       spread, the identity view's OOD score and flag)

The views are taken of the normalised crops here and of the uint8 crops in the service: normalisation maps
each pixel on its own, so the pixels are the same. The `embedding` written is the CLS embedding, with tta 8 the
mean of the 8 views' (`view_mean`): rotation-averaged, its 10 nearest neighbours share the class more often
(docs/catalogue.md); the OOD rule still sees the identity view's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from galaxyvit.preprocess import denormalize
from galaxyvit.tta import N_VIEWS, dihedral_views
from inference.scoring import Scorer, combine_views, is_identity_view

if TYPE_CHECKING:
    from catalog.model import ModelRef
    from inference.runtime import LoadedModel

TTA_CHOICES = (1, N_VIEWS)


def views_of(batch: np.ndarray, tta: int) -> np.ndarray:
    """(k, 3, S, S) normalised crops -> what the model sees: the crops (tta 1), or each crop's 8 dihedral views,
    crop-major (k * 8, 3, S, S), the identity first."""
    if tta == 1:
        return batch
    views = np.stack([dihedral_views(crop, channels_last=False) for crop in batch])
    return np.ascontiguousarray(views.reshape(len(batch) * tta, *batch.shape[1:]))


def view_mean(embeddings: np.ndarray, views: int) -> np.ndarray:
    """(k * views, D) embeddings of each crop's views, crop-major -> (k, D) float32: each crop's mean."""
    return np.asarray(embeddings, np.float32).reshape(-1, views, embeddings.shape[-1]).mean(axis=1)


@dataclass
class Scored:
    """The answers of k images as columns: what prediction_table writes for the rows that have one."""

    probs: np.ndarray  # (k, C) float32, calibrated unless `calibrated` is False
    calibrated: bool
    ood_score: np.ndarray | None  # (k,) float64, None without an OOD rule
    in_distribution: np.ndarray | None  # (k,) bool
    spread: np.ndarray | None  # (k,) float32 with tta 8, else None
    embeddings: np.ndarray | None  # (k, D) float32 when asked for, else None

    @classmethod
    def empty(cls, classes: int, calibrated: bool) -> Scored:
        return cls(np.zeros((0, classes), np.float32), calibrated, None, None, None, None)


@dataclass
class Predictor:
    """One ONNX Runtime session with its card's scorer: the catalogue engines' whole inference."""

    model: LoadedModel
    scorer: Scorer
    tta: int
    embeddings: bool

    @property
    def provider(self) -> str:
        return self.model.provider

    def predict(self, batch: np.ndarray) -> Scored:
        """(k, 3, S, S) float32 normalised crops -> their answers (ONNX Runtime calls of at most k images)."""
        k = len(batch)
        if k == 0:
            return Scored.empty(len(self.model.card.class_names), self.scorer.temperature is not None)
        views = views_of(batch, self.tta)
        logits, embeddings = [], []
        for start in range(0, len(views), k):
            out_logits, out_embeddings = self.model.outputs(views[start : start + k])
            logits.append(out_logits)
            embeddings.append(out_embeddings)
        all_embeddings = None if embeddings[0] is None else np.concatenate(embeddings)
        # only the identity views (the batch itself) are OOD-scored: combine_views reports theirs
        scored = [is_identity_view(row, self.tta) for row in range(len(views))]
        crops = denormalize(batch, self.model.card.prep) if self.scorer.needs_crops else None  # the pixel rule's
        items = combine_views(self.scorer.score(np.concatenate(logits), all_embeddings, crops, scored), self.tta)
        has_rule = self.scorer.rule is not None
        return Scored(
            probs=np.stack([item["p"] for item in items]).astype(np.float32),
            calibrated=bool(items[0]["calibrated"]),
            ood_score=np.array([item["ood_score"] for item in items], np.float64) if has_rule else None,
            in_distribution=np.array([item["in_distribution"] for item in items], bool) if has_rule else None,
            spread=np.array([item["spread"] for item in items], np.float32) if self.tta > 1 else None,
            embeddings=None if not self.embeddings or all_embeddings is None else view_mean(all_embeddings, self.tta),
        )


def open_predictor(ref: ModelRef, device: str, threads: int = 0) -> Predictor:
    """The ONNX Runtime session of `ref` (the service's loading code) and its scorer, as the service makes them."""
    from inference.runtime import load_model

    model = load_model(ref.name, ref.model_dir, ref.variant, device, threads)
    scorer = Scorer.for_card(ref.model_dir, model.card, ref.calibrate)
    return Predictor(model, scorer, ref.info.tta, ref.info.embedding_dim > 0)
