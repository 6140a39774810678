"""A small HTTP client of the service with the standard library: the project's one multipart/form-data
encoder, and POST /classify. The demo, the load test's Locust users (FastHttpUser has no `files=`) and
the GPU check send their forms with it.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
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


def multipart(images: Sequence[Upload], model: str = "") -> tuple[bytes, str]:
    """A multipart/form-data body with one `images` file field per image and an optional `model` field;
    (body, Content-Type header). Each part's type follows its file name (bytes alone are sent as JPEG)."""
    boundary = f"galaxyvit-{uuid.uuid4().hex}"
    parts = []
    for index, upload in enumerate(images):
        filename, content = _named(upload, index)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head = f'Content-Disposition: form-data; name="images"; filename="{filename}"\r\nContent-Type: {content_type}'
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n")
    if model:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ClassifyError(RuntimeError):
    """The service answered an error status; the message holds its JSON error body."""


def classify(url: str, images: Sequence[Upload], model: str = "", timeout: float = 60) -> list[dict]:
    """POST the images to URL/classify as one multipart request; the predictions, in the images' order."""
    body, content_type = multipart(images, model)
    request = urllib.request.Request(f"{url}/classify", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ClassifyError(
            f"{url}/classify answered {exc.code}: {exc.read()[:1000].decode(errors='replace')}"
        ) from None
    return answer["predictions"]
