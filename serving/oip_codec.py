"""Tensors of the Open Inference Protocol v2 over HTTP/REST (KServe, Triton): JSON `data`, and the binary
tensor data extension.

A request body is a JSON header, optionally followed by the raw bytes of the inputs that name their size
in `parameters.binary_data_size` (in input order); the header's length is the `Inference-Header-Content-Length`
HTTP header. Numbers travel little-endian, row-major; a BYTES element is a 4-byte little-endian length and its
bytes. Answers use the same layout for the outputs sent as binary. Every malformed tensor is a 400
`bad_tensor` (serving/oip.py answers it as the protocol's {"error": message}).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.errors import ServiceError
from serving.outputs import dumps

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NAMES = {np.dtype(t): name for name, t in DTYPES.items() if name != "BYTES"}


def bad(message: str) -> ServiceError:
    return ServiceError("bad_tensor", 400, message)


@dataclass(frozen=True)
class Tensor:
    """One named input: its declared datatype and shape, and its values (`shape`-shaped; BYTES: a list of bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray | list[bytes]


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The request's JSON header and the binary data after it."""
    size = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > size:
            raise bad(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {size} bytes")
        size = int(header_length)
    try:
        header = orjson.loads(body if size == len(body) else memoryview(body)[:size])
    except ValueError:  # orjson.JSONDecodeError, also for nesting deeper than it reads
        raise bad("the inference request is not JSON (binary data needs Inference-Header-Content-Length)") from None
    if not isinstance(header, dict):
        raise bad("the inference request must be a JSON object")
    return header, memoryview(body)[size:]


def read_inputs(header: dict[str, Any], binary: memoryview) -> dict[str, Tensor]:
    """The request's inputs by name; each binary input takes its `binary_data_size` bytes in turn, and every
    byte after the header must belong to one."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("the inference request needs a non-empty `inputs` list")
    tensors: dict[str, Tensor] = {}
    offset = 0
    for spec in inputs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad("each input must be an object with a `name`")
        name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        if datatype not in DTYPES:
            raise bad(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise bad(f"input {name!r}: `shape` must be a list of integers")
        if any(d < 0 for d in shape):
            raise bad(f"input {name!r}: negative dimension in shape {shape}")
        if name in tensors:
            raise bad(f"input {name!r} given twice")
        parameters = spec.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        count = math.prod(shape)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise bad(f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes of binary data")
            value = from_binary(binary[offset : offset + size], datatype, count, name)
            offset += size
        elif "data" in spec:
            value = from_json(spec["data"], datatype, count, name)
        else:
            raise bad(f"input {name!r} has neither `data` nor parameters.binary_data_size")
        if isinstance(value, np.ndarray):
            value = value.reshape(shape)
        tensors[name] = Tensor(name, datatype, tuple(shape), value)
    if offset != len(binary):
        raise bad(f"{len(binary) - offset} bytes of binary data after the header belong to no input")
    return tensors


def from_binary(data: memoryview, datatype: str, count: int, name: str) -> np.ndarray | list[bytes]:
    """`count` elements of `datatype` from their raw little-endian bytes (a read-only view, no copy)."""
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise bad(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", data, offset)
            if offset + 4 + length > len(data):
                raise bad(f"input {name!r}: BYTES element of {length} bytes runs past its binary data")
            elements.append(bytes(data[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        if len(elements) != count:
            raise bad(f"input {name!r}: {len(elements)} BYTES elements for a shape of {count}")
        return elements
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise bad(f"input {name!r}: {len(data)} bytes of binary data for {count} {datatype} elements")
    return np.frombuffer(data, dtype=dtype)


def from_json(data: Any, datatype: str, count: int, name: str) -> np.ndarray | list[bytes]:
    """`count` elements of `datatype` from JSON `data` (flat or nested, row-major). BYTES elements are
    strings; the image files this service takes are not text, so they must be base64."""
    if datatype == "BYTES":
        flat = data if isinstance(data, list) else [data]
        while any(isinstance(e, list) for e in flat):
            flat = [x for e in flat for x in (e if isinstance(e, list) else [e])]
        if len(flat) != count or not all(isinstance(e, str) for e in flat):
            raise bad(f"input {name!r}: BYTES data must be {count} base64 strings")
        try:
            return [base64.b64decode(e, validate=True) for e in flat]
        except ValueError:
            raise bad(f"input {name!r}: BYTES data in JSON must be base64 (or send it as binary data)") from None
    dtype = np.dtype(DTYPES[datatype])
    try:
        values = np.asarray(data)
    except (ValueError, RecursionError):
        raise bad(f"input {name!r}: ragged or non-numeric data") from None
    if values.size != count or values.dtype.kind not in "biuf":
        raise bad(f"input {name!r}: {values.size} numeric values ({values.dtype}) for a shape of {count}")
    if dtype.kind in "biu" and values.dtype.kind == "f":
        raise bad(f"input {name!r}: {datatype} data must be integers")
    if (
        dtype.kind in "iu"
        and values.size
        and (values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max)
    ):
        raise bad(f"input {name!r}: values outside the range of {datatype}")
    return values.astype(dtype).reshape(-1)


def output_tensor(name: str, value: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """An output's JSON entry, and its raw bytes when it goes as binary data."""
    datatype = NAMES[value.dtype]
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
    if not binary:
        entry["data"] = np.ascontiguousarray(value).reshape(-1)  # orjson writes numpy arrays (serving/outputs.py)
        return entry, None
    raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    return entry, raw


def encode_response(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int | None]:
    """The answer body, and the JSON header's length when binary outputs follow it (else None)."""
    text = dumps(header)
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
