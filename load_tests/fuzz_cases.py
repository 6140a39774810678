"""Hostile HTTP requests for the service, as hypothesis strategies.

Every request is something a careless or malicious client could send: random bytes, truncated or
corrupted JPEG/PNG/GIF/BMP/TIFF/WebP/FITS, headers claiming zero or enormous dimensions, odd
Pillow modes (CMYK, I;16, P, LA, F, 1, animated GIF), real decompression bombs and thin
images, wrong content types, malformed multipart bodies, huge fields, unknown models and
malformed /feedback JSON. The service must answer all of them with a status below 500.

Shared by tests/test_fuzz.py (a few hundred requests in CI) and scripts/fuzz_full.py (>= 10,000);
the upload bodies come from load_tests/fuzz_payloads.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import httpx
import numpy as np
from astropy.io import fits
from hypothesis import strategies as st
from PIL import Image

from load_tests.fuzz_payloads import bombs, encode, fits_files, make_image, payloads, pil_images

ENDPOINTS = ("/classify", "/classify/raw", "/models", "/feedback")  # the service's own JSON endpoints

RAW_TYPES = ("image/jpeg", "image/png", "image/tiff", "image/gif", "image/bmp", "image/webp", "image/fits")
ODD_TYPES = ("application/octet-stream", "image/jpeg; charset=utf-8", "IMAGE/PNG", "application/fits")
WRONG_TYPES = ("", "text/plain", "application/json", "multipart/form-data", "image/svg+xml", "*/*", "image/")


@dataclass(frozen=True)
class Limits:
    """The server's limits, so that cases land on both sides of them."""

    max_upload_bytes: int
    max_pixels: int
    max_images: int
    models: tuple[str, ...]


@dataclass
class Case:
    """One HTTP request; `kind` groups it in the reports."""

    kind: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    data: dict[str, str] | None = None
    params: dict[str, str] | None = None

    def request(self, client: httpx.Client) -> httpx.Request:
        return client.build_request(
            self.method,
            self.path,
            headers=self.headers,
            content=self.content,
            files=self.files,
            data=self.data,
            params=self.params,
        )

    def describe(self) -> str:
        size = len(self.content or b"") + sum(len(f[1][1]) for f in self.files or [])
        return f"{self.kind}: {self.method} {self.path} params={self.params} headers={self.headers} {size} bytes"


def check_response(case: Case, response: httpx.Response) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:300]}"
    path = case.path.split("?")[0]
    if response.status_code >= 400 and path in ENDPOINTS and case.method != "HEAD":
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} without a JSON body: {response.text[:200]!r}"
        if not (isinstance(body, dict) and body.get("status") == response.status_code and body.get("kind")):
            return f"{response.status_code} with a malformed error body: {body!r:.200}"
    return None


# ----------------------------------------------------------------------------- requests


def model_names(limits: Limits, huge: int = 200_000) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(limits.models),
        st.text(max_size=30),
        st.sampled_from(["", " ", "VIT", "vit ", "../vit", "vit\x00", "galaxyvit-vit"]),
        st.integers(1000, huge).map(lambda n: "m" * n),  # a huge field
    )


@st.composite
def raw_requests(draw, limits: Limits) -> Case:
    content_type = draw(st.one_of(st.sampled_from(RAW_TYPES + ODD_TYPES + WRONG_TYPES), header_text()))
    params = {"model": draw(model_names(limits, huge=60_000))} if draw(st.booleans()) else None  # httpx: < 64 KiB
    if draw(st.integers(0, 29)) == 0:  # just over the upload limit
        body = b"\xff\xd8\xff" + b"\x00" * (limits.max_upload_bytes + draw(st.integers(-2, 4096)))
    else:
        body = draw(payloads(limits.max_pixels))
    return Case("raw", "POST", "/classify/raw", {"Content-Type": content_type}, content=body, params=params)


@st.composite
def multipart_requests(draw, limits: Limits) -> Case:
    n = draw(st.integers(0, limits.max_images + 2))
    files = []
    for _ in range(n):
        name = draw(st.sampled_from(["images", "images", "images", "image", "file", ""]))
        filename = draw(st.one_of(st.just("galaxy.jpg"), st.text(max_size=40), st.just("x" * 5000)))
        files.append((name, (filename, draw(payloads(limits.max_pixels)))))
    data = {}
    if draw(st.booleans()):
        data["model"] = draw(model_names(limits))
    for k in range(draw(st.sampled_from([0, 0, 1, 20]))):  # extra fields, sometimes over the form's field limit
        data[f"f{k}"] = draw(st.text(max_size=20))
    if not files:  # httpx sends urlencoded without files: force multipart with a dummy text part
        files = [("note", ("", b""))] if draw(st.booleans()) else []
    if not files and not data:
        return Case("multipart", "POST", "/classify", {"Content-Type": "multipart/form-data; boundary=x"}, b"")
    return Case("multipart", "POST", "/classify", files=files or None, data=data or None)


@st.composite
def malformed_multipart(draw, limits: Limits) -> Case:
    boundary = draw(st.sampled_from(["b0undary", "", "x" * 200, "a b", "--", '"q"']))
    body_boundary = draw(st.sampled_from([boundary, "other"]))
    payload = draw(payloads(limits.max_pixels))
    part = (
        f'--{body_boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + payload
    shape = draw(
        st.sampled_from(["unterminated", "no_disposition", "no_filename", "huge_header", "garbage", "ok", "nested"])
    )
    if shape == "ok":
        body = part + f"\r\n--{body_boundary}--\r\n".encode()
    elif shape == "unterminated":
        body = part
    elif shape == "no_disposition":
        body = f"--{body_boundary}\r\nContent-Type: image/png\r\n\r\n".encode() + payload
        body += f"\r\n--{body_boundary}--\r\n".encode()
    elif shape == "no_filename":
        body = f'--{body_boundary}\r\nContent-Disposition: form-data; name="images"\r\n\r\n'.encode() + payload
        body += f"\r\n--{body_boundary}--\r\n".encode()
    elif shape == "huge_header":
        body = f"--{body_boundary}\r\nX-Pad: {'p' * draw(st.integers(1000, 200_000))}\r\n".encode() + part
    elif shape == "nested":
        body = part.replace(b"image/png", b"multipart/mixed; boundary=inner") + b"--inner\r\n" * 50
    else:
        body = draw(st.binary(max_size=4096))
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                f"multipart/mixed; boundary={boundary}",
                f"multipart/form-data; boundary={boundary}; charset=latin-1",
            ]
        )
    )
    return Case("malformed_multipart", "POST", "/classify", {"Content-Type": content_type}, content=body)


def json_values() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    )


@st.composite
def feedback_requests(draw) -> Case:
    shape = draw(st.sampled_from(["shaped", "shaped", "json", "bytes", "deep", "huge", "wrong_type"]))
    if shape == "shaped":
        doc = {
            "request_id": draw(st.one_of(st.text(max_size=40), st.sampled_from(["0" * 32, ""]), json_values())),
            "label": draw(st.one_of(st.integers(-3, 10), st.sampled_from(["spiral", "Smooth", "", "elliptical"]))),
        }
        if draw(st.booleans()):
            doc.pop(draw(st.sampled_from(["request_id", "label"])))
        body = json.dumps(doc).encode()
    elif shape == "json":
        body = json.dumps(draw(json_values())).encode()
    elif shape == "deep":  # nesting deeper than Python's recursion limit, under the 64 KiB body limit
        depth = draw(st.one_of(st.sampled_from([2_000, 30_000]), st.integers(500, 30_000)))
        body = (draw(st.sampled_from(["[", '{"a":'])) * depth).encode()
    elif shape == "huge":
        body = b'{"request_id": "' + b"r" * draw(st.integers(60_000, 200_000)) + b'", "label": 1}'
    else:
        body = draw(st.binary(max_size=512))
    content_type = draw(st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]))
    headers = {"Content-Type": content_type} if content_type else {}
    return Case("feedback", "POST", "/feedback", headers, content=body)


def header_text() -> st.SearchStrategy[str]:
    """Header values httpx can send (printable ASCII, no surrounding whitespace)."""
    return st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)


@st.composite
def odd_requests(draw, limits: Limits) -> Case:
    """Wrong methods and paths, junk query strings and headers on the real endpoints."""
    method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST", "OPTIONS", "HEAD"]))
    invented = st.text(st.sampled_from("abcxyz019-_./%~"), min_size=1, max_size=40).map(lambda t: "/" + t)
    path = draw(
        st.one_of(
            st.sampled_from([*ENDPOINTS, "/classify/", "/classify/raw/x", "/nowhere", "/readyz", "/openapi.json"]),
            invented,
        )
    )
    params = draw(st.dictionaries(st.sampled_from(["model", "x", "images"]), st.text(max_size=50), max_size=3))
    headers = draw(
        st.dictionaries(
            st.sampled_from(["Content-Type", "Accept", "X-Request-Id", "Content-Encoding", "Transfer-Encoding"]),
            header_text(),
            max_size=3,
        )
    )
    headers.pop("Transfer-Encoding", None)  # httpx frames the body itself
    body = draw(st.one_of(st.none(), st.binary(max_size=256)))
    if method in ("GET", "HEAD", "OPTIONS") and body:
        body = None
    return Case("odd", method, path, headers, content=body, params=params or None)


@st.composite
def valid_requests(draw, limits: Limits) -> Case:
    """Well-formed uploads in every format and mode, so the decode -> preprocess -> inference path is fuzzed too."""
    fmt, blob = draw(st.one_of(pil_images(), fits_files()))
    model = draw(st.sampled_from(limits.models))
    if draw(st.booleans()):
        content_type = "image/fits" if fmt == "FITS" else f"image/{fmt.lower()}"
        return Case("valid_raw", "POST", "/classify/raw", {"Content-Type": content_type}, blob, params={"model": model})
    files = [("images", (f"galaxy.{fmt.lower()}", blob))] * draw(st.integers(1, limits.max_images))
    return Case("valid_multipart", "POST", "/classify", files=files, data={"model": model})


def requests(limits: Limits) -> st.SearchStrategy[Case]:
    """Every kind of hostile request, roughly evenly, and some well-formed ones."""
    return st.one_of(
        valid_requests(limits),
        raw_requests(limits),
        raw_requests(limits),
        multipart_requests(limits),
        multipart_requests(limits),
        malformed_multipart(limits),
        feedback_requests(),
        odd_requests(limits),
    )


def warm_up_cases(limits: Limits) -> list[Case]:
    """One request of each expensive kind, sent before memory is measured (lazy imports, allocator pools)."""
    rgb = encode(make_image("RGB", 300, 300, 0), "PNG")
    cube = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(0).normal(1, 0.2, (3, 64, 64)).astype(np.float32)).writeto(cube)
    cases = [
        Case("raw", "POST", "/classify/raw", {"Content-Type": "image/png"}, rgb, params={"model": m})
        for m in limits.models
    ]
    cases.append(Case("raw", "POST", "/classify/raw", {"Content-Type": "image/fits"}, cube.getvalue()))
    for _, blob in bombs(limits.max_pixels):
        cases.append(Case("raw", "POST", "/classify/raw", {"Content-Type": "application/octet-stream"}, blob))
    files = [("images", ("a.png", rgb))] * limits.max_images
    cases.append(Case("multipart", "POST", "/classify", files=files))
    return cases


def fixed_cases(limits: Limits) -> list[Case]:
    """The warm-up, then requests that once broke the service (kept so that every run sends them)."""
    json_type = {"Content-Type": "application/json"}
    return [
        *warm_up_cases(limits),
        Case("feedback", "POST", "/feedback", json_type, b"[" * 30_000),  # RecursionError in json.loads -> was 500
        Case("feedback", "POST", "/feedback", json_type, b'{"a":' * 3_000),
        # 1 x 4M pixels: was padded to a 224 x 4M canvas (3.6 GB) by centre-cropping after padding
        Case(
            "raw", "POST", "/classify/raw", {"Content-Type": "image/png"}, encode(Image.new("L", (1, 4_000_000)), "PNG")
        ),
    ]
