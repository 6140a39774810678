"""POST /explain in the inference processes: the `explain` ONNX variant (logits, embedding and the attention
maps) of a served model, loaded beside it and sha256-checked against the model card.

explain.onnx is fp32 whichever variant is served, so its answers use the fp32 card's temperature and
OOD rule (docs/export.md). A model exported with `--no-explain` has none: /explain answers 404 `no_explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galaxyvit.card import ModelCard, card_path, load_card, verified_artifact
from galaxyvit.preprocess import normalize
from inference.scoring import Scorer

EXPLAIN_ARTIFACT = "explain"


def has_explain(card: ModelCard) -> bool:
    """The card lists the explain variant (the front end refuses /explain for a model without it)."""
    return EXPLAIN_ARTIFACT in card.artifacts and card.explain is not None


@dataclass
class ExplainModel:
    """explain.onnx of one model in ONNX Runtime, with the fp32 card's scorer."""

    card: ModelCard  # the fp32 card: explain.onnx's preprocessing, temperature and OOD rule
    session: Any  # onnxruntime.InferenceSession
    scorer: Scorer

    def explain(self, crops: list[np.ndarray]) -> list[dict[str, Any]]:
        """Evaluation crops (H, W, 3) uint8 -> one scored item each, with `rollout` (g, g) and `heads` (H, g, g)
        float32 (the last layer's map of each head; training/attention.py)."""
        prep = self.card.prep
        batch = np.empty((len(crops), 3, prep.size, prep.size), np.float32)
        for row, crop in enumerate(crops):
            normalize(np.asarray(crop), prep, out=batch[row])
        names = [self.card.output_name, self.card.embedding_name or "embedding", "rollout", "heads"]
        logits, embeddings, rollout, heads = self.session.run(names, {self.card.input_name: batch})
        items = self.scorer.score(logits, embeddings, crops)
        for item, grid, per_head in zip(items, rollout, heads, strict=True):
            item["rollout"] = np.asarray(grid, np.float32)
            item["heads"] = np.asarray(per_head, np.float32)
        return items


def load_explain(
    model_dir: str | Path, served: ModelCard, calibrate: bool, device: str, threads: int, spinning: bool
) -> ExplainModel | None:
    """The explain variant of the model in `model_dir`, or None when its card lists none."""
    from inference.runtime import open_session  # ONNX Runtime: only in inference processes

    if not has_explain(served):
        return None
    card = served if served.variant == "fp32" else load_card(card_path(model_dir, "fp32"))
    path = verified_artifact(model_dir, card, EXPLAIN_ARTIFACT)
    session = open_session(path, device, threads, spinning)
    return ExplainModel(card=card, session=session, scorer=Scorer.for_card(model_dir, card, calibrate))
