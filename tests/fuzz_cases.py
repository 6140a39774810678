"""Hostile HTTP requests for the service, as hypothesis strategies.

Shared by tests/test_fuzz.py (a few hundred requests in CI) and scripts/fuzz_full.py (>= 10,000).
Every request is something a careless or malicious client could send: random bytes, truncated or
corrupted JPEG/PNG/GIF/BMP/TIFF/WebP/FITS, headers claiming zero or enormous dimensions, odd
Pillow modes (CMYK, I;16, P, LA, F, 1, animated GIF), real decompression bombs and thin
images, wrong content types, malformed multipart bodies, huge fields, unknown models and
malformed /feedback JSON. The service must answer all of them with a status below 500.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache

import httpx
import numpy as np
from astropy.io import fits
from hypothesis import strategies as st
from PIL import Image

ENDPOINTS = ("/classify", "/classify/raw", "/models", "/feedback")  # the service's own JSON endpoints

# Pillow modes each format can write (combinations Pillow refuses fall back to RGB PNG)
FORMAT_MODES = {
    "JPEG": ("L", "RGB", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "TIFF": ("1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "GIF": ("P", "L"),
    "BMP": ("1", "L", "P", "RGB"),
    "WEBP": ("RGB", "RGBA"),
}
RAW_TYPES = ("image/jpeg", "image/png", "image/tiff", "image/gif", "image/bmp", "image/webp", "image/fits")
ODD_TYPES = ("application/octet-stream", "image/jpeg; charset=utf-8", "IMAGE/PNG", "application/fits")
WRONG_TYPES = ("", "text/plain", "application/json", "multipart/form-data", "image/svg+xml", "*/*", "image/")
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"SIMPLE  =", b"RIFF")


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


# ----------------------------------------------------------------------------- image payloads


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        array = rng.integers(0, 60000, (height, width)).astype(dtype)
        return Image.fromarray(array)  # uint16 -> I;16, int32 -> I, float32 -> F
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


@st.composite
def pil_images(draw) -> tuple[str, bytes]:
    """(format, bytes) of a valid image in a random format, mode and size (sometimes animated)."""
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    width = draw(st.one_of(st.integers(1, 64), st.integers(1, 400), st.sampled_from([1, 223, 224, 225, 1000])))
    height = draw(st.one_of(st.integers(1, 64), st.integers(1, 400), st.sampled_from([1, 223, 224, 225, 600])))
    seed = draw(st.integers(0, 2**32 - 1))
    image = make_image(mode, width, height, seed)
    try:
        if fmt == "GIF" and draw(st.booleans()):  # animated: the service uses the first frame
            frames = [make_image(mode, width, height, seed + k) for k in range(1, draw(st.integers(2, 4)))]
            return fmt, encode(image, fmt, save_all=True, append_images=frames, duration=50, loop=0)
        extra = {"quality": draw(st.integers(1, 100))} if fmt == "JPEG" else {}
        return fmt, encode(image, fmt, **extra)
    except (OSError, ValueError, KeyError):
        return "PNG", encode(image.convert("RGB"), "PNG")


@st.composite
def fits_files(draw) -> tuple[str, bytes]:
    """FITS files: 2-D, g,r,i cubes, and shapes the service refuses; NaN/inf/constant data; extensions."""
    shape = draw(
        st.sampled_from(
            [(16, 16), (40, 30), (3, 24, 24), (1, 20, 20), (4, 16, 16), (50,), (2, 3, 8, 8), (1, 1), (3, 1, 1)]
        )
    )
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(["noise", "constant", "nan", "inf", "zeros"]))
    data = rng.normal(100, 30, shape)
    if fill == "constant":
        data[...] = 7
    elif fill == "zeros":
        data[...] = 0
    elif fill in ("nan", "inf") and np.issubdtype(dtype, np.floating):
        data.flat[:: max(1, data.size // 5)] = np.nan if fill == "nan" else np.inf
    data = data.astype(dtype)
    layout = draw(st.sampled_from(["primary", "extension", "compressed", "empty"]))
    if layout == "primary":
        hdus = fits.HDUList([fits.PrimaryHDU(data)])
    elif layout == "extension":
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)])
    elif layout == "compressed" and data.ndim >= 2 and data.dtype != np.float64:
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])])
    buf = io.BytesIO()
    hdus.writeto(buf)
    return "FITS", buf.getvalue()


@cache
def bombs(max_pixels: int) -> tuple[tuple[str, bytes], ...]:
    """Small files that decode to too many pixels, and thin images just inside the pixel limit."""
    side = int(max_pixels**0.5) + 64
    thin = min(max_pixels, 4_000_000)
    return (
        ("PNG", encode(Image.new("L", (side, side)), "PNG")),  # a few KB -> more than max_pixels
        ("GIF", encode(Image.new("P", (side, 200)), "GIF")),
        ("PNG", encode(Image.new("L", (1, thin)), "PNG")),  # thin: allowed, must not be padded to 224 x 4M
        ("PNG", encode(Image.new("L", (thin, 1)), "PNG")),
        ("TIFF", encode(Image.new("1", (side, side)), "TIFF", compression="group4")),
    )


def set_dimensions(fmt: str, data: bytes, width: int, height: int) -> bytes:
    """Rewrite the header's claimed size (zero or enormous), keeping checksums valid where there are any."""
    out = bytearray(data)
    if fmt == "PNG" and out[12:16] == b"IHDR":
        out[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    elif fmt == "GIF":
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = out.find(b"\x2c", 13)  # first image descriptor
        if at > 0:
            out[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif fmt == "BMP":
        out[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    elif fmt == "JPEG":
        match = re.search(rb"\xff[\xc0\xc1\xc2]", bytes(out))
        if match:
            at = match.start() + 5
            out[at : at + 4] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif fmt == "FITS":
        text = bytes(out[:2880]).decode("ascii", "replace")
        for axis, value in (("NAXIS1", width), ("NAXIS2", height)):
            text = re.sub(rf"{axis}  =\s+\d+", f"{axis}  = {value:>20}", text, count=1)
        out[:2880] = text.encode("ascii", "replace")[:2880]
    return bytes(out)


@st.composite
def mutated(draw, payload: tuple[str, bytes]) -> bytes:
    """A file left whole, truncated, corrupted, extended or given a lying header."""
    fmt, data = payload
    how = draw(st.sampled_from(["none", "truncate", "flip", "overwrite", "append", "prepend", "dims", "dims"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        out = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[at] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + junk + data[at + len(junk) :]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=256))
    if how == "prepend":
        return draw(st.binary(min_size=1, max_size=16)) + data
    if how == "dims":
        big = st.sampled_from([0, 1, 65535, 100_000, 2**31 - 1, 2**32 - 1])
        return set_dimensions(fmt, data, draw(big), draw(big))
    return data


def payloads(limits: Limits) -> st.SearchStrategy[bytes]:
    """Any upload body: images (mutated or not), FITS, bombs, random bytes and magic-prefixed garbage."""
    return st.one_of(
        pil_images().flatmap(mutated),
        pil_images().map(lambda p: p[1]),
        fits_files().flatmap(mutated),
        st.sampled_from(bombs(limits.max_pixels)).flatmap(mutated),
        st.binary(max_size=2048),
        st.tuples(st.sampled_from(MAGIC), st.binary(max_size=512)).map(lambda t: t[0] + t[1]),
        st.just(b""),
    )


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
        body = draw(payloads(limits))
    return Case("raw", "POST", "/classify/raw", {"Content-Type": content_type}, content=body, params=params)


@st.composite
def multipart_requests(draw, limits: Limits) -> Case:
    n = draw(st.integers(0, limits.max_images + 2))
    files = []
    for _ in range(n):
        name = draw(st.sampled_from(["images", "images", "images", "image", "file", ""]))
        filename = draw(st.one_of(st.just("galaxy.jpg"), st.text(max_size=40), st.just("x" * 5000)))
        files.append((name, (filename, draw(payloads(limits)))))
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
    payload = draw(payloads(limits))
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
