"""The deployment: two BentoML services assembled from the settings by `build(config)`.

- `galaxyvit` (entry, `workers` processes): the HTTP routes (serving/routes.py) behind optional API keys
  (serving/auth.py) and admission control (serving/admission.py), on uvicorn with connection guards
  (serving/connections.py): decoding, limits, the evaluation crop (`galaxyvit.preprocess.eval_crop`),
  the prediction store, feedback.
- `galaxyvit_models` (`inference_workers` processes): every served model in ONNX Runtime behind one
  batchable API (serving/inference.py).

`build` does all the I/O (model discovery, sha256 checks) when it is called; `bentoml serve
serving.service:GalaxyClassifier` calls it through serving/service.py. No torch is imported here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import bentoml

from serving.admission import AdmissionMiddleware, UploadLimits
from serving.auth import ApiKeys, AuthMiddleware, load_key_hashes
from serving.bentoml_patches import bound_metric_labels, guard_api_server, stop_workers_before_cleanup
from serving.catalog import discover
from serving.config import ServingConfig
from serving.connections import ConnectionLimits
from serving.inference import ENTRY_SERVICE, INFERENCE_SERVICE, InferenceClient, inference_service
from serving.metrics import multiprocess_dir
from serving.oip import OpenInference, oip_app
from serving.readiness import Readiness
from serving.routes import Handlers, http_app
from serving.store import PredictionStore


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
    app = http_app(config)
    oip = oip_app(config)  # the Open Inference Protocol's /v2 routes (serving/oip.py)
    readiness = Readiness(INFERENCE_SERVICE, config.inference_workers)

    class GalaxyClassifier:
        """HTTP front end; one instance per API worker, made when the worker starts."""

        inference = bentoml.depends(models)

        def __init__(self) -> None:
            store_dir = Path(config.store_dir or multiprocess_dir() or tempfile.mkdtemp(prefix="galaxyvit-"))
            store = PredictionStore(store_dir / "galaxyvit-predictions.sqlite", config.store_size)
            handlers = Handlers(catalog, config, store, InferenceClient(self.inference))
            app.state.handlers = handlers
            oip.state.oip = OpenInference(catalog, config, handlers.inference, handlers.decoder, readiness)

    service = bentoml.service(name=ENTRY_SERVICE, workers=config.workers, traffic={"timeout": config.timeout_s})(
        bentoml.asgi_app(app, path="/")(bentoml.asgi_app(oip, path="/")(GalaxyClassifier))
    )
    if config.api_keys_file:  # outermost of the two: a request without a key is refused before its body is read
        service.add_asgi_middleware(AuthMiddleware, keys=ApiKeys(load_key_hashes(config.api_keys_file)), config=config)
    service.add_asgi_middleware(
        AdmissionMiddleware,
        max_concurrency=config.max_concurrency,
        retry_after=config.retry_after_s,
        uploads=UploadLimits.from_config(config),
        readiness=readiness,
    )
    return service
