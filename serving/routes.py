"""The HTTP routes (a Starlette app, mounted on the BentoML front end service).

  POST /classify       multipart form: one or more `images` file fields, optional `model` and `tta` fields
  POST /classify/raw   body = the image bytes, Content-Type image/jpeg|png|tiff|fits; ?model=NAME&tta=1|8
  POST /explain        body as /classify/raw; ?model=NAME&format=json|png: the prediction and attention map
  GET  /models         the served models' cards and classes, the active ONNX Runtime provider, the default model
  POST /feedback       {"request_id": "...", "label": index or class name of the model that predicted}
  GET  /openapi.json   OpenAPI document of these endpoints

Every answer speaks the class names of the model that made it (its card's `class_names`).
Errors are ServiceErrors, answered as {"error": message, "kind": kind, "status": code}.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from galaxyvit.card import ModelCard
from galaxyvit.overlay import figure_png, prediction_title
from inference.decode import check_content_type
from inference.explain import has_explain
from inference.scoring import combine_views, view_crops
from serving.admission import CLIENT_CLOSED, client_disconnected
from serving.auth import KEY_ID
from serving.catalog import Catalog, ServedModel
from serving.config import ServingConfig
from serving.decode_pool import DecodePool
from serving.errors import ServiceError, error_response, starlette_error
from serving.inference import InferenceClient
from serving.metrics import get_metrics
from serving.openapi import build_openapi
from serving.store import FeedbackExists, OtherOwner, PredictionStore, UnknownRequest
from serving.uploads import check_image_count, decode_crop, parse_format, parse_tta, read_body

FEEDBACK_SHAPE = '{"request_id": "...", "label": class index or class name}'
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


class Handlers:
    """What the routes do, for one API worker: decoding, limits, the evaluation crop, the prediction store."""

    def __init__(
        self, catalog: Catalog, config: ServingConfig, store: PredictionStore, inference: InferenceClient
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.store = store
        self.inference = inference
        self.metrics = get_metrics()
        self.decoder = DecodePool(config.decode_threads)
        self._providers: dict[str, Any] | None = None

    async def crops(self, model: ServedModel, blobs: list[bytes]) -> list[np.ndarray]:
        """Decode and crop the uploads: CPU work in threads, which keeps the event loop (health checks, other
        requests) responsive, and a fixed number of them bounds the memory of concurrent decoding."""
        prep, config = model.card.prep, self.config
        return await self.decoder.map([functools.partial(decode_crop, b, prep, config) for b in blobs])

    async def predict(
        self, model: ServedModel, blobs: list[bytes], owner: str | None = None, tta: int = 1
    ) -> list[dict[str, Any]]:
        """Decode, crop, batch (each image, or its 8 views) through the inference service, record (for API
        key `owner`) and format one result per image."""
        crops = view_crops(await self.crops(model, blobs), tta)
        answers = await self.inference.infer([{"model": model.name, "x": x, "t": time.time()} for x in crops])
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
        await asyncio.to_thread(self.store.add, rows, owner)
        return results

    async def classify(self, request: Request) -> Response:
        body = await read_body(request, self.config.max_upload_bytes)
        if not body:
            raise ServiceError(
                "empty_body", 400, "empty request: send multipart form data with one or more `images` files"
            )
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "multipart/form-data":
            raise ServiceError(
                "unsupported_media_type",
                415,
                f"POST /classify takes multipart/form-data (fields `images`, `model`), not {media or '(none)'!r}; "
                "send raw image bytes to /classify/raw",
            )

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=self.config.max_images + 1, max_fields=16)
        except Exception as exc:
            raise ServiceError(
                "bad_multipart", 400, f"malformed multipart body: {getattr(exc, 'detail', exc)}"
            ) from None
        try:
            files = form.getlist("images")
            if any(isinstance(f, str) for f in files):
                raise ServiceError("bad_multipart", 400, "`images` fields must be files, not text")
            if not files:
                raise ServiceError("no_images", 400, "no `images` file in the form")
            requested, tta_field = form.get("model"), form.get("tta")
            if not isinstance(requested, str | None) or not isinstance(tta_field, str | None):
                raise ServiceError("bad_multipart", 400, "`model` and `tta` must be text fields")
            tta = parse_tta(tta_field)
            check_image_count(len(files), tta, self.config)
            model = self.catalog.get(requested)
            blobs = [await f.read() for f in files if not isinstance(f, str)]
        finally:
            await form.close()
        predictions = await self.predict(model, blobs, request.scope.get(KEY_ID), tta)
        return JSONResponse({"model": model.name, "predictions": predictions})

    async def classify_raw(self, request: Request) -> Response:
        check_content_type(request.headers.get("content-type"))
        model = self.catalog.get(request.query_params.get("model"))
        tta = parse_tta(request.query_params.get("tta"))
        check_image_count(1, tta, self.config)
        body = await read_body(request, self.config.max_upload_bytes)
        (result,) = await self.predict(model, [body], request.scope.get(KEY_ID), tta)
        return JSONResponse(result)

    async def explain(self, request: Request) -> Response:
        """One image as /classify/raw; its prediction from the explain variant with the g x g map as JSON, or
        with ?format=png the figure of galaxyvit/overlay.py (the crop, the map over it, a colour bar)."""
        check_content_type(request.headers.get("content-type"))
        model = self.catalog.get(request.query_params.get("model"))
        image_format = parse_format(request.query_params.get("format"))
        if not has_explain(model.card):
            raise ServiceError(
                "no_explain", 404, f"model {model.name!r} was exported without the explain variant (--no-explain)"
            )
        body = await read_body(request, self.config.max_upload_bytes)
        (crop,) = await self.crops(model, [body])
        (answer,) = await self.inference.infer([{"model": model.name, "x": crop, "t": time.time(), "explain": True}])
        (result,) = await self.record(model, [answer], request.scope.get(KEY_ID))
        method = model.card.explain["map_method"] if model.card.explain else "rollout"
        rollout = np.asarray(answer["rollout"], np.float32)
        if image_format == "png":
            p = max(result["probabilities"].values())
            flag = ", flagged: maybe not a galaxy" if result["in_distribution"] is False else ""
            title = f"{prediction_title(result['class_name'], p, result['calibrated'])}\nmodel {model.name}{flag}"
            png = await asyncio.to_thread(figure_png, crop, rollout, method != "rollout", title)
            headers = {"X-Request-Id": result["request_id"], "X-Class-Name": result["class_name"]}
            return Response(png, media_type="image/png", headers=headers)
        return JSONResponse({**result, "map_method": method, "grid": len(rollout), "rollout": rollout.tolist()})

    async def list_models(self, request: Request) -> Response:
        if self._providers is None:
            self._providers = await self.inference.describe()
        expose = self.config.expose_model_details
        models = [
            {"name": m.name, "classes": m.classes, **card_fields(m.card, expose), **self._providers[m.name]}
            for m in self.catalog.models.values()
        ]
        return JSONResponse({"default": self.catalog.default, "models": models})

    async def feedback(self, request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        try:
            data = json.loads(body or b"null")
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested deeper than the parser recurses
            raise ServiceError("bad_json", 400, f"feedback must be JSON: {FEEDBACK_SHAPE}") from None
        if not isinstance(data, dict) or not isinstance(data.get("request_id"), str) or "label" not in data:
            raise ServiceError("bad_json", 400, f"feedback must be {FEEDBACK_SHAPE}")
        request_id, label, owner = data["request_id"], data["label"], request.scope.get(KEY_ID)
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
        return JSONResponse(
            {
                "request_id": request_id,
                "model": model.name,
                "predicted": predicted,
                "label": true_label,
                "correct": correct,
                "online_accuracy": await self.online_accuracy(model, true_label, correct),
            }
        )

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

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(build_openapi(self.catalog, self.config))


Handler = Callable[[Handlers, Request], Awaitable[Response]]


def http_app(config: ServingConfig) -> Starlette:
    """The routes. They answer with `app.state.handlers`, set when the service instance starts in a worker
    (serving/deployment.py); until then they answer 503 `not_ready`."""

    def route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handlers: Handlers | None = getattr(request.app.state, "handlers", None)
            try:
                if handlers is None:
                    raise ServiceError("not_ready", 503, "service is starting")
                return await handler(handlers, request)
            except ServiceError as exc:
                return error_response(exc, config.retry_after_s)
            except ClientDisconnect:  # the body is read by serving/admission.py; this is for the app alone
                client_disconnected(request.url.path, "while its body was read")
                return Response(status_code=CLIENT_CLOSED)  # never delivered: nobody is listening

        return endpoint

    return Starlette(
        exception_handlers={HTTPException: starlette_error},
        routes=[
            Route("/classify", route(Handlers.classify), methods=["POST"]),
            Route("/classify/raw", route(Handlers.classify_raw), methods=["POST"]),
            Route("/explain", route(Handlers.explain), methods=["POST"]),
            Route("/models", route(Handlers.list_models), methods=["GET"]),
            Route("/feedback", route(Handlers.feedback), methods=["POST"]),
            Route("/openapi.json", route(Handlers.openapi), methods=["GET"]),
        ],
    )
