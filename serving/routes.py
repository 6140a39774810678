"""What the endpoints do (`Handlers`: decoding, limits, the evaluation crop, inference, the prediction store,
feedback) and the few plain Starlette routes beside the @bentoml.api endpoints (serving/endpoints.py).

Every answer speaks the class names of the model that made it (its card's `class_names`).
Refusals are ServiceErrors, answered as {"error": message, "kind": kind, "status": code}.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from galaxyvit.card import ModelCard
from galaxyvit.overlay import figure_png, prediction_title
from inference.explain import has_explain
from inference.jpeg import jpeg_pixels
from inference.scoring import combine_views, is_identity_view, view_crops
from serving.catalog import Catalog, ServedModel
from serving.config import ServingConfig
from serving.decode_pool import DecodePool
from serving.errors import ServiceError, error_response
from serving.inference import InferenceClient, refuse_if_refused
from serving.metrics import get_metrics
from serving.outputs import json_response
from serving.store import FeedbackExists, OtherOwner, PredictionStore, StoreWriter, UnknownRequest
from serving.uploads import check_image_count, decode_crop

# JPEGs up to this size (GZ2 cutouts are 424x424) are decoded by the inference process; larger ones here, so that
# one big image does not hold up the batch of everyone else's
HANDOFF_MAX_PIXELS = 1024 * 1024
MODEL_DETAILS = ("run_config", "confusion_matrix")  # card fields GET /models shows only with expose_model_details


def label_index(value: Any, classes: list[str]) -> int | None:
    """The index `value` names among `classes`, given as an index or as a class name; None if it names none."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    return None


def parse_label(value: Any, model: ServedModel) -> int:
    """A feedback label for a prediction of `model`; one its classes do not have is a 400 `bad_label`."""
    index = label_index(value, model.classes)
    if index is None:
        raise ServiceError(
            "bad_label",
            400,
            f"label must be an integer 0..{len(model.classes) - 1} or one of the classes of model {model.name!r} "
            f"{model.classes}, not {value!r}",
        )
    return index


def card_fields(card: ModelCard, expose_details: bool) -> dict[str, Any]:
    """What GET /models shows of a model card: all of it, or all but the training settings and confusion matrix."""
    fields = card.to_dict()
    return fields if expose_details else {k: v for k, v in fields.items() if k not in MODEL_DETAILS}


def hand_off(blobs: list[bytes], tta: int) -> bool:
    """Whether the inference process decodes these uploads: with tta=1, when all are cutout-sized JPEGs. It
    decodes and crops them beside the batch with the same code and limits (serving/uploads.py `decode_crop`), and
    a 20 KB file crosses between the processes instead of a 150 KB crop."""
    return tta == 1 and all(0 < (jpeg_pixels(blob) or 0) <= HANDOFF_MAX_PIXELS for blob in blobs)


class Handlers:
    """What the routes do, for one API worker: decoding, limits, the evaluation crop, the prediction store."""

    def __init__(
        self, catalog: Catalog, config: ServingConfig, store: PredictionStore, inference: InferenceClient
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.store = store
        self.writer = StoreWriter(store)
        self.inference = inference
        self.metrics = get_metrics()
        self.decoder = DecodePool(config.decode_threads)
        self._providers: dict[str, Any] | None = None

    async def crops(self, model: ServedModel, blobs: list[bytes]) -> list[np.ndarray]:
        """Decode and crop the uploads: CPU work in threads, which keeps the event loop (health checks, other
        requests) responsive, and a fixed number of them bounds the memory of concurrent decoding."""
        prep, config = model.card.prep, self.config
        jobs = [functools.partial(decode_crop, b, prep, config) for b in blobs]
        return [await self.decoder.run(jobs[0])] if len(jobs) == 1 else await self.decoder.map(jobs)

    async def model_inputs(self, model: ServedModel, blobs: list[bytes], tta: int) -> list[dict[str, Any]]:
        """What each item carries to the inference service: the JPEG itself (`jpeg`) when `hand_off`, else the
        evaluation crop decoded here on the decoding threads (`x`; with tta=8 each crop's 8 views)."""
        if hand_off(blobs, tta):
            return [{"jpeg": blob} for blob in blobs]
        views = view_crops(await self.crops(model, blobs), tta)
        return [{"x": x, "ood": is_identity_view(row, tta)} for row, x in enumerate(views)]

    async def predict(
        self, model: ServedModel, blobs: list[bytes], owner: str | None = None, tta: int = 1
    ) -> list[dict[str, Any]]:
        """Decode, crop, batch (each image, or its 8 views) through the inference service, record (for API
        key `owner`) and format one result per image."""
        items = [{"model": model.name, "t": time.time(), **sent} for sent in await self.model_inputs(model, blobs, tta)]
        answers = await self.inference.infer(items)
        for answer in answers:
            refuse_if_refused(answer)
        return await self.record(model, combine_views(answers, tta), owner, tta)

    async def record(
        self, model: ServedModel, answers: list[dict[str, Any]], owner: str | None, tta: int = 1
    ) -> list[dict[str, Any]]:
        """Store and format scored answers (inference/scoring.py): one result per image."""
        classes = model.classes
        results, rows = [], []
        for answer in answers:
            p = np.asarray(answer["p"], np.float64)
            label = int(np.argmax(p))
            request_id = uuid.uuid4().hex
            rows.append((request_id, model.name, label))
            self.metrics.predictions.labels(model.name, classes[label]).inc()
            result = {
                "request_id": request_id,
                "model": model.name,
                "model_version": model.card.version,
                "label": label,
                "class_name": classes[label],
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
                "calibrated": bool(answer["calibrated"]),
                "ood_score": answer["ood_score"],
                "in_distribution": answer["in_distribution"],
                "tta": tta,
            }
            if "spread" in answer:
                result["spread"] = answer["spread"]
            results.append(result)
        await self.writer.add(rows, owner)
        return results

    async def classify(
        self, images: list[bytes], requested: str | None, tta: int, owner: str | None = None
    ) -> dict[str, Any]:
        check_image_count(len(images), tta, self.config)
        model = self.catalog.get(requested)
        return {"model": model.name, "predictions": await self.predict(model, images, owner, tta)}

    async def classify_one(
        self, image: bytes, requested: str | None, tta: int, owner: str | None = None
    ) -> dict[str, Any]:
        check_image_count(1, tta, self.config)
        model = self.catalog.get(requested)
        (result,) = await self.predict(model, [image], owner, tta)
        return result

    async def explain(self, image: bytes, requested: str | None, image_format: str, owner: str | None = None) -> Any:
        """One image's prediction from the explain variant with the g x g map as a dict, or with format png the
        figure of galaxyvit/overlay.py (the crop, the map over it, a colour bar; a PNG response)."""
        model = self.catalog.get(requested)
        if not has_explain(model.card):
            raise ServiceError(
                "no_explain", 404, f"model {model.name!r} was exported without the explain variant (--no-explain)"
            )
        (crop,) = await self.crops(model, [image])
        (answer,) = await self.inference.infer([{"model": model.name, "x": crop, "t": time.time(), "explain": True}])
        (result,) = await self.record(model, [answer], owner)
        method = model.card.explain["map_method"] if model.card.explain else "rollout"
        rollout = np.asarray(answer["rollout"], np.float32)
        if image_format == "png":
            p = max(result["probabilities"].values())
            flag = ", flagged: maybe not a galaxy" if result["in_distribution"] is False else ""
            title = f"{prediction_title(result['class_name'], p, result['calibrated'])}\nmodel {model.name}{flag}"
            png = await asyncio.to_thread(figure_png, crop, rollout, method != "rollout", title)
            headers = {"X-Request-Id": result["request_id"], "X-Class-Name": result["class_name"]}
            return Response(png, media_type="image/png", headers=headers)
        heads = np.asarray(answer["heads"], np.float32)  # (H, g, g): each head of the last layer
        maps = {"map_method": method, "grid": len(rollout), "rollout": rollout.tolist(), "heads": heads.tolist()}
        return {**result, **maps}

    async def list_models(self) -> dict[str, Any]:
        if self._providers is None:
            self._providers = await self.inference.describe()
        expose = self.config.expose_model_details
        models = [
            {"name": m.name, "classes": m.classes, **card_fields(m.card, expose), **self._providers[m.name]}
            for m in self.catalog.models.values()
        ]
        return {"default": self.catalog.default, "models": models}

    async def feedback(self, request_id: str, label: Any, owner: str | None = None) -> dict[str, Any]:
        if all(label_index(label, m.classes) is None for m in self.catalog.models.values()):
            # refused before the store is asked which model made the prediction
            raise ServiceError(
                "bad_label", 400, f"label must be a class index or a class name of the predicting model, not {label!r}"
            )
        try:
            model = self.catalog.get(await asyncio.to_thread(self.store.model_of, request_id, owner))
            true_label = parse_label(label, model)
            _, predicted, correct = await asyncio.to_thread(self.store.feedback, request_id, true_label, owner)
        except UnknownRequest:
            raise ServiceError(
                "unknown_request_id",
                404,
                f"unknown request_id {request_id!r} (never issued, or older than the last "
                f"{self.config.store_size} predictions)",
            ) from None
        except OtherOwner:
            raise ServiceError("forbidden", 403, f"request_id {request_id!r} was issued to another API key") from None
        except FeedbackExists:
            raise ServiceError(
                "duplicate_feedback", 409, f"feedback for request_id {request_id!r} was already recorded"
            ) from None
        return {
            "request_id": request_id,
            "model": model.name,
            "predicted": predicted,
            "label": true_label,
            "correct": correct,
            "online_accuracy": await self.online_accuracy(model, true_label, correct),
        }

    async def online_accuracy(self, model: ServedModel, true_label: int, correct: bool) -> dict[str, Any]:
        """Count one feedback in the metrics; the model's accuracy from all feedback so far, overall and per class."""
        classes = model.classes
        self.metrics.feedback.labels(model.name, classes[true_label]).inc()
        if correct:
            self.metrics.feedback_correct.labels(model.name, classes[true_label]).inc()
        counts = await asyncio.to_thread(self.store.counts, model.name)
        total = sum(t for t, _ in counts.values())
        right = sum(c for _, c in counts.values())
        self.metrics.online_accuracy.labels(model.name, "all").set(right / total)
        per_class = {}
        for label, (t, c) in sorted(counts.items()):
            per_class[classes[label]] = {"total": t, "correct": c, "accuracy": c / t}
            self.metrics.online_accuracy.labels(model.name, classes[label]).set(c / t)
        return {"total": total, "correct": right, "accuracy": right / total, "per_class": per_class}


def http_app(config: ServingConfig, api_paths: tuple[str, ...] = ()) -> Starlette:
    """What the @bentoml.api endpoints (POST only) do not cover: GET /models, the OpenAPI document at
    /openapi.json and /docs.json (`app.state.openapi`, set by serving/deployment.py), and a JSON 405 for other
    methods on `api_paths`. GET /models answers with `app.state.handlers`, set when the service instance
    starts in a worker (serving/endpoints.py); until then 503 `not_ready`."""

    async def models(request: Request) -> Response:
        handlers: Handlers | None = getattr(request.app.state, "handlers", None)
        if handlers is None:
            return error_response(ServiceError("not_ready", 503, "service is starting"), config.retry_after_s)
        return json_response(await handlers.list_models())

    async def openapi(request: Request) -> Response:
        return json_response(request.app.state.openapi())

    async def not_allowed(request: Request) -> Response:
        allowed = "GET, POST" if request.url.path == "/models" else "POST"
        refusal = ServiceError("method_not_allowed", 405, f"{request.method} {request.url.path}: use {allowed}")
        return error_response(refusal, headers={"Allow": allowed})

    others = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/models", models, methods=["GET"]),
            Route("/models", not_allowed, methods=["PUT", "DELETE", "PATCH", "OPTIONS"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs.json", openapi, methods=["GET"]),
            *(Route(path, not_allowed, methods=others) for path in api_paths if path != "/models"),
        ],
    )
