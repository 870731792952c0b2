"""How the fake upstream reads an edit request: multipart or JSON, into a ``RecordedRequest``.

Anything it cannot read raises ``BadRequest``, which answers with an OpenAI error body
(400, or 413 when the body is too large), so a malformed request never causes a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import BodyPartReader, hdrs, web
from multidict import CIMultiDict

from tests.support.fakes.upstream_faults import error_body, error_kind

MAX_BODY_BYTES = 100 * 1024 * 1024
"""Largest request body accepted; larger ones get 413."""

IMAGE_FIELDS = frozenset({"image", "image[]"})
"""Multipart fields that carry input images."""


@dataclass(frozen=True)
class Upload:
    """One file of a request: its field (``image``, ``image[]``, ``mask``; ``images`` for JSON)."""

    field: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """One edit request as the fake saw it; filled in as far as it could be read.

    ``received_at`` and ``answered_at`` (once its answer is built, about to be sent)
    are ``time.monotonic()``; ``path`` is the URL path it was sent to
    (``/v1/images/edits`` or orq's ``/v2/router/images/edits``); ``status`` is what the
    fake answered (None while in flight, or when it never answered); ``error`` says why
    it refused.
    """

    received_at: float
    headers: CIMultiDict[str]
    path: str = "/v1/images/edits"
    body_format: Literal["multipart", "json", "unknown"] = "unknown"
    fields: dict[str, str] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    answered_at: float | None = None

    @property
    def model(self) -> str | None:
        """The ``model`` field."""
        return self.fields.get("model")

    @property
    def prompt(self) -> str | None:
        """The ``prompt`` field."""
        return self.fields.get("prompt")

    @property
    def images(self) -> list[bytes]:
        """The input images' bytes, in order."""
        return [upload.data for upload in self.uploads if upload.field != "mask"]

    @property
    def image_count(self) -> int:
        """How many input images the request carried."""
        return len(self.images)

    @property
    def image_fields(self) -> list[str]:
        """The field name of each input image (``image``, ``image[]`` or ``images``)."""
        return [upload.field for upload in self.uploads if upload.field != "mask"]

    @property
    def mask(self) -> bytes | None:
        """The mask's bytes, if one was sent."""
        return next((upload.data for upload in self.uploads if upload.field == "mask"), None)

    @property
    def has_mask(self) -> bool:
        """Whether a mask was sent."""
        return self.mask is not None

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, as sent."""
        return self.headers.get(hdrs.AUTHORIZATION)


class BadRequest(Exception):
    """A request the fake refuses; becomes an OpenAI error answer with ``status``."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status

    def response(self) -> web.Response:
        """The JSON error answer."""
        error_type, code = error_kind(self.status)
        body = error_body(self.message, code=code, error_type=error_type, param=self.param)
        return web.Response(status=self.status, body=body, content_type="application/json")


async def read_edit_request(request: web.Request, record: RecordedRequest) -> None:
    """Read the body into ``record`` (fields and uploads); BadRequest if it is malformed."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"body is over {MAX_BODY_BYTES} bytes", status=413)
    content_type = request.content_type
    try:
        if content_type == "multipart/form-data":
            record.body_format = "multipart"
            await _read_multipart(request, record)
        elif content_type == "application/json":
            record.body_format = "json"
            _read_json(await request.read(), record)
        else:
            raise BadRequest(f"content type {content_type!r} is not multipart/form-data or JSON")
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequest(f"body is over {MAX_BODY_BYTES} bytes", status=413) from exc
    except (ValueError, LookupError, AssertionError, RuntimeError, Warning) as exc:
        # aiohttp warns about some malformed headers; under ``-W error`` that is raised.
        raise BadRequest(f"malformed {content_type} body: {exc}") from exc


async def _read_multipart(request: web.Request, record: RecordedRequest) -> None:
    reader = await request.multipart()
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        name = part.name
        if not name:
            raise BadRequest("every form part needs a name in its Content-Disposition")
        data = bytes(await part.read(decode=True))
        total += len(data)
        if total > MAX_BODY_BYTES:
            raise BadRequest(f"body is over {MAX_BODY_BYTES} bytes", status=413)
        if part.filename is None and name not in IMAGE_FIELDS | {"mask"}:
            record.fields[name] = data.decode()
        elif name in IMAGE_FIELDS | {"mask"}:
            content_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
            record.uploads.append(Upload(name, part.filename, content_type, data))
        else:
            raise BadRequest(f"unexpected file field {name!r}", param=name)


def _read_json(body: bytes, record: RecordedRequest) -> None:
    document = json.loads(body)
    if not isinstance(document, dict):
        raise BadRequest("the JSON body must be an object")
    images = document.pop("images", None)
    if not isinstance(images, list):
        raise BadRequest("images must be a list of {image_url}", param="images")
    for index, reference in enumerate(images):
        record.uploads.append(_data_url_upload("images", reference, f"images[{index}]"))
    mask = document.pop("mask", None)
    if mask is not None:
        record.uploads.append(_data_url_upload("mask", mask, "mask"))
    for key, value in document.items():
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise BadRequest(f"{key} must be a string or a number", param=key)
        record.fields[key] = value if isinstance(value, str) else json.dumps(value)


def _data_url_upload(name: str, reference: object, param: str) -> Upload:
    url = reference.get("image_url") if isinstance(reference, dict) else None
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("image_url must be a base64 data URL", param=param)
    header, _, payload = url.partition(",")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise BadRequest("image_url is not valid base64", param=param) from exc
    return Upload(name, None, header.removeprefix("data:").partition(";")[0], data)
