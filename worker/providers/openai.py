"""The adapter for any OpenAI-compatible ``POST {base_url}/images/edits`` upstream.

``OpenAIUpstream.edit`` sends one multipart request (``n=1``) and returns the image
the upstream answered with, as ``b64_json`` or as a ``url`` it then downloads. Every
failure is an ``app.errors.UpstreamError``: HTTP error answers are mapped by
``worker.providers.http_errors``; no answer in time is ``UpstreamTimeout``; no
connection is ``UpstreamError`` with code ``upstream_unreachable``; a 2xx that is not
a usable image response is ``UpstreamBadResponse``. Bodies are read up to a cap, so
an upstream cannot exhaust the worker's memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError
from yarl import URL

from app.errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout
from app.jobs import Usage
from app.providers_config import UpstreamConfig
from worker.providers.base import EditCall, EditOutput
from worker.providers.http_errors import error_for_status, parse_error_body

MAX_RESPONSE_BYTES = 128 * 1024 * 1024
"""Largest edit response body read (base64 JSON of one image)."""

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""Largest image downloaded when the upstream answers with a ``url``."""

MAX_ERROR_BODY_BYTES = 64 * 1024
"""How much of an error answer is read for its message."""

_CHUNK_BYTES = 64 * 1024
_USAGE_FIELDS = frozenset(
    {
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "input_tokens_details",
        "prompt_tokens",
        "completion_tokens",
    }
)


def edits_url(base_url: str) -> str:
    """The edit endpoint under ``base_url`` (``http://host/v1`` -> ``http://host/v1/images/edits``)."""
    return base_url.rstrip("/") + "/images/edits"


def build_form(call: EditCall) -> aiohttp.FormData:
    """The multipart body for one call, as the official openai SDK shapes it.

    One image goes in field ``image``, several in repeated ``image[]``; optional
    parameters appear only when set.
    """
    form = aiohttp.FormData()
    form.add_field("model", call.model)
    form.add_field("prompt", call.prompt)
    field = "image" if len(call.images) == 1 else "image[]"
    for index, image in enumerate(call.images):
        filename = f"image-{index}.{image.extension}"
        form.add_field(field, image.data, filename=filename, content_type=image.content_type)
    if call.mask is not None:
        mask = call.mask
        form.add_field(
            "mask", mask.data, filename=f"mask.{mask.extension}", content_type=mask.content_type
        )
    form.add_field("n", "1")
    optional: dict[str, object | None] = {
        "size": call.size,
        "quality": call.quality,
        "background": call.background,
        "output_format": call.output_format,
        "output_compression": call.output_compression,
        "user": call.user,
    }
    for name, value in optional.items():
        if value is not None:
            form.add_field(name, str(value))
    return form


def usage_from(raw: object) -> Usage | None:
    """The reported usage in the OpenAI images shape, or None when there is none.

    Accepts that shape and the chat shape (``prompt_tokens`` -> ``input_tokens``,
    ``completion_tokens`` -> ``output_tokens``); numeric extras are kept.
    """
    if not isinstance(raw, dict) or not _USAGE_FIELDS & raw.keys():
        return None
    input_tokens = _count(raw.get("input_tokens", raw.get("prompt_tokens")))
    output_tokens = _count(raw.get("output_tokens", raw.get("completion_tokens")))
    fields: dict[str, Any] = {
        key: value
        for key, value in raw.items()
        if key not in _USAGE_FIELDS and (_is_count(value) or _is_counts(value))
    }
    fields["input_tokens"] = input_tokens
    fields["output_tokens"] = output_tokens
    total = raw.get("total_tokens")
    fields["total_tokens"] = _count(total) if _is_count(total) else input_tokens + output_tokens
    if _is_counts(raw.get("input_tokens_details")):
        fields["input_tokens_details"] = {
            k: _count(v) for k, v in raw["input_tokens_details"].items()
        }
    try:
        return Usage.model_validate(fields)
    except ValidationError:
        return None


def _is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_counts(value: object) -> bool:
    return isinstance(value, dict) and all(_is_count(item) for item in value.values())


def _count(value: object) -> int:
    if isinstance(value, int | float) and _is_count(value):
        return max(0, int(value))
    return 0


@dataclass(frozen=True)
class EditAnswer:
    """A 2xx edit answer: the decoded image, or the url to fetch it from; and usage."""

    image: bytes | None
    url: str | None
    usage: Usage | None


def parse_edit_response(body: bytes, status: int) -> EditAnswer:
    """Read a 2xx body ``{"data": [{"b64_json"|"url"}], "usage"}``.

    Raises UpstreamBadResponse when it is not JSON, has no data, or has neither a
    decodable ``b64_json`` nor a ``url``. The image bytes are not checked further.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponse("upstream answer is not JSON", upstream_status=status) from exc
    if isinstance(document, dict) and "error" in document:
        message = parse_error_body(body, status).message
        raise UpstreamBadResponse(f"upstream answered an error: {message}", upstream_status=status)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise UpstreamBadResponse("upstream answer has no data", upstream_status=status)
    usage = usage_from(document.get("usage"))
    b64_json, url = data[0].get("b64_json"), data[0].get("url")
    if isinstance(b64_json, str) and b64_json:
        return EditAnswer(image=decode_base64(b64_json, status), url=None, usage=usage)
    if isinstance(url, str) and url.startswith("data:"):
        return EditAnswer(image=decode_base64(url, status), url=None, usage=usage)
    if isinstance(url, str) and url:
        return EditAnswer(image=None, url=url, usage=usage)
    raise UpstreamBadResponse(
        "upstream answer has neither b64_json nor url", upstream_status=status
    )


def decode_base64(text: str, status: int) -> bytes:
    """Bytes of base64 text (or of a ``data:`` URL); UpstreamBadResponse if invalid or empty."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        image = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamBadResponse(
            "upstream image is not valid base64", upstream_status=status
        ) from exc
    if not image:
        raise UpstreamBadResponse("upstream image is empty", upstream_status=status)
    return image


@dataclass(frozen=True)
class _Answer:
    status: int
    retry_after: str | None
    body: bytes


class OpenAIUpstream:
    """An OpenAI-compatible image-edit upstream reached over a shared aiohttp session.

    The session belongs to the caller: ``close`` leaves it open. Sends
    ``Authorization: Bearer <api_key>`` when the config has a key.
    """

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        if not config.base_url:
            raise ValueError(f"upstream {config.name!r} has no base_url")
        self.name = config.name
        self._session = session
        self._url = edits_url(config.base_url)
        self._origin = URL(config.base_url).origin()
        key = config.api_key.get_secret_value() if config.api_key else ""
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit within ``call.timeout_s`` seconds; raises UpstreamError on failure."""
        deadline = asyncio.get_running_loop().time() + call.timeout_s
        headers = {"Accept": "application/json", **self._auth}
        answer = await self._exchange(
            "POST", self._url, call.timeout_s, MAX_RESPONSE_BYTES, headers, form=build_form(call)
        )
        if not 200 <= answer.status < 300:
            raise error_for_status(answer.status, answer.body, answer.retry_after)
        result = await asyncio.to_thread(parse_edit_response, answer.body, answer.status)
        image = result.image
        if image is None:
            image = await self._download(result.url or "", deadline, answer.status)
        return EditOutput(image=image, usage=result.usage)

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""

    async def _download(self, url: str, deadline: float, status: int) -> bytes:
        try:
            target = URL(url)
            same_origin = target.absolute and target.origin() == self._origin
        except ValueError:
            target, same_origin = URL(), False
        if target.scheme not in ("http", "https") or not target.host:
            raise UpstreamBadResponse(
                f"upstream image url is not http(s): {url[:200]!r}", upstream_status=status
            )
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise UpstreamTimeout(f"no time left to download from upstream {self.name}")
        headers = self._auth if same_origin else {}
        answer = await self._exchange(
            "GET", url, remaining, MAX_DOWNLOAD_BYTES, headers, redirects=True
        )
        if not 200 <= answer.status < 300:
            kind = UpstreamError if answer.status >= 500 else UpstreamBadResponse
            message = f"downloading the edited image from {url[:200]} answered HTTP {answer.status}"
            raise kind(message, upstream_status=answer.status)
        if not answer.body:
            raise UpstreamBadResponse("downloaded image is empty", upstream_status=answer.status)
        return answer.body

    async def _exchange(
        self,
        method: str,
        url: str,
        timeout_s: float,
        limit: int,
        headers: Mapping[str, str],
        *,
        form: aiohttp.FormData | None = None,
        redirects: bool = False,
    ) -> _Answer:
        """One HTTP exchange, body read up to ``limit``; transport failures become UpstreamError."""
        status: int | None = None
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.request(
                method, url, data=form, headers=headers, timeout=timeout, allow_redirects=redirects
            ) as response:
                status = response.status
                ok = 200 <= status < 300
                body, complete = await _read_capped(response, limit if ok else MAX_ERROR_BODY_BYTES)
                if ok and not complete:
                    raise UpstreamBadResponse(
                        f"upstream answer is larger than {limit} bytes", upstream_status=status
                    )
                return _Answer(status, response.headers.get("Retry-After"), body)
        except TimeoutError as exc:
            message = f"upstream {self.name} did not answer within {timeout_s:.3g} s"
            raise UpstreamTimeout(message, upstream_status=status) from exc
        except aiohttp.ClientConnectionError as exc:
            code = "upstream_unreachable" if status is None else None
            message = f"connection to upstream {self.name} failed: {_describe(exc)}"
            raise UpstreamError(message, upstream_status=status, code=code) from exc
        except aiohttp.ClientError as exc:
            message = f"upstream {self.name} sent a broken answer: {_describe(exc)}"
            raise UpstreamBadResponse(message, upstream_status=status) from exc


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether that was all of it."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
