"""Reading a request body off the wire within its limits: a byte limit (413 before
buffering past it), a deadline (408 for a stalled or slow-loris upload) and, for a
multipart body, a cap on its parts and on each part's bytes.

The idempotency middleware and the submission readers both read bodies through here,
so a body gets the same limits whichever reads it first. A multipart body is parsed
once per request (``read_form``): the middleware fingerprints the parts the handler
then takes its fields and images from. The parse gives the event loop a turn between
parts (and ``read_bounded`` every few MB), since a body already in memory never makes
a read wait, so no body, however it is cut up, holds up the other requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from app.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from app.net import read_bounded
from app.settings import Settings

MAX_PARTS = 64
IMAGE_FIELDS = ("image", "image[]")
MASK_FIELD = "mask"
FILE_FIELD = "file"  # an uploaded file (POST /v1/files): an image, limited as one
MAX_TEXT_FIELD_BYTES = 1024 * 1024
NO_NAME = "a multipart part has no name (Content-Disposition name=...)"


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart body: its name, filename and content type as its
    headers say them ("" when absent) and its bytes."""

    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Form:
    """A multipart body, parsed: its parts in order, or the parts before the point
    where its framing broke and the 400 that it gets (``refusal``)."""

    parts: tuple[FormPart, ...]
    refusal: InvalidRequest | None = None

    def checked_parts(self) -> tuple[FormPart, ...]:
        """The parts; raises the body's ``refusal`` when it has one."""
        if self.refusal is not None:
            raise self.refusal
        return self.parts


FORM = web.RequestKey("form", Form)
"""The request's multipart body once ``read_form`` parsed it."""


@asynccontextmanager
async def body_deadline(settings: Settings) -> AsyncIterator[None]:
    """Reading a request body inside must end within ``body_read_timeout_s``;
    RequestTimeout (408) otherwise, InvalidRequest if the client hangs up mid-body."""
    seconds = settings.body_read_timeout_s
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
    except ConnectionError:  # not the job store's: the client left before its body ended
        raise InvalidRequest("the connection closed before the whole body arrived") from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge, before buffering, once it passes ``limit``
    bytes (before reading anything when its Content-Length already does)."""
    refuse_declared_length(request, limit)
    return await read_bounded(request.content, limit, too_large=lambda _: body_too_large(limit))


def refuse_declared_length(request: web.Request, limit: int) -> None:
    """PayloadTooLarge when the request's Content-Length is over ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit}"
        )


def body_too_large(limit: int) -> PayloadTooLarge:
    """The error for a request body found, while reading it, to pass ``limit`` bytes."""
    return PayloadTooLarge(f"request body is larger than {limit} bytes")


def count_part(count: int) -> int:
    """The number of the next multipart part; InvalidRequest once there are more than
    ``MAX_PARTS`` (the widest real request: 16 images, a mask and about 20 fields)."""
    count += 1
    if count > MAX_PARTS:
        raise InvalidRequest(f"a multipart body may have at most {MAX_PARTS} parts")
    return count


def image_param(index: int) -> str:
    """The param naming the ``index``-th image part (from 0): ``image[index]``."""
    return f"image[{index}]"


async def read_form(request: web.Request, settings: Settings) -> Form:
    """The request's ``multipart/form-data`` body, parsed on the first call and kept on
    ``request`` for the next ones, so a body is parsed once however many ask.

    Call it inside ``body_deadline``. Raises InvalidRequest past ``MAX_PARTS`` parts
    and PayloadTooLarge past the body's limit or a part's (an image or the mask
    ``max_image_bytes``, any other ``MAX_TEXT_FIELD_BYTES``), refused before the rest
    is read. Framing that cannot be parsed (the boundary, a part's headers, a nested
    multipart body, a part without a name) is not raised but kept as the form's
    ``refusal``: the fingerprint then falls back to the raw bytes and the reader
    raises it. A ``file`` part (an upload to the Files API) is limited as an image.
    """
    form = request.get(FORM)
    if form is None:
        form = await _parse_form(request, settings)
        request[FORM] = form
    return form


async def _parse_form(request: web.Request, settings: Settings) -> Form:
    parts: list[FormPart] = []
    budget = _Budget(settings.max_body_bytes)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            count_part(len(parts))
            if not isinstance(part, BodyPartReader):
                return Form(
                    tuple(parts), InvalidRequest("nested multipart bodies are not accepted")
                )
            if not part.name:
                return Form(tuple(parts), InvalidRequest(NO_NAME))
            parts.append(await _read_part(part, part.name, parts, settings, budget))
            await asyncio.sleep(0)  # a body in memory never waits: let other requests run
    except (ValueError, BadHttpMessage) as exc:  # bad framing, or a part's bad headers
        return Form(tuple(parts), InvalidRequest(f"malformed multipart body: {exc}"))
    return Form(tuple(parts))


async def _read_part(
    part: BodyPartReader,
    name: str,
    earlier: list[FormPart],
    settings: Settings,
    budget: _Budget,
) -> FormPart:
    """The part called ``name``, its bytes read within its limit and the body's."""
    if name in IMAGE_FIELDS:
        images_before = sum(1 for other in earlier if other.name in IMAGE_FIELDS)
        limit, param = settings.max_image_bytes, image_param(images_before)
    elif name in (MASK_FIELD, FILE_FIELD):
        limit, param = settings.max_image_bytes, name
    else:
        limit, param = MAX_TEXT_FIELD_BYTES, name
    data = await _read_bytes(part, limit, param, budget)
    return FormPart(name, part.filename or "", part.headers.get("Content-Type", ""), data)


async def _read_bytes(part: BodyPartReader, limit: int, param: str, budget: _Budget) -> bytes:
    """The part's bytes, at most ``limit`` of them and at most what is left of ``budget``."""

    def too_large(count: int) -> PayloadTooLarge:
        if count > budget.left:  # the whole body is past its limit (the part may be too)
            return body_too_large(budget.limit)
        return PayloadTooLarge(f"{param} is larger than {limit} bytes", param=param)

    data = await read_bounded(part, min(limit, budget.left), too_large=too_large)
    budget.left -= len(data)
    return data


class _Budget:
    """Bytes left of the whole body's allowance."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
