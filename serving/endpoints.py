"""The HTTP front end's endpoints: methods of the BentoML service class, each a `@bentoml.api`.

  POST /classify       multipart form: one or more `images` file fields, optional `model` and `tta` fields
  POST /classify/raw   body = the image bytes, Content-Type image/jpeg|png|tiff|fits; ?model=NAME&tta=1|8
  POST /explain        body as /classify/raw; ?model=NAME&format=json|png: the prediction and attention map
  POST /models         (also GET) the served models' cards and classes, the ONNX Runtime provider, the default
  POST /feedback       {"request_id": "...", "label": index or class name of the model that predicted}

/classify/raw and /explain also take a multipart form with one `image` file field (BentoML's clients send
that). Inputs and answers are pydantic models (serving/inputs.py, serving/outputs.py), so BentoML's
clients call them by name:

    client = bentoml.SyncHTTPClient("http://127.0.0.1:3000")
    client.classify(images=[Path("galaxy.jpg")], model="vit")  # {"model": ..., "predictions": [...]}

The endpoints answer with a JSON Response built once (serving/outputs.py `json_response`); a refusal is a
ServiceError answered as {"error", "kind", "status"} (+ Retry-After on 429/503) by `refuse`.
`serving.deployment.build` subclasses `GalaxyEndpoints` with the settings, the served models and the
inference dependency.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable
from pathlib import Path, PurePath
from typing import Any, ClassVar

import bentoml
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import Response

from serving.catalog import Catalog
from serving.config import ServingConfig
from serving.errors import ServiceError, error_response
from serving.inference import InferenceClient
from serving.inputs import ClassifyInput, ExplainInput, FeedbackInput, ImageInput, NoInput, Received, take_request
from serving.metrics import multiprocess_dir
from serving.outputs import Classified, Explained, FeedbackResult, ModelsInfo, Prediction, json_response
from serving.routes import Handlers
from serving.store import PredictionStore

API_PATHS = ("/classify", "/classify/raw", "/explain", "/models", "/feedback")


def image_bytes(image: bytes | PurePath) -> bytes:
    """An upload as read from HTTP (bytes), or a file named by a direct local call."""
    return Path(image).read_bytes() if isinstance(image, PurePath) else image


class GalaxyEndpoints:
    """The endpoints of one API worker; its instance is made when the worker starts."""

    config: ClassVar[ServingConfig]
    catalog: ClassVar[Catalog]
    mounted: ClassVar[list[Starlette]]  # sub-apps that answer with this worker's `Handlers` (app.state.handlers)
    inference: Any  # bentoml.depends(the inference service)

    def __init__(self) -> None:
        config = self.config
        store_dir = Path(config.store_dir or multiprocess_dir() or tempfile.mkdtemp(prefix="galaxyvit-"))
        store = PredictionStore(store_dir / "galaxyvit-predictions.sqlite", config.store_size)
        inference = InferenceClient(self.inference, config.max_batch_size, config.inference_workers + 1)
        self.handlers = Handlers(self.catalog, config, store, inference)
        for app in self.mounted:
            app.state.handlers = self.handlers

    async def answer(self, work: Awaitable[Any], request: Received, output: type[BaseModel]) -> Response | BaseModel:
        """`work`'s answer as JSON (a Response as it is; to another service of the deployment, the `output`
        model, which BentoML serialises for it), or the JSON error of the ServiceError it raises."""
        try:
            result = await work
        except ServiceError as exc:
            return self.refuse(exc)
        if isinstance(result, Response):
            return result
        return output.model_validate(result) if request.internal else json_response(result)

    def refuse(self, refusal: ServiceError) -> Response:
        return error_response(refusal, self.config.retry_after_s)

    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=Classified)
    async def classify(self, images: list[Path], model: str | None = None, tta: int = 1) -> Response | BaseModel:
        """Classify 1..max_images images (multipart form data: `images` files, optional `model` and `tta`)."""
        request = take_request()
        if request.refusal is not None:
            return self.refuse(request.refusal)
        blobs = [image_bytes(i) for i in images]
        return await self.answer(self.handlers.classify(blobs, model, tta, request.owner), request, Classified)

    @bentoml.api(route="/classify/raw", input_spec=ImageInput, output_spec=Prediction)
    async def classify_raw(self, image: Path, model: str | None = None, tta: int = 1) -> Response | BaseModel:
        """Classify one image sent as the request body (?model=NAME&tta=1|8)."""
        request = take_request()
        if request.refusal is not None:
            return self.refuse(request.refusal)
        blob = image_bytes(image)
        return await self.answer(self.handlers.classify_one(blob, model, tta, request.owner), request, Prediction)

    @bentoml.api(route="/explain", input_spec=ExplainInput, output_spec=Explained)
    async def explain(self, image: Path, model: str | None = None, format: str = "json") -> Response | BaseModel:
        """Classify one image with the explain variant: its attention map as JSON, or with format=png the crop
        the model sees with the map overlaid (image/png)."""
        request = take_request()
        if request.refusal is not None:
            return self.refuse(request.refusal)
        blob = image_bytes(image)
        return await self.answer(self.handlers.explain(blob, model, format, request.owner), request, Explained)

    @bentoml.api(route="/models", input_spec=NoInput, output_spec=ModelsInfo)
    async def models(self) -> Response | BaseModel:
        """The served models: cards, classes, the active ONNX Runtime provider, the default model."""
        request = take_request()
        if request.refusal is not None:
            return self.refuse(request.refusal)
        return await self.answer(self.handlers.list_models(), request, ModelsInfo)

    @bentoml.api(route="/feedback", input_spec=FeedbackInput, output_spec=FeedbackResult)
    async def feedback(self, request_id: str, label: int | str) -> Response | BaseModel:
        """Report the true class of a prediction (an index or a class name of the model that made it)."""
        request = take_request()
        if request.refusal is not None:
            return self.refuse(request.refusal)
        work = self.handlers.feedback(request_id, label, request.owner)
        return await self.answer(work, request, FeedbackResult)
