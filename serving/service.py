"""The BentoML service: galaxy images in, 8-class morphology probabilities out, for several models.

Two BentoML services in one deployment (`bentoml serve serving.service:GalaxyClassifier`):
- `GalaxyClassifier` (entry, `workers` processes): HTTP endpoints, decoding, limits, the
  evaluation crop (`galaxyvit.preprocess.eval_crop`), the prediction store, feedback.
- `GalaxyModels` (`inference_workers` processes): the normalisation (`galaxyvit.preprocess.normalize`;
  crop then normalise is `eval_array`, the offline evaluation transform) and every served model in
  ONNX Runtime behind one batchable API; BentoML's adaptive batcher gathers images of concurrent requests (up to
  `max_batch_size`, waiting at most `max_latency_ms`) and each batch runs grouped per model.

Endpoints (JSON everywhere; errors are {"error": message, "kind": kind, "status": code}):
  POST /classify       multipart form: one or more `images` file fields, optional `model` field
  POST /classify/raw   body = the image bytes, Content-Type image/jpeg|png|tiff|fits; ?model=NAME
  GET  /models         the served models' cards, active ONNX Runtime provider, the default model
  POST /feedback       {"request_id": "...", "label": 0..7 or class name}
  GET  /openapi.json   OpenAPI document of these endpoints; BentoML adds /livez /readyz /metrics,
                       Swagger UI at / and its own document at /docs.json

No torch is imported here. Settings: serving/config.py.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from galaxyvit.card import CardError, IntegrityError, ModelCard, card_path, load_card, load_verified
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.preprocess import eval_crop, normalize
from galaxyvit.store import discover_models, stored_model_dir, tag
from serving.bentoml_patches import bound_metric_labels, hold_sigterm_while_api_workers_run, stop_workers_before_cleanup
from serving.config import load_config
from serving.decode import InputError, check_content_type, decode_image

logger = logging.getLogger("galaxyvit.serving")

CONFIG = load_config()
SERVED: list[str] = CONFIG.models or discover_models()
if not SERVED:
    raise RuntimeError(
        "no model to serve: register one with `galaxyvit export CHECKPOINT` (BentoML model galaxyvit-<name>) "
        "or name them in GALAXYVIT_MODELS"
    )
DEFAULT_MODEL = CONFIG.default_model or SERVED[0]
if DEFAULT_MODEL not in SERVED:
    raise RuntimeError(f"default model {DEFAULT_MODEL!r} is not among the served models {SERVED}")


def verify_artifacts(names: list[str], variant: str) -> None:
    """Check every served model file against the sha256 of its card before BentoML starts any worker.

    A tampered or corrupted artifact then stops `bentoml serve` (and `bentoml build`) at once with a
    clear error, instead of an inference worker that fails, restarts forever and never turns ready.
    """
    for name in names:
        model_dir = stored_model_dir(name)
        try:
            load_verified(model_dir, variant)
        except (CardError, IntegrityError) as exc:
            raise IntegrityError(f"refusing to serve model {name!r}: {exc}") from None


verify_artifacts(SERVED, CONFIG.variant)


ENTRY_SERVICE = "galaxyvit"  # the name of the HTTP front end service (GalaxyClassifier below)


def _attr(name: str) -> str:
    return "model_" + "".join(c if c.isalnum() else "_" for c in name)


class _GalaxyModels:
    """ONNX Runtime inference for every served model (class-level BentoModel references are added below)."""

    def __init__(self) -> None:
        from serving.metrics import get_metrics
        from serving.runtime import default_threads, load_model

        threads = CONFIG.intra_op_threads or default_threads(CONFIG.inference_workers)
        self.metrics = get_metrics()
        self.loaded = {}
        for name in SERVED:
            stored = getattr(self, _attr(name))  # the BentoModel descriptor gives the stored model
            model = load_model(name, stored.path, CONFIG.variant, CONFIG.device, threads, CONFIG.intra_op_spinning)
            # before /readyz turns ready; on CUDA also the largest batch (memory arena, kernel choice)
            model.warm_up((1, 2, CONFIG.max_batch_size) if model.provider == "CUDAExecutionProvider" else (1, 2))
            self.loaded[name] = model
            self.metrics.provider.labels(name, model.provider).set(1)
            for split, acc in (("valid", model.card.valid_acc), ("test", model.card.test_acc)):
                if acc is not None:
                    self.metrics.offline_accuracy.labels(name, split).set(acc)
            logger.warning("serving %s (%s %s) on %s", name, model.card.family, model.card.variant, model.provider)
        hold_sigterm_while_api_workers_run(ENTRY_SERVICE, CONFIG.timeout_s)

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, items: list[dict[str, Any]]) -> list[Any]:
        """Items {"model": name, "x": (H,W,3) uint8 eval crop, "t": hand-off time} -> (8,) probabilities each.

        The crops travel as uint8 (a quarter of the float32 bytes between the processes) and are
        normalised here, straight into the batch (`galaxyvit.preprocess.normalize`, the same function
        as offline evaluation)."""
        start = time.time()
        out: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item["model"], []).append(i)
        for name, idx in groups.items():
            model = self.loaded[name]
            for i in idx:
                self.metrics.queue_seconds.labels(name).observe(max(0.0, start - float(items[i]["t"])))
            size = model.card.prep.size
            batch = np.empty((len(idx), 3, size, size), np.float32)
            for row, i in enumerate(idx):
                normalize(np.asarray(items[i]["x"]), model.card.prep, out=batch[row])
            t0 = time.perf_counter()
            probs = model.predict(batch)
            self.metrics.inference_seconds.labels(name).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(name).observe(len(idx))
            for j, i in enumerate(idx):
                out[i] = probs[j]
        return out

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """Each model's card and the provider ONNX Runtime actually uses."""
        return {
            name: {"card": m.card.to_dict(), "provider": m.provider, "providers": m.session.get_providers()}
            for name, m in self.loaded.items()
        }


stop_workers_before_cleanup()
bound_metric_labels()

for _name in SERVED:
    setattr(_GalaxyModels, _attr(_name), bentoml.models.BentoModel(tag(_name)))

GalaxyModels = bentoml.service(
    name="galaxyvit_models",
    workers=CONFIG.inference_workers,
    traffic={"timeout": CONFIG.timeout_s},
    # BentoML 1.4 replaces the API workers' client session every 100 calls or 300 s and closes the old
    # one with requests still in flight on it, which fails them (503 inference_unavailable under load).
    # Keep one session for the life of the worker instead.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9},
)(_GalaxyModels)


# ---------------------------------------------------------------- HTTP front end


def error_response(exc: InputError, retry_after: int | None = None) -> JSONResponse:
    from serving.metrics import get_metrics

    get_metrics().errors.labels(exc.kind).inc()
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise InputError(f"bad Content-Length {declared!r}", "bad_request")
        if int(declared) > limit:
            raise InputError(f"request body of {declared} bytes exceeds the limit of {limit}", "too_large", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"request body exceeds the limit of {limit} bytes", "too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_label(value: Any) -> int:
    if isinstance(value, bool):
        raise InputError("label must be an integer 0..7 or a class name", "bad_label")
    if isinstance(value, int) and 0 <= value < len(CLASS_NAMES):
        return value
    if isinstance(value, str) and value in CLASS_NAMES:
        return CLASS_NAMES.index(value)
    raise InputError(f"label must be an integer 0..7 or one of {list(CLASS_NAMES)}, not {value!r}", "bad_label")


class _GalaxyClassifier:
    """HTTP front end: decoding, limits, preprocessing, the prediction store and feedback."""

    models = bentoml.depends(GalaxyModels)

    def __init__(self) -> None:
        from serving.metrics import get_metrics, multiprocess_dir
        from serving.store import PredictionStore

        global _INSTANCE
        self.metrics = get_metrics()
        self.cards: dict[str, ModelCard] = {}
        for name in SERVED:
            self.cards[name] = load_card(card_path(stored_model_dir(name), CONFIG.variant))
        store_dir = Path(CONFIG.store_dir or multiprocess_dir() or tempfile.mkdtemp(prefix="galaxyvit-"))
        self.store = PredictionStore(store_dir / "galaxyvit-predictions.sqlite", CONFIG.store_size)
        self._describe: dict[str, Any] | None = None
        _INSTANCE = self

    def model_name(self, requested: str | None) -> str:
        name = (requested or "").strip() or DEFAULT_MODEL
        if name not in self.cards:
            raise InputError(f"unknown model {name!r}; served models: {', '.join(SERVED)}", "unknown_model", 404)
        return name

    async def predict(self, name: str, blobs: list[bytes]) -> list[dict[str, Any]]:
        """Decode, preprocess, batch through GalaxyModels, record and format one result per image."""
        card = self.cards[name]
        prep = card.prep
        # decoding is CPU work: a thread keeps the event loop (health checks, other requests) responsive
        crops = await asyncio.to_thread(lambda: [eval_crop(decode_image(b, CONFIG.max_pixels), prep) for b in blobs])
        items = [{"model": name, "x": x, "t": time.time()} for x in crops]
        try:
            # one call per request: BentoML's batcher merges the calls of concurrent requests
            probs = await self.models.to_async.infer(items)
        except bentoml.exceptions.BentoMLException as exc:
            if int(getattr(exc, "error_code", 500)) in (429, 503):
                raise InputError("inference is overloaded; retry shortly", "overloaded", 503) from None
            raise
        except Exception as exc:
            # connection trouble with the inference processes (aiohttp errors under overload, a restart)
            if not isinstance(exc, OSError | TimeoutError) and type(exc).__module__.split(".")[0] != "aiohttp":
                raise
            logger.warning("inference call failed: %r", exc)
            raise InputError("inference is unavailable; retry shortly", "inference_unavailable", 503) from None
        results, rows = [], []
        for p in probs:
            p = np.asarray(p, np.float64)
            label = int(np.argmax(p))
            request_id = uuid.uuid4().hex
            rows.append((request_id, name, label))
            self.metrics.predictions.labels(name, CLASS_NAMES[label]).inc()
            results.append(
                {
                    "request_id": request_id,
                    "model": name,
                    "model_version": card.version,
                    "label": label,
                    "class_name": CLASS_NAMES[label],
                    "probabilities": {c: float(v) for c, v in zip(CLASS_NAMES, p)},
                }
            )
        await asyncio.to_thread(self.store.add, rows)
        return results

    async def classify(self, request: Request) -> JSONResponse:
        body = await read_body(request, CONFIG.max_upload_bytes)
        if not body:
            raise InputError("empty request: send multipart form data with one or more `images` files", "empty_body")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "multipart/form-data":
            raise InputError(
                f"POST /classify takes multipart/form-data (fields `images`, `model`), not {media or '(none)'!r}; "
                "send raw image bytes to /classify/raw",
                "unsupported_media_type",
                415,
            )

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=CONFIG.max_images + 1, max_fields=16)
        except Exception as exc:
            raise InputError(f"malformed multipart body: {getattr(exc, 'detail', exc)}", "bad_multipart") from None
        try:
            files = [f for f in form.getlist("images")]
            if any(isinstance(f, str) for f in files):
                raise InputError("`images` fields must be files, not text", "bad_multipart")
            if not files:
                raise InputError("no `images` file in the form", "no_images")
            if len(files) > CONFIG.max_images:
                raise InputError(
                    f"{len(files)} images in one request exceed the limit of {CONFIG.max_images}",
                    "too_many_images",
                    413,
                )
            requested = form.get("model")
            if requested is not None and not isinstance(requested, str):
                raise InputError("`model` must be a text field", "bad_multipart")
            name = self.model_name(requested)
            blobs = [await f.read() for f in files]
        finally:
            await form.close()
        return JSONResponse({"model": name, "predictions": await self.predict(name, blobs)})

    async def classify_raw(self, request: Request) -> JSONResponse:
        check_content_type(request.headers.get("content-type"))
        name = self.model_name(request.query_params.get("model"))
        body = await read_body(request, CONFIG.max_upload_bytes)
        (result,) = await self.predict(name, [body])
        return JSONResponse(result)

    async def list_models(self, request: Request) -> JSONResponse:
        if self._describe is None:
            self._describe = await self.models.to_async.describe()
        return JSONResponse(
            {
                "default": DEFAULT_MODEL,
                "classes": list(CLASS_NAMES),
                "models": [
                    {
                        "name": name,
                        **self._describe[name]["card"],
                        **{k: v for k, v in self._describe[name].items() if k != "card"},
                    }
                    for name in SERVED
                ],
            }
        )

    async def feedback(self, request: Request) -> JSONResponse:
        import json

        from serving.store import FeedbackExists, UnknownRequest

        body = await read_body(request, 64 * 1024)
        try:
            data = json.loads(body or b"null")
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested deeper than the parser recurses
            raise InputError(
                'feedback must be JSON: {"request_id": "...", "label": 0..7 or class name}', "bad_json"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("request_id"), str) or "label" not in data:
            raise InputError('feedback must be {"request_id": "...", "label": 0..7 or class name}', "bad_json")
        true_label = parse_label(data["label"])
        request_id = data["request_id"]
        try:
            name, predicted, correct = await asyncio.to_thread(self.store.feedback, request_id, true_label)
        except UnknownRequest:
            raise InputError(
                f"unknown request_id {request_id!r} (never issued, or older than the last "
                f"{CONFIG.store_size} predictions)",
                "unknown_request_id",
                404,
            ) from None
        except FeedbackExists:
            raise InputError(
                f"feedback for request_id {request_id!r} was already recorded", "duplicate_feedback", 409
            ) from None
        true_name = CLASS_NAMES[true_label]
        self.metrics.feedback.labels(name, true_name).inc()
        if correct:
            self.metrics.feedback_correct.labels(name, true_name).inc()
        counts = await asyncio.to_thread(self.store.counts, name)
        total = sum(t for t, _ in counts.values())
        right = sum(c for _, c in counts.values())
        self.metrics.online_accuracy.labels(name, "all").set(right / total)
        per_class = {}
        for label, (t, c) in sorted(counts.items()):
            per_class[CLASS_NAMES[label]] = {"total": t, "correct": c, "accuracy": c / t}
            self.metrics.online_accuracy.labels(name, CLASS_NAMES[label]).set(c / t)
        return JSONResponse(
            {
                "request_id": request_id,
                "model": name,
                "predicted": predicted,
                "label": true_label,
                "correct": correct,
                "online_accuracy": {
                    "total": total,
                    "correct": right,
                    "accuracy": right / total,
                    "per_class": per_class,
                },
            }
        )


_INSTANCE: _GalaxyClassifier | None = None


def _endpoint(method_name: str):
    async def handler(request: Request) -> JSONResponse:
        if _INSTANCE is None:
            return error_response(InputError("service is starting", "not_ready", 503), CONFIG.retry_after_s)
        try:
            return await getattr(_INSTANCE, method_name)(request)
        except InputError as exc:
            return error_response(exc, CONFIG.retry_after_s if exc.status in (429, 503) else None)

    return handler


def openapi_document() -> dict:
    from serving.openapi import build_openapi

    return build_openapi(SERVED, DEFAULT_MODEL, CONFIG)


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the service's JSON error format."""
    status = int(getattr(exc, "status_code", 400))
    kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
    return error_response(InputError(str(getattr(exc, "detail", "")) or kind.replace("_", " "), kind, status))


http_app = Starlette(
    exception_handlers={HTTPException: _http_error},
    routes=[
        Route("/classify", _endpoint("classify"), methods=["POST"]),
        Route("/classify/raw", _endpoint("classify_raw"), methods=["POST"]),
        Route("/models", _endpoint("list_models"), methods=["GET"]),
        Route("/feedback", _endpoint("feedback"), methods=["POST"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
    ],
)


class AdmissionMiddleware:
    """Admit at most `max_concurrency` requests per worker; answer the rest at once with 429 + Retry-After."""

    BYPASS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/openapi.json"})

    def __init__(self, app, max_concurrency: int, retry_after: int) -> None:
        self.app = app
        self.limit = max_concurrency
        self.retry_after = retry_after
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.BYPASS:
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            exc = InputError(f"server busy: {self.limit} requests in flight; retry shortly", "overloaded", 429)
            return await error_response(exc, self.retry_after)(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


_GalaxyClassifier = bentoml.asgi_app(http_app, path="/")(_GalaxyClassifier)
GalaxyClassifier = bentoml.service(
    name=ENTRY_SERVICE,
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout_s},
)(_GalaxyClassifier)
GalaxyClassifier.add_asgi_middleware(
    AdmissionMiddleware, max_concurrency=CONFIG.max_concurrency, retry_after=CONFIG.retry_after_s
)
