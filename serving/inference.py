"""Inference: every served model in ONNX Runtime behind one batchable BentoML API, and the client the HTTP
front end calls it through.

The front end sends each request's images (or, with tta=8, each of their 8 views) as items {"model": name,
"x": (H,W,3) uint8 evaluation crop, "t": hand-off time, "explain": True for POST /explain, "embedding": True
to have the answer carry the model's (D,) CLS embedding too, "ood": False for the views other than the identity,
which need no not-a-galaxy score}; BentoML's
adaptive batcher gathers the items of concurrent requests (up to `max_batch_size`, waiting at most
`max_latency_ms`) and `Inference.infer` runs each batch grouped per model (and explain variant). The
crops travel as uint8 (a quarter of the float32 bytes between the processes) and are normalised here,
straight into the batch (`galaxyvit.preprocess.normalize`, the offline evaluation code). Each item's
answer is scored here too (inference/scoring.py): probabilities, calibrated unless `calibrate` is off,
and the not-a-galaxy score and flag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np

from galaxyvit.preprocess import Preprocessing, normalize
from galaxyvit.store import tag
from inference.scoring import Scorer
from serving.bentoml_patches import hold_sigterm_while_api_workers_run
from serving.catalog import Catalog
from serving.config import ServingConfig
from serving.errors import ServiceError
from serving.metrics import get_metrics
from serving.readiness import mark_ready
from serving.uploads import decode_crop

if TYPE_CHECKING:
    from inference.explain import ExplainModel
    from inference.runtime import LoadedModel

logger = logging.getLogger("galaxyvit.serving")

ENTRY_SERVICE = "galaxyvit"  # the name of the HTTP front end service (serving/deployment.py)
INFERENCE_SERVICE = "galaxyvit_models"


class Inference:
    """The served models loaded in ONNX Runtime (verified, warmed up): one process's inference."""

    def __init__(self, catalog: Catalog, config: ServingConfig) -> None:
        from inference.explain import load_explain
        from inference.runtime import default_threads, load_model  # ONNX Runtime: only in inference processes

        threads = config.intra_op_threads or default_threads(config.inference_workers)
        self.metrics = get_metrics()
        self.config = config
        self.loaded: dict[str, LoadedModel] = {}
        self.preps: dict[str, Preprocessing] = {}
        self.scorers: dict[str, Scorer] = {}
        self.explainers: dict[str, ExplainModel] = {}
        for served in catalog.models.values():
            settings = (config.device, threads, config.intra_op_spinning)
            model = load_model(served.name, served.folder, config.variant, *settings)
            self.scorers[served.name] = Scorer.for_card(served.folder, model.card, config.calibrate)
            explainer = load_explain(served.folder, model.card, config.calibrate, *settings)
            if explainer is not None:
                self.explainers[served.name] = explainer
            # before /readyz turns ready; on CUDA also the largest batch (memory arena, kernel choice)
            model.warm_up((1, 2, config.max_batch_size) if model.provider == "CUDAExecutionProvider" else (1, 2))
            self.loaded[served.name] = model
            self.preps[served.name] = model.card.prep  # built anew at each access of `card.prep`
            self.metrics.provider.labels(served.name, model.provider).set(1)
            for split, acc in (("valid", model.card.valid_acc), ("test", model.card.test_acc)):
                if acc is not None:
                    self.metrics.offline_accuracy.labels(served.name, split).set(acc)
            logger.warning(
                "serving %s (%s %s) on %s", served.name, model.card.family, model.card.variant, model.provider
            )

    def decode(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Give a `jpeg` item its evaluation crop `x` (serving/uploads.py `decode_crop`, the API's own code and
        limits); a JPEG the rules refuse answers {"refused": the ServiceError as a dict} instead."""
        if "jpeg" in item:
            try:
                item["x"] = decode_crop(item.pop("jpeg"), self.preps[item["model"]], self.config)
            except ServiceError as refusal:
                return {"refused": refusal.to_dict()}
        return None

    def infer(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One scored answer per item (inference/scoring.py; explain items add `rollout` and `heads`), in item order;
        items of several models, and explain items, are grouped. Items carry their evaluation crop `x` or, from
        POST /classify, the `jpeg` file to decode here."""
        start = time.time()
        out: list[dict[str, Any]] = [{}] * len(items)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, item in enumerate(items):
            refused = self.decode(item)
            if refused is not None:
                out[i] = refused
                continue
            groups.setdefault((item["model"], bool(item.get("explain"))), []).append(i)
        for (name, explain), idx in groups.items():
            model = self.loaded[name]
            for i in idx:
                self.metrics.queue_seconds.labels(name).observe(max(0.0, start - float(items[i]["t"])))
            t0 = time.perf_counter()
            if explain:
                answers = self.explainers[name].explain([np.asarray(items[i]["x"]) for i in idx])
            else:
                size = self.preps[name].size
                batch = np.empty((len(idx), 3, size, size), np.float32)
                for row, i in enumerate(idx):
                    normalize(np.asarray(items[i]["x"]), self.preps[name], out=batch[row])
                logits, embeddings = model.outputs(batch)
                scored = [bool(items[i].get("ood", True)) for i in idx]  # with tta=8 the identity views only
                crops = [np.asarray(items[i]["x"]) for i, s in zip(idx, scored, strict=True) if s]
                answers = self.scorers[name].score(logits, embeddings, crops, scored)
                if embeddings is not None:  # the CLS embedding, for the items that ask (serving/oip.py)
                    for j, i in enumerate(idx):
                        if items[i].get("embedding"):
                            answers[j]["embedding"] = embeddings[j]
            self.metrics.inference_seconds.labels(name).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(name).observe(len(idx))
            for j, i in enumerate(idx):
                out[i] = answers[j]
        return out

    def describe(self) -> dict[str, dict[str, Any]]:
        """The provider ONNX Runtime actually runs each model on."""
        return {
            name: {"provider": m.provider, "providers": m.session.get_providers()} for name, m in self.loaded.items()
        }


def inference_service(config: ServingConfig, catalog: Catalog) -> bentoml.Service[Any]:
    """The BentoML service `galaxyvit_models` (`inference_workers` processes) running `Inference`.

    Defined here, when the settings are known: BentoML fixes the batching limits when the API is defined."""

    class GalaxyModels:
        def __init__(self) -> None:
            self.inference = Inference(catalog, config)
            hold_sigterm_while_api_workers_run(ENTRY_SERVICE, config.timeout_s)
            mark_ready()  # the API workers' /readyz looks for it (serving/readiness.py)

        @bentoml.api(batchable=True, max_batch_size=config.max_batch_size, max_latency_ms=config.max_latency_ms)
        def infer(self, items: list[dict[str, Any]]) -> list[Any]:
            return self.inference.infer(items)

        @bentoml.api
        def describe(self) -> dict[str, Any]:
            return self.inference.describe()

    untraced = {} if config.tracing else {"tracing": {"excluded_urls": ["."]}}  # "." matches every URL
    service = bentoml.service(
        name=INFERENCE_SERVICE,
        workers=config.inference_workers,
        traffic={"timeout": config.timeout_s},
        # the calls between the deployment's own processes: no access-log line each (the API logs the request)
        logging={"access": {"enabled": False}},
        **untraced,
        # BentoML 1.4 replaces the API workers' client session every 100 calls or 300 s and closes the old
        # one with requests still in flight on it, which fails them (503 inference_unavailable under load).
        # Keep one session for the life of the worker instead.
        runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9},
    )(GalaxyModels)
    # The models a service uses are usually class attributes (`model = BentoModel(tag)`); BentoML collects them
    # into `service.models`, which `bentoml build` packs into the bento. The served models are known only now,
    # so their references are listed here, one per served model.
    for name in catalog.models:
        service.models.append(bentoml.models.BentoModel(tag(name)))
    return service


def refuse_if_refused(answer: dict[str, Any]) -> None:
    """Raise the ServiceError of an item the inference process refused (a JPEG it could not decode)."""
    if "refused" in answer:
        refusal = answer["refused"]
        raise ServiceError(refusal["kind"], int(refusal["status"]), refusal["error"])


class InferenceClient:
    """The front end's view of `galaxyvit_models`: its two APIs, with failures as ServiceErrors.

    `models` is the BentoML dependency: a client of the inference processes under `bentoml serve`,
    a local `GalaxyModels` instance when the service runs in one process.

    Concurrent requests share calls: at most `max_calls` calls are in flight, and the items of requests
    that arrive meanwhile wait and go together in the next call (up to `max_items`, BentoML's batch limit).
    Each call costs the same HTTP request, pickling and answer on both sides whatever it carries, so under
    load one call serves several requests; alone, a request's call goes at once.
    """

    def __init__(self, models: Any, max_items: int, max_calls: int = 2) -> None:
        self.models = models
        self.max_items = max_items
        self.max_calls = max_calls
        self.waiting: deque[tuple[list[dict[str, Any]], asyncio.Future[list[Any]]]] = deque()
        self.calls: set[asyncio.Task[None]] = set()

    async def infer(self, items: list[dict[str, Any]]) -> list[Any]:
        """One scored answer per item, in order (a request cancelled while waiting drops its items)."""
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((items, answer))
        self._send()
        return await answer

    def _send(self) -> None:
        while self.waiting and len(self.calls) < self.max_calls:
            batch: list[tuple[list[dict[str, Any]], asyncio.Future[list[Any]]]] = []
            size = 0
            while self.waiting and (not batch or size + len(self.waiting[0][0]) <= self.max_items):
                items, answer = self.waiting.popleft()
                if not answer.done():  # cancelled: its request has gone
                    batch.append((items, answer))
                    size += len(items)
            if batch:
                call = asyncio.ensure_future(self._call(batch))
                self.calls.add(call)
                call.add_done_callback(self._done)

    def _done(self, call: asyncio.Task[None]) -> None:
        self.calls.discard(call)
        self._send()

    async def _call(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[list[Any]]]]) -> None:
        try:
            answers = await self._infer([item for items, _ in batch for item in items])
        except BaseException as exc:  # also a cancelled call (the worker stopping): nobody waits in vain
            stopping = ServiceError("inference_unavailable", 503, "the server is stopping; retry shortly")
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc if isinstance(exc, Exception) else stopping)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for items, answer in batch:
            if not answer.done():
                answer.set_result(answers[start : start + len(items)])
            start += len(items)

    async def _infer(self, items: list[dict[str, Any]]) -> list[Any]:
        try:
            # BentoML's batcher merges these calls further with those of other API workers
            return await self.models.to_async.infer(items)
        except bentoml.exceptions.BentoMLException as exc:
            if int(getattr(exc, "error_code", 500)) in (429, 503):
                raise ServiceError("overloaded", 503, "inference is overloaded; retry shortly") from None
            raise
        except Exception as exc:
            # connection trouble with the inference processes (aiohttp errors under overload, a restart)
            if not isinstance(exc, OSError | TimeoutError) and type(exc).__module__.split(".")[0] != "aiohttp":
                raise
            logger.warning("inference call failed: %r", exc)
            raise ServiceError("inference_unavailable", 503, "inference is unavailable; retry shortly") from None

    async def describe(self) -> dict[str, Any]:
        return await self.models.to_async.describe()
