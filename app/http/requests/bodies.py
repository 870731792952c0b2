"""Reading a request body off the wire within its limits: a byte limit (413 before
buffering past it), a deadline (408 for a stalled or slow-loris upload) and, for a
multipart body, a cap on its parts.

The idempotency middleware and the submission readers both read bodies through here,
so a body gets the same limits whichever reads it first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from app.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from app.net import read_bounded
from app.settings import Settings

MAX_PARTS = 64


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
