"""The deployment: two BentoML services assembled from the settings by `build(config)`.

- `galaxyvit` (entry, `workers` processes): the @bentoml.api endpoints (serving/endpoints.py: decoding,
  limits, the evaluation crop `galaxyvit.preprocess.eval_crop`, the prediction store, feedback) and the
  mounted ASGI sub-apps, behind optional API keys (serving/auth.py) and admission control
  (serving/admission.py), on uvicorn with connection guards (serving/connections.py).
- `galaxyvit_models` (`inference_workers` processes): every served model in ONNX Runtime behind one
  batchable API (serving/inference.py).

Sub-apps: `build`'s `mounts` list, (ASGI app, path), is the one place they are mounted; one line adds
one (e.g. `(ui_app(), "/")`). They sit behind the same API-key and
admission middleware as the endpoints (a sub-app whose POST bodies must be read within the upload
limits adds its paths to serving/admission.py `has_body`). A Starlette sub-app finds the worker's
`serving.routes.Handlers` (catalogue, settings, inference client, prediction store) at
`request.app.state.handlers` once the worker's service instance has started (None before: answer 503
`not_ready`).

`build` does all the I/O (model discovery, sha256 checks) when it is called; `bentoml serve
serving.service:GalaxyClassifier` calls it through serving/service.py. No torch is imported here.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import bentoml
from starlette.applications import Starlette

from serving.admission import AdmissionMiddleware, UploadLimits
from serving.auth import ApiKeys, AuthMiddleware, load_key_hashes
from serving.bentoml_patches import bound_metric_labels, guard_api_server, stop_workers_before_cleanup
from serving.catalog import discover
from serving.config import ServingConfig
from serving.connections import ConnectionLimits
from serving.endpoints import API_PATHS, GalaxyEndpoints
from serving.inference import ENTRY_SERVICE, INFERENCE_SERVICE, inference_service
from serving.oip import oip_app
from serving.openapi import build_openapi
from serving.readiness import Readiness
from serving.routes import http_app
from serving.webui import ui_app


def build(config: ServingConfig, home: Path | None = None) -> bentoml.Service[Any]:
    """The entry service for the models in the BentoML model store under `home` (None: BENTOML_HOME).

    `service.to_asgi()` runs the whole deployment in one process (the inference service as a local
    instance), which is how the route tests call it."""
    catalog = discover(config, home)
    service_logger = logging.getLogger("galaxyvit.serving")
    if service_logger.level == logging.NOTSET:  # BentoML's workers log WARNING and above unless told otherwise
        service_logger.setLevel(logging.INFO)
    stop_workers_before_cleanup()
    bound_metric_labels()
    guard_api_server(ENTRY_SERVICE, ConnectionLimits.from_config(config), config.timeout_s)
    models = inference_service(config, catalog)
    routes = http_app(config, API_PATHS)

    # The ASGI sub-apps mounted on the entry service, (app, path): see the module docstring.
    mounts: list[tuple[Any, str]] = [
        (routes, "/"),  # GET /models, /openapi.json, /docs.json, JSON 405s (serving/routes.py)
        (ui_app(), "/"),  # GET /ui, the web page (serving/webui.py)
        # the Open Inference Protocol's /v2 routes (serving/oip.py), full paths: a mount at /v2 would not
        # route GET /v2 itself
        (oip_app(config), "/"),
    ]

    class GalaxyClassifier(GalaxyEndpoints):
        """Galaxy morphology from images: the HTTP front end (serving/endpoints.py)."""

        inference = bentoml.depends(models)

    GalaxyClassifier.config, GalaxyClassifier.catalog = config, catalog
    GalaxyClassifier.mounted = [app for app, _ in mounts if isinstance(app, Starlette)]
    for app, path in mounts:
        bentoml.asgi_app(app, path=path)(GalaxyClassifier)
    untraced = {} if config.tracing else {"tracing": {"excluded_urls": ["."]}}  # "." matches every URL
    service = bentoml.service(
        name=ENTRY_SERVICE, workers=config.workers, traffic={"timeout": config.timeout_s}, **untraced
    )(GalaxyClassifier)
    routes.state.openapi = functools.cache(lambda: build_openapi(service, catalog, config))
    if config.api_keys_file:  # outermost of the two: a request without a key is refused before its body is read
        service.add_asgi_middleware(AuthMiddleware, keys=ApiKeys(load_key_hashes(config.api_keys_file)), config=config)
    service.add_asgi_middleware(
        AdmissionMiddleware,
        max_concurrency=config.max_concurrency,
        retry_after=config.retry_after_s,
        uploads=UploadLimits.from_config(config),
        readiness=Readiness(INFERENCE_SERVICE, config.inference_workers),
    )
    return service
