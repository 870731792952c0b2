"""A fake Gemini API (``generateContent`` of the image models): a real aiohttp server.

::

    async with FakeGemini(api_key="k") as gemini:   # 127.0.0.1, a free port
        gemini.latency_s = 0.2                       # slow processing
        gemini.fail_next(google_error(429, retry_delay="3s"), withheld("IMAGE_SAFETY"))
        ...                                          # base_url = gemini.base_url
        assert gemini.max_in_flight <= 4

It follows Google's public API reference. ``POST /v1beta/models/{model}:generateContent``
takes the key in ``x-goog-api-key`` (or ``?key=``) and JSON ``{"contents": [{"parts":
[{"text"}, {"inline_data": {"mime_type", "data"}}, {"file_data": {"mime_type",
"file_uri"}}]}], "generationConfig": {"responseModalities", "imageConfig"}}`` (field
names in snake_case or camelCase, as the API's JSON mapping allows). ``file_data``
URIs over http(s) are fetched by the fake itself, as the API fetches public and
presigned URLs; ``serve_input`` hosts such a file, standing in for object storage.

It really edits: the first image's colours are inverted, as ``upstream_edits`` does.
The answer is ``{"candidates": [{"content": {"role": "model", "parts": [...]},
"finishReason": "STOP", "index": 0}], "usageMetadata", "modelVersion", "responseId"}``
whose parts are a text part (``text_before_image``), a thought image
(``thought_image``), then the edited image as ``inlineData`` — or as ``fileData``
whose ``fileUri`` (``GET /v1beta/files/{id}:download``) expires after ``file_ttl_s``,
when ``answer_with_file_uri`` is set. Without ``IMAGE`` in ``responseModalities`` the
model answers in text only.

Refusals follow the API: no key is 403 ``PERMISSION_DENIED``, a wrong key 400
``INVALID_ARGUMENT`` with ``ErrorInfo.reason = API_KEY_INVALID``, a malformed body 400
``INVALID_ARGUMENT``; errors are ``{"error": {"code", "message", "status",
"details"}}``. Moderation and other answers are scripted as faults: ``google_error``
(with ``RetryInfo.retryDelay`` and/or ``Retry-After``), ``blocked_prompt``
(``promptFeedback.blockReason``), ``withheld`` (a ``finishReason`` such as ``SAFETY``,
``PROHIBITED_CONTENT``, ``IMAGE_SAFETY``), ``text_only``, and ``upstream_faults``'s
``Fault.hang`` and ``Fault.disconnect`` (the Gemini ones are in ``gemini_faults``).

Each request is recorded in ``requests`` and ``calls_started`` and counted in
``in_flight`` (``max_in_flight``) before anything else, so tests count submissions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.fakes.gemini_faults import (
    blocked_prompt,
    google_error,
    google_error_body,
    text_only,
    withheld,
)
from tests.support.fakes.server import CountsInFlight, FakeServer, wait_until
from tests.support.fakes.upstream_edits import EditSpec, render_edit
from tests.support.fakes.upstream_faults import Fault, FaultKind
from tests.support.fakes.upstream_requests import BadRequest

__all__ = [
    "FakeGemini",
    "Fault",
    "GeminiRequest",
    "blocked_prompt",
    "google_error",
    "text_only",
    "withheld",
]

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body taken (the API's inline limit is in this range)."""

IMAGE_TOKENS = 258
"""Tokens one input image counts for (the API's figure for a small image)."""

OUTPUT_IMAGE_TOKENS = 1290
"""Tokens one generated image counts for (the figure of a 1024x1024 image)."""

FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)
"""How long fetching a ``file_data`` URI may take."""

_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


class _Refusal(Exception):
    """A request the fake refuses, answered in Google's error shape."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason

    def response(self) -> web.Response:
        details = None
        if self.reason is not None:
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason}]
        body = google_error_body(self.status, self.message, details)
        return web.Response(status=self.status, body=body, content_type="application/json")


@dataclass
class GeminiRequest:
    """One ``generateContent`` request as the fake received and understood it."""

    received_at: float
    headers: CIMultiDict[str]
    model: str
    api_key: str | None = None
    body: dict[str, Any] | None = None
    prompt: str = ""
    images: list[bytes] = field(default_factory=list)
    mime_types: list[str] = field(default_factory=list)
    file_uris: list[str] = field(default_factory=list)
    response_modalities: list[str] = field(default_factory=list)
    aspect_ratio: str | None = None
    status: int | None = None
    error: str | None = None
    answered_at: float | None = None


class FakeGemini(FakeServer, CountsInFlight):
    """The fake Gemini API on a real socket; see the module docstring.

    Settings, changeable at any time: ``api_key`` (None takes any key or none),
    ``latency_s``, ``text_before_image``, ``thought_image``, ``answer_with_file_uri``,
    ``file_ttl_s``, ``usage`` ("auto", None to leave it out, or a dict sent as is),
    ``fail_always``. Observations: ``requests``, ``calls_started``, ``in_flight``,
    ``max_in_flight``, ``file_downloads``. Its ``base_url`` is the API's (that of a
    ``gemini`` upstream).
    """

    label = "the fake Gemini API"
    max_body_bytes = MAX_BODY_BYTES
    fetches_urls = True  # file_data URIs are fetched, as the API fetches them

    def __init__(self, *, api_key: str | None = None, latency_s: float = 0.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.latency_s = latency_s
        self.text_before_image = True
        self.thought_image = False
        self.answer_with_file_uri = False
        self.file_ttl_s = 3600.0
        self.usage: dict[str, Any] | Literal["auto"] | None = "auto"
        self.fail_always: Fault | None = None
        self.requests: list[GeminiRequest] = []
        self.calls_started: list[float] = []
        self.file_downloads = 0
        self._script: deque[Fault] = deque()
        self._files: dict[str, tuple[bytes, str, float]] = {}  # id -> bytes, type, expiry
        self._inputs: dict[str, tuple[bytes, str]] = {}

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{model}:generateContent", self._handle_generate)
        app.router.add_get("/v1beta/files/{file_id}:download", self._handle_file)
        app.router.add_get("/inputs/{input_id}", self._handle_input)

    def fail_next(self, *faults: Fault) -> None:
        """Script faults for the next requests, one each, in order (after earlier ones)."""
        self._script.extend(faults)

    def serve_input(self, data: bytes, content_type: str) -> str:
        """Host ``data`` at a URL the fake can fetch (as a presigned storage URL)."""
        input_id = os.urandom(8).hex()
        self._inputs[input_id] = (data, content_type)
        return f"{self.base_url}/inputs/{input_id}"

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        """Return once ``count`` requests have arrived; TimeoutError after ``timeout_s``."""
        await wait_until(lambda: len(self.requests) >= count, timeout_s)

    async def _handle_generate(self, request: web.Request) -> web.Response:
        record = GeminiRequest(
            received_at=time.monotonic(),
            headers=CIMultiDict(request.headers),
            model=request.match_info["model"],
            api_key=request.headers.get("x-goog-api-key") or request.query.get("key"),
        )
        self.requests.append(record)
        self.calls_started.append(record.received_at)
        with self._counted():
            response = await self._answer(request, record)
        record.status = response.status
        record.answered_at = time.monotonic()
        return response

    async def _answer(self, request: web.Request, record: GeminiRequest) -> web.Response:
        try:
            self._check_key(record)
            record.body = await _read_json(request)
            await self._read_contents(record)
        except _Refusal as exc:
            record.error = exc.message
            return exc.response()
        fault = self._script.popleft() if self._script else self.fail_always
        if not await self._pause(self.latency_s):
            return _Refusal(503, "the fake Gemini API is stopping").response()
        if fault is not None and fault.kind is FaultKind.ANSWER:
            headers = {"Content-Type": fault.content_type, **dict(fault.headers)}
            return web.Response(status=fault.http_status, body=fault.body, headers=headers)
        if fault is not None and fault.kind is FaultKind.DISCONNECT and request.transport:
            request.transport.close()
        hang = fault.seconds if fault is not None and fault.kind is FaultKind.HANG else 0.0
        if not await self._pause(hang):
            return _Refusal(503, "the fake Gemini API is stopping").response()
        return await self._succeed(request, record)

    def _check_key(self, record: GeminiRequest) -> None:
        if self.api_key is None:
            return
        if not record.api_key:
            raise _Refusal(403, _MISSING_KEY)
        if record.api_key != self.api_key:
            raise _Refusal(
                400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
            )

    async def _read_contents(self, record: GeminiRequest) -> None:
        """Fill ``record`` from its body: prompt, images (fetched when by URI), config."""
        body = record.body or {}
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents or not isinstance(contents[0], dict):
            raise _Refusal(400, "* GenerateContentRequest.contents: contents is not specified")
        parts = contents[-1].get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Refusal(400, "* GenerateContentRequest.contents[0].parts: must not be empty")
        for index, part in enumerate(parts):
            await self._read_part(record, index, part)
        if not record.prompt.strip():
            raise _Refusal(400, "* GenerateContentRequest.contents[0].parts: no text prompt")
        config = _either(body, "generationConfig", "generation_config") or {}
        modalities = _either(config, "responseModalities", "response_modalities") or ["TEXT"]
        record.response_modalities = [str(m).upper() for m in modalities]
        image_config = _either(config, "imageConfig", "image_config") or {}
        record.aspect_ratio = _either(image_config, "aspectRatio", "aspect_ratio")

    async def _read_part(self, record: GeminiRequest, index: int, part: object) -> None:
        where = f"* GenerateContentRequest.contents[0].parts[{index}]"
        if not isinstance(part, dict):
            raise _Refusal(400, f"{where}: not an object")
        inline = _either(part, "inlineData", "inline_data")
        linked = _either(part, "fileData", "file_data")
        if isinstance(part.get("text"), str):
            record.prompt += part["text"]
        elif isinstance(inline, dict):
            mime_type = _either(inline, "mimeType", "mime_type")
            try:
                data = base64.b64decode(str(inline.get("data", "")), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Refusal(400, f"{where}.inline_data.data: invalid base64") from exc
            self._add_image(record, where, str(mime_type), data)
        elif isinstance(linked, dict):
            uri = str(_either(linked, "fileUri", "file_uri") or "")
            record.file_uris.append(uri)
            mime_type = str(_either(linked, "mimeType", "mime_type"))
            self._add_image(record, where, mime_type, await self._fetch(uri, where))
        else:
            raise _Refusal(400, f"{where}: a part needs text, inline_data or file_data")

    def _add_image(self, record: GeminiRequest, where: str, mime_type: str, data: bytes) -> None:
        if mime_type not in ("image/png", "image/jpeg", "image/webp"):
            raise _Refusal(400, f"{where}: unsupported MIME type: {mime_type}")
        if not data:
            raise _Refusal(400, f"{where}: the image is empty")
        record.images.append(data)
        record.mime_types.append(mime_type)

    async def _fetch(self, uri: str, where: str) -> bytes:
        if not uri.startswith(("http://", "https://")) or self._http is None:
            raise _Refusal(400, f"{where}.file_data.file_uri: unsupported URI {uri[:100]!r}")
        try:
            async with self._http.get(uri, timeout=FETCH_TIMEOUT) as response:
                if response.status != 200:
                    raise _Refusal(400, f"Cannot fetch content from the provided URL: {uri}")
                return await response.read()
        except aiohttp.ClientError as exc:
            raise _Refusal(400, f"Cannot fetch content from the provided URL: {uri}") from exc

    async def _succeed(self, request: web.Request, record: GeminiRequest) -> web.Response:
        words = f"Here is the edited image for: {record.prompt[:60]}"
        parts: list[dict[str, Any]] = [{"text": words}] if self.text_before_image else []
        image_tokens = 0
        if "IMAGE" in record.response_modalities:
            if not record.images:
                return _Refusal(400, "the fake edits images: send at least one").response()
            spec = EditSpec(record.prompt, (record.images[0],), None, 1, None, "png", None, "auto")
            loop = asyncio.get_running_loop()
            try:
                image, _ = await loop.run_in_executor(None, render_edit, spec)
            except BadRequest as exc:
                return _Refusal(400, exc.message).response()
            if self.thought_image:
                thought = {"mimeType": record.mime_types[0], "data": _b64(record.images[0])}
                parts.append({"inlineData": thought, "thought": True})
            parts.append(self._image_part(request, image))
            image_tokens = OUTPUT_IMAGE_TOKENS
        elif not parts:
            parts.append({"text": words})
        answer: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "modelVersion": record.model,
            "responseId": os.urandom(9).hex(),
        }
        if self.usage == "auto":
            answer["usageMetadata"] = estimated_usage(record, len(words) // 4, image_tokens)
        elif self.usage is not None:
            answer["usageMetadata"] = self.usage
        return web.json_response(answer)

    def _image_part(self, request: web.Request, image: bytes) -> dict[str, Any]:
        if not self.answer_with_file_uri:
            return {"inlineData": {"mimeType": "image/png", "data": _b64(image)}}
        file_id = os.urandom(8).hex()
        self._files[file_id] = (image, "image/png", time.monotonic() + self.file_ttl_s)
        uri = f"{request.url.origin()}/v1beta/files/{file_id}:download?alt=media"
        return {"fileData": {"mimeType": "image/png", "fileUri": uri}}

    async def _handle_file(self, request: web.Request) -> web.Response:
        self.file_downloads += 1
        if self.api_key is not None and request.headers.get("x-goog-api-key") != self.api_key:
            return _Refusal(403, _MISSING_KEY).response()
        stored = self._files.get(request.match_info["file_id"])
        if stored is None or time.monotonic() > stored[2]:
            return _Refusal(404, "Requested entity was not found.").response()
        return web.Response(body=stored[0], content_type=stored[1])

    async def _handle_input(self, request: web.Request) -> web.Response:
        stored = self._inputs.get(request.match_info["input_id"])
        if stored is None:
            return web.Response(status=404, text="no such input")
        return web.Response(body=stored[0], content_type=stored[1])


def estimated_usage(record: GeminiRequest, text_out: int, image_out: int) -> dict[str, Any]:
    """The ``usageMetadata`` the fake reports: one prompt token per 4 characters (at least
    1), ``IMAGE_TOKENS`` per input image; the answer's text tokens plus
    ``OUTPUT_IMAGE_TOKENS`` for an image."""
    text_in = max(1, len(record.prompt) // 4)
    images_in = IMAGE_TOKENS * len(record.images)
    prompt = text_in + images_in
    candidates = text_out + image_out
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": text_in},
            {"modality": "IMAGE", "tokenCount": images_in},
        ],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": image_out}],
    }


async def _read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _Refusal(400, f"Invalid Content-Type {request.content_type!r}: send JSON")
    try:
        document = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refusal(400, f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(document, dict):
        raise _Refusal(400, "Invalid JSON payload received. Expected an object.")
    return document


def _either(document: dict[str, Any], camel: str, snake: str) -> Any:
    """A field by its camelCase or its snake_case name (proto JSON takes both)."""
    return document.get(camel, document.get(snake))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
