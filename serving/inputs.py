"""The endpoints' inputs: pydantic models (`bentoml.IODescriptor`) and how each is read from an HTTP request.

BentoML's OpenAPI document, its /schema.json and its clients (SyncHTTPClient, AsyncHTTPClient,
`bentoml.depends`) see the fields. Each model reads the request itself (`from_http_request`, BentoML's
hook for an input type) because of what BentoML's own reading does not do: uploads stay in memory
(BentoML writes every file field to a temporary file), a refused request gets the service's JSON error
with its status (BentoML answers what it refuses as {"error": ...}, without a kind), and /classify/raw and
/explain take the image as the request body with `?model=` and `?tta=`/`?format=`, besides the multipart
form BentoML's clients send. The fields are not validated again (`model_construct`): the endpoints check
them against the settings and the served models.

A refusal found while reading is not raised (BentoML would answer it itself) but kept with the request's
API key id for the endpoint (`take_request`), which answers it. Both ride on a context variable:
BentoML reads the input and calls the endpoint in the same task. Calls from another service of the same
`bentoml serve` (`bentoml.depends(GalaxyClassifier)`) come pickled: BentoML reads those, and the endpoint
answers them with the pydantic model, which BentoML pickles back.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import bentoml
from pydantic import Field
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from galaxyvit.tta import N_VIEWS
from inference.decode import check_content_type
from serving.auth import KEY_ID
from serving.errors import ServiceError
from serving.uploads import parse_format, parse_tta

MAX_FORM_FILES = 1000  # multipart parsing bound; the endpoint refuses more than `max_images` with 413
FEEDBACK_SHAPE = '{"request_id": "...", "label": class index or class name}'
MULTIPART = "multipart/form-data"
PICKLE = "application/vnd.bentoml+pickle"  # BentoML's own, between the services of one `bentoml serve` only


@dataclass(frozen=True)
class Received:
    """What reading a request left for its endpoint: a refusal, and the API key id (None: no keys)."""

    refusal: ServiceError | None = None
    owner: str | None = None
    internal: bool = False  # a call from another service of the deployment (`bentoml.depends`), in pickle


_RECEIVED: ContextVar[Received | None] = ContextVar("galaxyvit_received", default=None)


def take_request() -> Received:
    """What the current request's reading left (a direct, local call of an endpoint: nothing)."""
    received = _RECEIVED.get()
    _RECEIVED.set(None)
    return received or Received()


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def form_text(form: FormData, name: str) -> str | None:
    """A text field; BentoML's clients send each as JSON (`"vit"`, `8`, `null`), curl as plain text."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ServiceError("bad_multipart", 400, f"`{name}` must be a text field, not a file")
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return None if decoded is None else value if isinstance(decoded, dict | list) else str(decoded)


async def read_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=16)
    except Exception as exc:
        raise ServiceError("bad_multipart", 400, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None


async def file_fields(form: FormData, name: str) -> list[bytes]:
    """The bytes of every file field `name`; a text field of that name is a 400 `bad_multipart`."""
    files = form.getlist(name)
    if any(not isinstance(f, UploadFile) for f in files):
        raise ServiceError("bad_multipart", 400, f"`{name}` fields must be files, not text")
    return [await f.read() for f in files if isinstance(f, UploadFile)]


class HttpInput(bentoml.IODescriptor):
    """An endpoint's input read by `read` (below); see the module docstring."""

    @classmethod
    async def read(cls, request: Request) -> dict[str, Any]:
        return {}

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Self:
        owner = request.scope.get(KEY_ID)
        if media_type(request) == PICKLE:  # BentoML refuses it from outside (415); its own reading fits here
            _RECEIVED.set(Received(None, owner, internal=True))
            return await super().from_http_request(request, serde)
        try:
            fields = await cls.read(request)
        except ServiceError as refusal:
            _RECEIVED.set(Received(refusal, owner))
            return cls.model_construct(**dict.fromkeys(cls.model_fields))  # the endpoint answers the refusal
        _RECEIVED.set(Received(None, owner))
        return cls.model_construct(**fields)


MODEL_FIELD: Any = Field(None, description="a served model's name (GET /models); empty: the default model")
TTA_FIELD: Any = Field(1, description=f"{N_VIEWS}: average the prediction over the {N_VIEWS} rotated/flipped views")


class ClassifyInput(HttpInput):
    """POST /classify: multipart form data, one or more `images` file fields, optional `model` and `tta`."""

    images: list[Path] = Field(description="image files: JPEG, PNG, TIFF or FITS (each a file field `images`)")
    model: str | None = MODEL_FIELD
    tta: Literal[1, 8] = TTA_FIELD

    @classmethod
    async def read(cls, request: Request) -> dict[str, Any]:
        body = await request.body()
        if not body:
            raise ServiceError(
                "empty_body", 400, "empty request: send multipart form data with one or more `images` files"
            )
        media = media_type(request)
        if media != MULTIPART:
            raise ServiceError(
                "unsupported_media_type",
                415,
                f"POST /classify takes multipart/form-data (fields `images`, `model`), not {media or '(none)'!r}; "
                "send raw image bytes to /classify/raw",
            )
        form = await read_form(request, MAX_FORM_FILES)
        try:
            images = await file_fields(form, "images")
            if not images:
                raise ServiceError("no_images", 400, "no `images` file in the form")
            return {"images": images, "model": form_text(form, "model"), "tta": parse_tta(form_text(form, "tta"))}
        finally:
            await form.close()


async def one_image(request: Request, options: tuple[str, ...]) -> tuple[bytes, dict[str, str | None]]:
    """The image of /classify/raw or /explain: the request body (options from the query string), or the file
    field `image` of a multipart form (options from its text fields: BentoML's clients send this)."""
    if media_type(request) == MULTIPART:
        form = await read_form(request, 2)
        try:
            images = await file_fields(form, "image")
            if len(images) != 1:
                raise ServiceError("bad_multipart", 400, "send exactly one `image` file field")
            return images[0], {name: form_text(form, name) for name in options}
        finally:
            await form.close()
    check_content_type(request.headers.get("content-type"))
    return await request.body(), {name: request.query_params.get(name) for name in options}


class ImageInput(HttpInput):
    """POST /classify/raw: the image as the request body (Content-Type image/jpeg|png|tiff|fits or
    application/octet-stream), ?model=NAME&tta=1|8; or a multipart form with one `image` file field."""

    image: Path = Field(description="one image file: JPEG, PNG, TIFF or FITS")
    model: str | None = MODEL_FIELD
    tta: Literal[1, 8] = TTA_FIELD

    @classmethod
    async def read(cls, request: Request) -> dict[str, Any]:
        image, options = await one_image(request, ("model", "tta"))
        return {"image": image, "model": options["model"], "tta": parse_tta(options["tta"])}


class ExplainInput(HttpInput):
    """POST /explain: one image as /classify/raw; ?model=NAME&format=json|png."""

    image: Path = Field(description="one image file: JPEG, PNG, TIFF or FITS")
    model: str | None = MODEL_FIELD
    format: Literal["json", "png"] = Field(
        "json", description="json: the prediction and the map; png: the crop the model sees with the map overlaid"
    )

    @classmethod
    async def read(cls, request: Request) -> dict[str, Any]:
        image, options = await one_image(request, ("model", "format"))
        return {"image": image, "model": options["model"], "format": parse_format(options["format"])}


class FeedbackInput(HttpInput):
    """POST /feedback: JSON {"request_id": "...", "label": class index or class name of the predicting model}."""

    request_id: str = Field(description="the `request_id` of a prediction")
    label: int | str = Field(description="the true class: an index or a class name of the model that predicted")

    @classmethod
    async def read(cls, request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested deeper than the parser recurses
            raise ServiceError("bad_json", 400, f"feedback must be JSON: {FEEDBACK_SHAPE}") from None
        if not isinstance(data, dict) or not isinstance(data.get("request_id"), str) or "label" not in data:
            raise ServiceError("bad_json", 400, f"feedback must be {FEEDBACK_SHAPE}")
        return {"request_id": data["request_id"], "label": data["label"]}


class NoInput(HttpInput):
    """An endpoint without parameters (POST /models)."""
