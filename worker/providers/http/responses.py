"""Reading an upstream's 2xx answer in the OpenAI images shape (pure, no I/O).

``parse_edit_response`` turns ``{"data": [{"b64_json" | "url"}], "usage"}`` into an
``EditAnswer``: the decoded image, or the url to download it from, and the usage.
Anything else is ``UpstreamBadResponse``. orq, Requesty and OpenAI-compatible
gateways all answer in this shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.core.jobs import Usage
from app.errors import UpstreamBadResponse
from worker.providers.http.errors import parse_error_body

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
