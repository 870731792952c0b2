"""The adapter for Google's Gemini API (``kind = "gemini"``): one synchronous
``generateContent`` call per edit.

``POST {base_url}/v1beta/models/{upstream_model}:generateContent`` with the key in
``x-goog-api-key``; ``contents[0].parts`` holds the prompt text, then each input image
(``inline_data {mime_type, data}`` as base64, or ``file_data {mime_type, file_uri}``
for an upstream whose ``input_transfer`` is ``url``: the API fetches public and
presigned URLs itself), and ``generationConfig.responseModalities`` asks for
``["TEXT", "IMAGE"]``. The API has no mask parameter, so a mask always travels as the
last image with an instruction in the prompt (``adapt_mask``).

The answer's edited image is the first ``inlineData`` image part of
``candidates[0].content.parts`` that is not a thought (the image models may think in
draft images first, and often say something in a text part before the image); a
``fileData`` part instead is downloaded at once, capped. Failures, all
``app.errors.UpstreamError``::

    promptFeedback.blockReason (any)          ContentFiltered (final)
    finishReason SAFETY, PROHIBITED_CONTENT,  ContentFiltered (final)
      IMAGE_SAFETY, IMAGE_PROHIBITED_CONTENT,
      BLOCKLIST, SPII
    no image part (text only, NO_IMAGE …)     UpstreamBadResponse
    400 with ErrorInfo API_KEY_INVALID        UpstreamRejected upstream_auth_failed
    429 RESOURCE_EXHAUSTED                    UpstreamRateLimited; retry_after from
                                              Retry-After, else RetryInfo.retryDelay
    other statuses                            as ``worker.providers.http.errors``

``usageMetadata`` becomes the call's ``Usage`` (thinking tokens are billed as output).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import aiohttp

from app.core.jobs import Usage
from app.core.providers_config import UpstreamConfig
from app.errors import ContentFiltered, UpstreamBadResponse, UpstreamError, UpstreamRejected
from worker.providers.base import EditCall, EditOutput, InputImage
from worker.providers.http.client import MAX_RESPONSE_BYTES, HttpUpstreamClient, adapt_mask
from worker.providers.http.errors import error_for_status, parse_error_body
from worker.providers.http.responses import decode_base64

MODERATION_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
    }
)
"""``finishReason`` values saying Gemini's moderation withheld the answer."""

ASPECT_RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
"""``generationConfig.imageConfig.aspectRatio`` values the image models take."""

_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def generate_content_url(base_url: str, model: str) -> str:
    """``{base_url}/v1beta/models/{model}:generateContent``."""
    return f"{base_url.rstrip('/')}/v1beta/models/{model}:generateContent"


def image_part(image: InputImage) -> dict[str, Any]:
    """One input image as a request part: by URL when it has one, else inline base64."""
    if image.url is not None:
        return {"file_data": {"mime_type": image.content_type, "file_uri": image.url}}
    data = base64.b64encode(image.data).decode("ascii")
    return {"inline_data": {"mime_type": image.content_type, "data": data}}


def aspect_ratio(size: str | None) -> str | None:
    """The aspect ratio of a ``WxH`` size when it is one the API takes exactly, else None."""
    width, _, height = (size or "").partition("x")
    if not (width.isdigit() and height.isdigit()) or not int(width) or not int(height):
        return None
    divisor = math.gcd(int(width), int(height))
    ratio = f"{int(width) // divisor}:{int(height) // divisor}"
    return ratio if ratio in ASPECT_RATIOS else None


def build_request(call: EditCall) -> dict[str, Any]:
    """The ``generateContent`` body for one call (its mask already adapted)."""
    parts = [{"text": call.prompt}, *(image_part(image) for image in call.images)]
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"], "candidateCount": 1}
    ratio = aspect_ratio(call.size)
    if ratio is not None:
        config["imageConfig"] = {"aspectRatio": ratio}
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def gemini_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """The exception for a non-2xx answer in Google's error shape
    ``{"error": {"code", "message", "status", "details"}}`` (see the module docstring)."""
    details = _error_details(body)
    reasons = {d.get("reason") for d in details if d.get("@type") == _ERROR_INFO}
    if status == 400 and reasons & _AUTH_REASONS:
        message = f"upstream answered HTTP 400: {parse_error_body(body, status).message}"
        return UpstreamRejected(message, upstream_status=status, code="upstream_auth_failed")
    if retry_after is None:
        delays = [d.get("retryDelay") for d in details if d.get("@type") == _RETRY_INFO]
        retry_after = next((str(s) for d in delays if (s := duration_s(d)) is not None), None)
    return error_for_status(status, body, retry_after)


def duration_s(value: object) -> float | None:
    """Seconds of a protobuf JSON duration (``"38s"``, ``"0.5s"``); None if unreadable."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        seconds = float(value[:-1])
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _error_details(body: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return []
    error = document.get("error") if isinstance(document, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


@dataclass(frozen=True)
class GeminiAnswer:
    """A usable 2xx answer: the image's bytes, or the URL to fetch them from; usage."""

    image: bytes | None
    file_uri: str | None
    usage: Usage | None


def parse_answer(body: bytes, status: int) -> GeminiAnswer:
    """Read a 2xx ``generateContent`` answer; raises ContentFiltered when moderation
    withheld the image, UpstreamBadResponse when there is no image in it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponse("upstream answer is not JSON", upstream_status=status) from exc
    if not isinstance(document, dict):
        raise UpstreamBadResponse("upstream answer is not an object", upstream_status=status)
    feedback = document.get("promptFeedback")
    block_reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if isinstance(block_reason, str) and block_reason != "BLOCK_REASON_UNSPECIFIED":
        message = f"the upstream's moderation blocked the prompt ({block_reason})"
        raise ContentFiltered(message, upstream_status=status)
    candidates = document.get("candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else None
    if not isinstance(candidate, dict):
        raise UpstreamBadResponse("upstream answer has no candidates", upstream_status=status)
    finish = candidate.get("finishReason")
    if finish in MODERATION_FINISH_REASONS:
        message = f"the upstream's moderation withheld the image (finishReason {finish})"
        raise ContentFiltered(message, upstream_status=status)
    usage = usage_from_metadata(document.get("usageMetadata"))
    for part in _parts(candidate):
        if part.get("thought") is True:
            continue
        inline = _field(part, "inlineData", "inline_data")
        if _is_image(inline) and isinstance(inline.get("data"), str):
            return GeminiAnswer(decode_base64(inline["data"], status), None, usage)
        linked = _field(part, "fileData", "file_data")
        uri = _field_text(linked, "fileUri", "file_uri")
        if _is_image(linked) and uri:
            return GeminiAnswer(None, uri, usage)
    said = " ".join(_text_parts(candidate))[:200]
    message = f"upstream answered without an image (finishReason {finish}): {said!r}"
    raise UpstreamBadResponse(message, upstream_status=status)


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _text_parts(candidate: dict[str, Any]) -> list[str]:
    return [p["text"] for p in _parts(candidate) if isinstance(p.get("text"), str)]


def _field(part: dict[str, Any] | None, camel: str, snake: str) -> dict[str, Any] | None:
    """A sub-object by its camelCase name (as the API answers) or its snake_case one."""
    value = (part or {}).get(camel, (part or {}).get(snake))
    return value if isinstance(value, dict) else None


def _field_text(part: dict[str, Any] | None, camel: str, snake: str) -> str | None:
    value = (part or {}).get(camel, (part or {}).get(snake))
    return value if isinstance(value, str) and value else None


def _is_image(data: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    mime_type = _field_text(data, "mimeType", "mime_type")
    return mime_type is not None and mime_type.startswith("image/")


def usage_from_metadata(raw: object) -> Usage | None:
    """``usageMetadata`` in the OpenAI images shape, or None when there is none.

    ``promptTokenCount`` is the input (split by ``promptTokensDetails`` modality into
    text and image tokens), ``candidatesTokenCount`` plus ``thoughtsTokenCount`` the
    output; ``totalTokenCount`` is kept as reported.
    """
    if not isinstance(raw, dict) or "promptTokenCount" not in raw:
        return None
    input_tokens = _count(raw.get("promptTokenCount"))
    output_tokens = _count(raw.get("candidatesTokenCount")) + _count(raw.get("thoughtsTokenCount"))
    details = {"text_tokens": 0, "image_tokens": 0}
    for entry in raw.get("promptTokensDetails") or []:
        if isinstance(entry, dict) and entry.get("modality") in ("TEXT", "IMAGE"):
            key = f"{str(entry['modality']).lower()}_tokens"
            details[key] += _count(entry.get("tokenCount"))
    total = raw.get("totalTokenCount")
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=_count(total) if total is not None else input_tokens + output_tokens,
        input_tokens_details=details,
    )


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value)) if math.isfinite(value) else 0


class GeminiUpstream:
    """Gemini's image models (``gemini-2.5-flash-image`` …) over a shared aiohttp
    session, which ``close`` leaves open. The key goes in ``x-goog-api-key``."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        key = config.api_key.get_secret_value() if config.api_key else ""
        self._auth = {"x-goog-api-key": key} if key else {}
        self._client = HttpUpstreamClient(config, session, auth=self._auth)
        # No mask parameter in this API: the mask always goes as the last image.
        self._config = config.model_copy(update={"supports_mask": False})
        self._base_url = config.base_url or ""
        self.name = config.name

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit within ``call.timeout_s`` seconds; raises UpstreamError on failure
        (see the module docstring for which)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout_s
        call = await adapt_mask(call, self._config)
        body = await asyncio.to_thread(lambda: json.dumps(build_request(call)).encode())
        answer = await self._client.exchange(
            "POST",
            generate_content_url(self._base_url, call.model),
            call.timeout_s,
            MAX_RESPONSE_BYTES,
            {"Accept": "application/json", **self._auth},
            body=aiohttp.BytesPayload(body, content_type="application/json"),
        )
        if not 200 <= answer.status < 300:
            raise gemini_error(answer.status, answer.body, answer.retry_after)
        result = await asyncio.to_thread(parse_answer, answer.body, answer.status)
        image = result.image
        if image is None:
            image = await self._client.download(result.file_uri or "", deadline, answer.status)
        return EditOutput(image=image, usage=result.usage)

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""


__all__ = [
    "GeminiAnswer",
    "GeminiUpstream",
    "build_request",
    "gemini_error",
    "generate_content_url",
    "parse_answer",
    "usage_from_metadata",
]
