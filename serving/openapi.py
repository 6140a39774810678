"""OpenAPI 3 document of the service's own endpoints (served at GET /openapi.json).

BentoML documents its system endpoints (/livez, /readyz, /metrics) at /docs; the classification
endpoints are a Starlette app mounted on the service, described here.
"""

from __future__ import annotations

from typing import Any

from inference.decode import RAW_CONTENT_TYPES
from serving.catalog import Catalog
from serving.config import ServingConfig
from serving.oip_openapi import OIP_ERROR, oip_paths

ERROR = {
    "type": "object",
    "required": ["error", "kind", "status"],
    "properties": {"error": {"type": "string"}, "kind": {"type": "string"}, "status": {"type": "integer"}},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def build_openapi(catalog: Catalog, config: ServingConfig) -> dict[str, Any]:
    """The document for these served models: class names are each model's own (GET /models, `classes`)."""
    models = catalog.names
    all_classes = catalog.all_classes()
    widest = max(len(m.classes) for m in catalog.models.values())
    classes_by_model = "; ".join(f"{m.name}: {', '.join(m.classes)}" for m in catalog.models.values())
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
                "description": "ood_score >= the card's threshold (95% of validation galaxies pass); null if no rule",
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
                },
            },
        ]
    }
    model_param = {"type": "string", "enum": models, "default": catalog.default}
    tta_param = {"type": "integer", "enum": [1, 8], "default": 1, "description": "8: average the 8 dihedral views"}
    raw_body = {
        "required": True,
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_CONTENT_TYPES},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "galaxyvit",
            "version": "1",
            "description": f"Galaxy morphology from images. Classes of each served model: {classes_by_model}.",
        },
        "paths": {
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
                    "requestBody": raw_body,
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
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["json", "png"], "default": "json"},
                        },
                    ],
                    "requestBody": raw_body,
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
                "get": {
                    "summary": "Served models: cards, classes, active ONNX Runtime provider, default model",
                    "responses": {
                        "200": {
                            "description": "models",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
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
                        **_errors(400, 401, 403, 404, 408, 409, 413, 415, 429),
                    },
                }
            },
            **oip_paths(catalog),  # the Open Inference Protocol's /v2 routes (serving/oip.py)
        },
        "components": {"schemas": {"Error": ERROR, "OipError": OIP_ERROR}},
    }
