"""The endpoints' answers: pydantic models (BentoML's OpenAPI document, /schema.json and its clients read them)
and the one JSON encoder the service answers with.

The endpoints build plain dicts and answer them with `json_response` (one encoder pass, no model
validation per request); these models say what the dicts hold. A client that knows the service
(`bentoml.depends(GalaxyClassifier)`) gets them as these models, SyncHTTPClient(url) as dicts.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response


class Prediction(BaseModel):
    request_id: str = Field(description="id to send to /feedback")
    model: str
    model_version: str
    label: int = Field(description="index of the predicted class among the model's classes")
    class_name: str = Field(description="a class name of `model`")
    probabilities: dict[str, float] = Field(
        description="probability of every class of `model`, keyed by class name in label order; with tta=8 the "
        "mean over the 8 views"
    )
    calibrated: bool = Field(description="softmax(logits / T) with the card's fitted temperature T")
    ood_score: float | None = Field(
        description="not-a-galaxy score (higher = more like a training galaxy); null when the model has no OOD rule"
    )
    in_distribution: bool | None = Field(
        description="ood_score >= the card's threshold (0 when the card has a pixel rule); null if no rule"
    )
    tta: int = Field(description="views averaged: 1 or 8")
    spread: float | None = Field(
        None, description="tta=8 only: standard deviation across the views of the top class's probability"
    )


class Classified(BaseModel):
    model: str
    predictions: list[Prediction] = Field(description="one prediction per image, in upload order")


class Explained(Prediction):
    map_method: str = Field(description="rollout or linformer-value-projection")
    grid: int = Field(description="g: patches per side")
    rollout: list[list[float]] = Field(description="g rows of g values: the attention map over the patch grid")
    heads: list[list[list[float]]] = Field(
        description="H maps of g rows of g values: each head's map of the last layer (`rollout` for the Linformer "
        "is their mean)"
    )


class ModelsInfo(BaseModel):
    default: str = Field(description="the model a request that names none gets")
    models: list[dict[str, Any]] = Field(
        description="each served model's card, `classes` and the ONNX Runtime `provider` it runs on"
    )


class FeedbackResult(BaseModel):
    request_id: str
    model: str
    predicted: int
    label: int
    correct: bool
    online_accuracy: dict[str, Any] = Field(description="the model's accuracy from all feedback, overall and per class")


class ErrorAnswer(BaseModel):
    """Every refusal: {"error": message, "kind": machine-readable kind, "status": the HTTP status}."""

    error: str
    kind: str
    status: int


def dumps(data: Any) -> bytes:
    """JSON bytes of `data` (orjson: several times the standard library's speed; numpy arrays and scalars)."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")
