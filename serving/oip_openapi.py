"""The OpenAPI description of the Open Inference Protocol routes (serving/oip.py), for the service's document."""

from __future__ import annotations

from typing import Any

from serving.catalog import Catalog

OIP_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object", "description": "binary_data_size (bytes after the JSON header), binary_data"},
        "data": {"type": "array", "items": {}, "description": "row-major values (absent when sent as binary data)"},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "binary_data_output: true for binary outputs"},
        "inputs": {
            "type": "array",
            "items": TENSOR,
            "description": "exactly one: `images` UINT8 [N, S, S, 3] evaluation crops or `image_bytes` BYTES [N] files",
        },
        "outputs": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}},
            "description": "probabilities, label, ood_score, embedding (default: all but embedding)",
        },
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json({"$ref": "#/components/schemas/OipError"}, "error") for code in codes}


def oip_paths(catalog: Catalog) -> dict[str, Any]:
    """OpenAPI 3 path items of the /v2 routes; their error answers refer to components.schemas.OipError
    (`OIP_ERROR`), which the document must hold."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": catalog.names}}
    flag = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    tensors = {"type": "object", "properties": {"outputs": {"type": "array", "items": TENSOR}}}
    return {
        "/v2": {"get": {"summary": "Open Inference Protocol: server metadata", "responses": {"200": _json({})}}},
        "/v2/health/live": {"get": {"summary": "Open Inference Protocol: live", "responses": {"200": _json(flag)}}},
        "/v2/health/ready": {
            "get": {"summary": "Open Inference Protocol: ready", "responses": {"200": _json(flag), **_errors(503)}}
        },
        "/v2/models/{name}": {
            "get": {
                "summary": "Open Inference Protocol: model metadata (inputs, outputs, class names)",
                "parameters": [name],
                "responses": {"200": _json({"type": "object"}), **_errors(404)},
            }
        },
        "/v2/models/{name}/ready": {
            "get": {
                "summary": "Open Inference Protocol: model ready",
                "parameters": [name],
                "responses": {"200": _json(flag), **_errors(404, 503)},
            }
        },
        "/v2/models/{name}/infer": {
            "post": {
                "summary": "Open Inference Protocol: classify images given as crops or files (JSON or binary tensors)",
                "parameters": [name],
                "requestBody": {
                    "required": True,
                    "description": "JSON, or binary tensor data: a JSON header of Inference-Header-Content-Length "
                    "bytes followed by the inputs' raw bytes",
                    "content": {
                        "application/json": {"schema": INFER_REQUEST},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "the outputs (binary ones after the JSON header)",
                        "content": {
                            "application/json": {"schema": tensors},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **_errors(400, 401, 404, 408, 413, 415, 429, 503),
                },
            }
        },
    }
