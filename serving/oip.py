"""The Open Inference Protocol v2 (KServe/Triton HTTP/REST) on the service: a Starlette app beside the
galaxyvit endpoints, behind the same API keys and admission control (serving/deployment.py mounts it).

  GET  /v2                             server metadata (name, version, extensions)
  GET  /v2/health/live                 200 {"live": true}
  GET  /v2/health/ready                200 {"ready": true}: the same readiness as /readyz; else 503
  GET  /v2/models/{name}               model metadata: inputs, outputs, datatypes, shapes, class names
  GET  /v2/models/{name}/ready         200 {"name", "ready": true} when the server is ready and serves the model
  POST /v2/models/{name}/infer         inference (JSON tensors, or the binary tensor data extension)
  (each /v2/models/{name}/... also as /v2/models/{name}/versions/{version}/..., version = the card's version)

Inputs, exactly one of: `images` UINT8 [N, S, S, 3], evaluation crops (S = the card's crop size, see
galaxyvit.preprocess.eval_crop), or `image_bytes` BYTES [N], encoded files (JPEG, PNG, TIFF, FITS; decoded as
POST /classify decodes them, with the same limits, on the service's decoding threads). N <= max_images.
Outputs: `probabilities` FP32 [N, C] (calibrated as the card says), `label` INT64 [N], `ood_score` FP32 [N]
(models with an OOD rule) and, only when asked for, `embedding` FP32 [N, D]. No `outputs` in the request:
all but `embedding`. An output goes as binary data with its parameter `binary_data`, or when the request's
parameter `binary_data_output` is true. Errors are {"error": message} with a 4xx (or 503) status.
The inference is the one of POST /classify: the same items to the inference service (serving/inference.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from galaxyvit import __version__
from serving.admission import readiness_problem
from serving.catalog import ServedModel
from serving.config import ServingConfig
from serving.errors import ServiceError
from serving.inference import INFERENCE_SERVICE, refuse_if_refused
from serving.metrics import get_metrics
from serving.oip_codec import HEADER_LENGTH, Tensor, bad, encode_response, output_tensor, read_inputs, split_body
from serving.readiness import Readiness
from serving.routes import Handlers
from serving.uploads import check_image_count

PREFIX = "/v2"
SERVER_NAME = "galaxyvit"
EXTENSIONS = ["binary_tensor_data"]
DEFAULT_OUTPUTS = ("probabilities", "label", "ood_score")


def outputs_of(model: ServedModel) -> dict[str, tuple[str, list[int]]]:
    """name -> (datatype, shape) of the outputs `model` gives (-1: any size)."""
    card = model.card
    outputs = {"probabilities": ("FP32", [-1, len(model.classes)]), "label": ("INT64", [-1])}
    if card.ood is not None:
        outputs["ood_score"] = ("FP32", [-1])
    if card.embedding_name:
        dim = card.run_config.get("dim")
        outputs["embedding"] = ("FP32", [-1, dim if isinstance(dim, int) else -1])
    return outputs


def model_metadata(model: ServedModel) -> dict[str, Any]:
    size = model.card.prep.size
    return {
        "name": model.name,
        "versions": [model.card.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [-1, size, size, 3]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in outputs_of(model).items()],
        "parameters": {
            "class_names": model.classes,
            "calibrated": model.card.calibration is not None,
            "family": model.card.family,
        },
    }


def requested_outputs(
    header: dict[str, Any], model: ServedModel, available: dict[str, tuple[str, list[int]]]
) -> list[tuple[str, bool]]:
    """(name, as binary data) of each output the request asks for among the `available` ones, in its order."""
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad("request `parameters` must be an object")
    binary_default = parameters.get("binary_data_output", False) is True
    specs = header.get("outputs")
    if specs is None:
        return [(name, binary_default) for name in DEFAULT_OUTPUTS if name in available]
    if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in specs):
        raise bad("`outputs` must be a list of objects with a `name`")
    wanted = []
    for spec in specs:
        if spec["name"] not in available:
            raise bad(f"model {model.name!r} has no output {spec['name']!r}; outputs: {', '.join(available)}")
        binary = (spec.get("parameters") or {}).get("binary_data", binary_default)
        wanted.append((spec["name"], binary is True))
    return wanted


class OpenInference:
    """What the /v2 routes do, for one API worker."""

    def __init__(self, handlers: Handlers, readiness: Readiness | None = None) -> None:
        self.handlers = handlers  # the worker's (serving/routes.py): catalogue, inference client, decoding
        self.catalog, self.config = handlers.catalog, handlers.config
        self.inference = handlers.inference
        self.readiness = readiness
        catalog = self.catalog
        # what each request needs of its model, made once (a card's `prep` is built anew at each access)
        self.preps = {name: m.card.prep for name, m in catalog.models.items()}
        self.outputs = {name: outputs_of(m) for name, m in catalog.models.items()}
        predictions = get_metrics().predictions
        self.counters = {name: [predictions.labels(name, c) for c in m.classes] for name, m in catalog.models.items()}

    def model(self, request: Request) -> ServedModel:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name not in self.catalog.models:
            raise ServiceError(
                "unknown_model", 404, f"unknown model {name!r}; served models: {', '.join(self.catalog.models)}"
            )
        model = self.catalog.models[name]
        if version is not None and version != model.card.version:
            raise ServiceError(
                "unknown_model", 404, f"model {name!r} has version {model.card.version}, not {version!r}"
            )
        return model

    def not_ready(self) -> str | None:
        return readiness_problem(self.readiness)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def ready(self, request: Request) -> Response:
        problem = self.not_ready()
        if problem is not None:
            raise ServiceError("not_ready", 503, f"not ready: {problem}")
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(model_metadata(self.model(request)))

    async def model_ready(self, request: Request) -> Response:
        model = self.model(request)
        problem = self.not_ready()
        if problem is not None:
            raise ServiceError("not_ready", 503, f"model {model.name!r} not ready: {problem}")
        return JSONResponse({"name": model.name, "ready": True})

    async def infer(self, request: Request) -> Response:
        model = self.model(request)
        body = await request.body()  # received whole, within max_upload_bytes, by serving/admission.py
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        outputs = requested_outputs(header, model, self.outputs[model.name])
        sent = await self.model_inputs(model, read_inputs(header, binary))
        embedding = any(name == "embedding" for name, _ in outputs)
        t = time.time()
        items = [{"model": model.name, "t": t, **({"embedding": True} if embedding else {}), **x} for x in sent]
        answers = await self.inference.infer(items)
        for one in answers:
            refuse_if_refused(one)
        probabilities = np.stack([np.asarray(a["p"], np.float32) for a in answers])
        labels = probabilities.argmax(axis=1).astype(np.int64)
        for label in labels:
            self.counters[model.name][label].inc()
        values = {"probabilities": probabilities, "label": labels}
        if "ood_score" in self.outputs[model.name]:
            values["ood_score"] = np.array([a["ood_score"] for a in answers], np.float32)
        if embedding:
            values["embedding"] = np.stack([np.asarray(a["embedding"], np.float32) for a in answers])
        entries, blobs = [], []
        for name, as_binary in outputs:
            entry, raw = output_tensor(name, values[name], as_binary)
            entries.append(entry)
            if raw is not None:
                blobs.append(raw)
        answer: dict[str, Any] = {"model_name": model.name, "model_version": model.card.version, "outputs": entries}
        if isinstance(header.get("id"), str):
            answer["id"] = header["id"]
        content, header_length = encode_response(answer, blobs)
        if header_length is None:
            return Response(content, media_type="application/json")
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return Response(content, media_type="application/octet-stream", headers=headers)

    async def model_inputs(self, model: ServedModel, inputs: dict[str, Tensor]) -> list[dict[str, Any]]:
        """What each image sends to the inference service: its evaluation crop given as `images`, or the encoded
        file of `image_bytes` as POST /classify sends it (`Handlers.model_inputs`)."""
        if len(inputs) != 1 or not inputs.keys() <= {"images", "image_bytes"}:
            raise bad(f"give exactly one input, `images` or `image_bytes`, not {', '.join(map(repr, inputs))}")
        size = self.preps[model.name].size
        tensor = next(iter(inputs.values()))
        if tensor.name == "images":
            if tensor.datatype != "UINT8" or len(tensor.shape) != 4 or tensor.shape[1:] != (size, size, 3):
                raise bad(f"`images` must be UINT8 [N, {size}, {size}, 3], not {tensor.datatype} {list(tensor.shape)}")
        elif tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise bad(f"`image_bytes` must be BYTES [N], not {tensor.datatype} {list(tensor.shape)}")
        if tensor.shape[0] == 0:
            raise ServiceError("no_images", 400, "no image in the request")
        check_image_count(tensor.shape[0], 1, self.config)
        if isinstance(tensor.value, np.ndarray):
            return [{"x": x} for x in tensor.value]
        return await self.handlers.model_inputs(model, list(tensor.value), 1)


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


def oip_error(error: ServiceError, retry_after_s: int) -> JSONResponse:
    """The protocol's error answer, {"error": message}, counted like the service's other errors."""
    get_metrics().errors.labels(error.kind).inc()
    headers = {"Retry-After": str(retry_after_s)} if error.status in (429, 503) and retry_after_s else None
    return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)


Handler = Callable[[OpenInference, Request], Awaitable[Response]]


def oip_app(config: ServingConfig) -> Starlette:
    """The /v2 routes (full paths: BentoML mounts the app at / and passes on what it does not route). They
    answer with the worker's `app.state.handlers`, set when its service instance starts (serving/deployment.py);
    until then 503."""
    readiness = Readiness(INFERENCE_SERVICE, config.inference_workers)

    def worker(request: Request) -> OpenInference:
        state = request.app.state
        handlers: Handlers | None = getattr(state, "handlers", None)
        if handlers is None:
            raise ServiceError("not_ready", 503, "service is starting")
        oip: OpenInference | None = getattr(state, "oip", None)
        if oip is None or oip.handlers is not handlers:
            state.oip = oip = OpenInference(handlers, readiness)
        return oip

    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(worker(request), request)
            except ServiceError as exc:
                return oip_error(exc, config.retry_after_s)

        return Route(PREFIX + path, endpoint, methods=[method])

    async def starlette_error(request: Request, exc: Exception) -> Response:
        status = int(getattr(exc, "status_code", 400))
        return oip_error(ServiceError("bad_request", status, str(getattr(exc, "detail", "")) or "bad request"), 0)

    routes = [
        route("", OpenInference.server_metadata),
        Route(PREFIX + "/health/live", live, methods=["GET"]),  # alive also while the service instance starts
        route("/health/ready", OpenInference.ready),
    ]
    for model_path in ("/models/{name}", "/models/{name}/versions/{version}"):
        routes += [
            route(model_path, OpenInference.model_metadata),
            route(model_path + "/ready", OpenInference.model_ready),
            route(model_path + "/infer", OpenInference.infer, "POST"),
        ]
    return Starlette(routes=routes, exception_handlers={HTTPException: starlette_error})
