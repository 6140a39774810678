"""The service's one OpenAPI 3 document, served at GET /docs.json (the one BentoML's UI at / reads for its
"Try it out") and GET /openapi.json.

BentoML generates the document of a service (its system endpoints /livez, /readyz, /metrics, and each
@bentoml.api endpoint from its pydantic input and output); `build_openapi` keeps it and describes each of
the service's endpoints fully, for the served models: the raw-body uploads of /classify/raw and /explain
with their query parameters, GET /models, the models' names and class names, every error status (the
service's JSON error, Retry-After on 429 and 503), and the Open Inference Protocol's /v2 routes.
"""

from __future__ import annotations

from typing import Any

import bentoml

from inference.decode import RAW_CONTENT_TYPES
from serving.catalog import Catalog
from serving.config import ServingConfig
from serving.oip_openapi import OIP_ERROR, oip_paths

FILE = {"type": "string", "format": "binary"}

ERROR = {
    "type": "object",
    "required": ["error", "kind", "status"],
    "properties": {"error": {"type": "string"}, "kind": {"type": "string"}, "status": {"type": "integer"}},
}


def _errors(*codes: int) -> dict[str, Any]:
    retry = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    return {
        str(code): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            **({"headers": retry} if code in (429, 503) else {}),
        }
        for code in codes
    }


def openapi_30(node: Any) -> Any:
    """BentoML's generated schemas in OpenAPI 3.0 terms: its file inputs are {"type": "file"} and pydantic's
    optional fields anyOf [..., {"type": "null"}] (JSON Schema), which 3.0 writes as binary strings and
    `nullable`."""
    if isinstance(node, list):
        return [openapi_30(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "file":
        node = {**{k: v for k, v in node.items() if k not in ("type", "format", "content_type")}, **FILE}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        node = {k: v for k, v in node.items() if k != "anyOf"}
        node.update({**rest[0], "nullable": True} if len(rest) == 1 else {"anyOf": rest, "nullable": True})
    return {k: openapi_30(v) for k, v in node.items()}


def build_openapi(service: bentoml.Service[Any], catalog: Catalog, config: ServingConfig) -> dict[str, Any]:
    """BentoML's document of `service`, with the service's endpoints described by `endpoint_paths`."""
    doc = openapi_30(service.openapi_spec.asdict())
    for path, item in endpoint_paths(catalog, config).items():
        operations = doc["paths"].setdefault(path, {})
        for method, operation in item.items():
            generated = operations.get(method, {})
            kept = {k: generated[k] for k in ("tags", "operationId", "x-bentoml-name") if k in generated}
            kept.setdefault("operationId", f"{service.name}__{path.strip('/').replace('/', '_')}_{method}")
            operations[method] = {**kept, **operation}
    doc["paths"].update(oip_paths(catalog))  # the Open Inference Protocol's /v2 routes (serving/oip.py)
    doc["info"]["description"] = _description(catalog)
    doc["components"].setdefault("schemas", {}).update({"Error": ERROR, "OipError": OIP_ERROR})
    return doc


def _description(catalog: Catalog) -> str:
    classes = "; ".join(f"{m.name}: {', '.join(m.classes)}" for m in catalog.models.values())
    return f"Galaxy morphology from images. Classes of each served model: {classes}."


def endpoint_paths(catalog: Catalog, config: ServingConfig) -> dict[str, Any]:
    """The service's endpoints for these served models: class names are each model's own (GET /models)."""
    models = catalog.names
    all_classes = catalog.all_classes()
    widest = max(len(m.classes) for m in catalog.models.values())
    prediction = {
        "type": "object",
        "required": ["request_id", "model", "model_version", "label", "class_name", "probabilities"],
        "properties": {
            "request_id": {"type": "string", "description": "id to send to /feedback"},
            "model": {"type": "string", "enum": models},
            "model_version": {"type": "string"},
            "label": {"type": "integer", "minimum": 0, "maximum": widest - 1},
            "class_name": {"type": "string", "enum": all_classes, "description": "a class name of `model`"},
            "probabilities": {
                "type": "object",
                "description": "probability of every class of `model`, keyed by class name in label order; with "
                "tta=8 the mean over the 8 views",
                "additionalProperties": {"type": "number"},
            },
            "calibrated": {
                "type": "boolean",
                "description": "the probabilities are softmax(logits / T) with the card's fitted temperature T",
            },
            "ood_score": {
                "type": "number",
                "nullable": True,
                "description": "not-a-galaxy score (higher = more like a training galaxy; card `ood.method`); "
                "null when the model has no OOD rule",
            },
            "in_distribution": {
                "type": "boolean",
                "nullable": True,
                "description": "ood_score >= the card's threshold (95% of validation galaxies pass; 0 when the card "
                "has a pixel rule: both rules pass); null if no rule",
            },
            "tta": {"type": "integer", "enum": [1, 8], "description": "views averaged"},
            "spread": {
                "type": "number",
                "description": "tta=8 only: standard deviation across the views of the top class's probability",
            },
        },
    }
    explained = {
        "allOf": [
            prediction,
            {
                "type": "object",
                "properties": {
                    "map_method": {"type": "string", "enum": ["rollout", "linformer-value-projection"]},
                    "grid": {"type": "integer", "description": "g: patches per side"},
                    "rollout": {
                        "type": "array",
                        "description": "g rows of g values: the attention map over the patch grid",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                    "heads": {
                        "type": "array",
                        "description": "H maps of g rows of g values: each head's map of the last layer "
                        "(`rollout` for the Linformer is their mean)",
                        "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    },
                },
            },
        ]
    }
    model_param = {"type": "string", "enum": models, "default": catalog.default}
    tta_param = {"type": "integer", "enum": [1, 8], "default": 1, "description": "8: average the 8 dihedral views"}

    def raw_body(option: str, schema: dict[str, Any]) -> dict[str, Any]:
        """The image as the body (options in the query), or a form with one `image` file (BentoML's clients)."""
        fields = {"image": FILE, "model": model_param, option: schema}
        form = {"type": "object", "required": ["image"], "properties": fields}
        return {
            "required": True,
            "content": {**{t: {"schema": FILE} for t in RAW_CONTENT_TYPES}, "multipart/form-data": {"schema": form}},
        }

    models_answer = {
        "200": {
            "description": "the served models: cards, classes, ONNX Runtime provider; the default model",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **_errors(401, 429, 503),
    }
    format_param = {"type": "string", "enum": ["json", "png"], "default": "json"}
    return {
        "/classify": {
            "post": {
                "summary": f"Classify 1..{config.max_images} images (multipart form data)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["images"],
                                "properties": {
                                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    "model": model_param,
                                    "tta": tta_param,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "one prediction per image, in upload order",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "model": {"type": "string"},
                                        "predictions": {"type": "array", "items": prediction},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 404, 408, 413, 415, 429, 503),
                },
            }
        },
        "/classify/raw": {
            "post": {
                "summary": "Classify one image sent as the request body",
                "parameters": [
                    {"name": "model", "in": "query", "required": False, "schema": model_param},
                    {"name": "tta", "in": "query", "required": False, "schema": tta_param},
                ],
                "requestBody": raw_body("tta", tta_param),
                "responses": {
                    "200": {
                        "description": "the prediction",
                        "content": {"application/json": {"schema": prediction}},
                    },
                    **_errors(400, 401, 404, 408, 413, 415, 429, 503),
                },
            }
        },
        "/explain": {
            "post": {
                "summary": "Classify one image (sent as the request body) with the explain variant and return "
                "its attention map: JSON, or with format=png the crop the model sees with the map overlaid",
                "parameters": [
                    {"name": "model", "in": "query", "required": False, "schema": model_param},
                    {"name": "format", "in": "query", "required": False, "schema": format_param},
                ],
                "requestBody": raw_body("format", format_param),
                "responses": {
                    "200": {
                        "description": "the prediction and the map (404 `no_explain`: exported without it)",
                        "content": {
                            "application/json": {"schema": explained},
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **_errors(400, 401, 404, 408, 413, 415, 429, 503),
                },
            }
        },
        "/models": {
            "get": {"summary": "Served models (the same as POST /models)", "responses": models_answer},
            "post": {
                "summary": "Served models: cards, classes, active ONNX Runtime provider, default model",
                "responses": models_answer,
            },
        },
        "/feedback": {
            "post": {
                "summary": "Report the true class of a prediction (an index or a class name of the model that "
                "made it); updates online accuracy",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["request_id", "label"],
                                "properties": {
                                    "request_id": {"type": "string"},
                                    "label": {
                                        "oneOf": [
                                            {"type": "integer", "minimum": 0, "maximum": widest - 1},
                                            {"type": "string", "enum": all_classes},
                                        ]
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "recorded",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 401, 403, 404, 408, 409, 413, 415, 429, 503),
                },
            }
        },
    }
