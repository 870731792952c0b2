"""Reading an upload to the Files API (``POST /v1/files``) off the wire, and binding the
caller's files for the edit readers' ``file_id`` references.

The upload is OpenAI's multipart shape: a ``file`` part, ``purpose`` and, optionally,
``expires_after[anchor]`` and ``expires_after[seconds]``. Its image is checked as an
edit request's inputs are, by the same ``ImageDecoder`` (headers, pixel budgets, a full
decode), and the body is read within the same limits (``read_form``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aiohttp import web

from app.core.files import check_purpose, expiry_of
from app.core.images import CheckedImage
from app.errors import InvalidRequest, UnsupportedMediaType
from app.http.app_keys import FILE_SERVICE
from app.http.middleware.errors import TENANT
from app.http.requests.bodies import (
    FILE_FIELD,
    body_deadline,
    read_form,
    refuse_declared_length,
)
from app.http.requests.decoding import ImageDecoder
from app.http.requests.submissions import LoadFile
from app.settings import Settings


@dataclass(frozen=True)
class Upload:
    """A checked upload: the image, the name it came with, its purpose and expiry."""

    image: CheckedImage
    filename: str
    purpose: str
    expires_at: int | None


def callers_files(request: web.Request) -> LoadFile:
    """``file_id`` references of this request read the caller's files."""
    return partial(request.app[FILE_SERVICE].load, request[TENANT])


async def read_upload(
    request: web.Request, settings: Settings, decoder: ImageDecoder, *, created_at: int
) -> Upload:
    """The request's upload, checked; raises an EditqError naming the field at fault."""
    refuse_declared_length(request, settings.max_body_bytes)
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("upload a file as multipart/form-data")
    async with body_deadline(settings):
        form = await read_form(request, settings)
    files = [part for part in form.checked_parts() if part.name == FILE_FIELD]
    if len(files) != 1:
        raise InvalidRequest("send exactly one file part", param=FILE_FIELD)
    texts: dict[str, str] = {}
    for part in form.checked_parts():
        if part.name != FILE_FIELD:  # text parts are at most MAX_TEXT_FIELD_BYTES
            texts[part.name] = part.data.decode("utf-8", "replace")
    purpose = check_purpose(texts.get("purpose"))
    expires_at = expiry_of(
        texts.get("expires_after[anchor]"),
        texts.get("expires_after[seconds]"),
        created_at=created_at,
    )
    inputs = [(FILE_FIELD, files[0].data)]
    image = (await decoder.decode(inputs, decoder.read_headers(inputs)))[0]
    filename = files[0].filename[:255] or f"upload.{image.extension}"
    return Upload(image=image, filename=filename, purpose=purpose, expires_at=expires_at)
