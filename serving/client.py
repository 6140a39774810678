"""A small HTTP client of the service with the standard library: the project's one multipart/form-data
encoder, POST /classify and POST /explain. The demo, the load test's Locust users (FastHttpUser has no `files=`) and
the GPU check send their forms with it.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

# an image to upload: a file, its bytes, or (file name, bytes)
Upload = Path | bytes | tuple[str, bytes]


def _named(upload: Upload, index: int) -> tuple[str, bytes]:
    if isinstance(upload, Path):
        return upload.name, upload.read_bytes()
    if isinstance(upload, bytes):
        return f"image{index}.jpg", upload
    return upload


def multipart(images: Sequence[Upload], model: str = "", tta: int = 1) -> tuple[bytes, str]:
    """A multipart/form-data body with one `images` file field per image, an optional `model` field and a
    `tta` field when not 1; (body, Content-Type header). Each part's type follows its file name (bytes alone
    are sent as JPEG)."""
    boundary = f"galaxyvit-{uuid.uuid4().hex}"
    parts = []
    for index, upload in enumerate(images):
        filename, content = _named(upload, index)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head = f'Content-Disposition: form-data; name="images"; filename="{filename}"\r\nContent-Type: {content_type}'
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n")
    fields = {"model": model, "tta": str(tta) if tta != 1 else ""}
    for name, value in fields.items():
        if value:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ClassifyError(RuntimeError):
    """The service answered an error status; the message holds its JSON error body."""


def _post(url: str, body: bytes, content_type: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ClassifyError(f"{url} answered {exc.code}: {exc.read()[:1000].decode(errors='replace')}") from None


def classify(url: str, images: Sequence[Upload], model: str = "", timeout: float = 60, tta: int = 1) -> list[dict]:
    """POST the images to URL/classify as one multipart request (with tta=8 each is averaged over its 8
    rotated/flipped views); the predictions, in the images' order."""
    body, content_type = multipart(images, model, tta)
    return json.loads(_post(f"{url}/classify", body, content_type, timeout))["predictions"]


def explain_png(url: str, image: Path, model: str = "", timeout: float = 60) -> bytes:
    """POST one image file to URL/explain?format=png: the crop the model sees with its attention map overlaid."""
    query = urllib.parse.urlencode({"format": "png", **({"model": model} if model else {})})
    content_type = mimetypes.guess_type(image.name)[0] or "image/jpeg"
    return _post(f"{url}/explain?{query}", image.read_bytes(), content_type, timeout)
