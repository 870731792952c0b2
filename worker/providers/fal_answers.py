"""fal's queue API in plain data (pure, no I/O): the input sent, the answers read.

``input_body`` builds a model's JSON input from an ``EditCall``; ``read_handle``,
``read_status``, ``read_result`` and ``read_cancel`` read the queue's 2xx answers
(a body that is not what fal documents is ``UpstreamBadResponse``); ``fal_error``
maps an error answer into the ``UpstreamError`` tree.

fal answers errors in two shapes: a model's ``{"detail": [{"loc", "msg", "type"}]}``
and the platform's ``{"detail": "text", "error_type"}``. A ``type`` of
``content_policy_violation`` (fal's moderation, HTTP 422) is ``ContentFiltered``; a
403 saying the balance is exhausted is ``InsufficientCredits``; anything else goes
through the shared status table of ``worker.providers.http.errors`` with fal's message.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from app.core.jobs import Usage
from app.errors import ContentFiltered, InsufficientCredits, UpstreamBadResponse, UpstreamError
from worker.providers.base import EditCall, InputImage, UpstreamHandle
from worker.providers.http.errors import MAX_MESSAGE_CHARS, error_for_status
from worker.providers.http.responses import decode_base64, usage_from

MODERATION_TYPE = "content_policy_violation"
"""The error ``type`` fal gives an input or output its content checker refused."""

DEFAULT_IMAGE_FIELD = "image_url"
"""fal's usual name for a model's one input image (Kontext, Qwen image edit)."""

GENERIC_IMAGE_FIELD = "image"
"""The model entries' default ``image_field`` (Replicate's name): no fal model has an
input called ``image``, so for fal it stands for ``DEFAULT_IMAGE_FIELD``."""

MASK_FIELD = "mask_url"
"""Where fal's inpainting models (FLUX Fill, FLUX LoRA inpainting) take the mask."""

QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class TooManyImages(ValueError):
    """The call carries more images than the model entry lets the input hold."""


@dataclass(frozen=True)
class QueueStatus:
    """What ``GET status_url`` said: the state, the queue position while queued, and
    for a finished request that failed, fal's error text and type."""

    state: QueueState
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class FalResult:
    """A finished request's first image: its bytes (a data URI answer) or its URL, its
    content type, whether fal's safety checker flagged it, and any usage reported."""

    image: bytes | None
    url: str | None
    content_type: str | None
    flagged: bool
    usage: Usage | None


def input_body(call: EditCall) -> dict[str, Any]:
    """The model's JSON input for ``call`` (its mask already adapted for the upstream).

    The prompt goes under the model entry's ``prompt_field``; the images under its
    ``image_field``: a list for a plural field (``image_urls``), else the one image.
    Each image is its presigned ``url`` when it has one, else a base64 data URI. A mask
    goes as ``mask_url``. Raises TooManyImages past the entry's ``max_images`` (one for
    a singular field).
    """
    entry = call.model_entry
    prompt_field = entry.prompt_field if entry else "prompt"
    image_field = entry.image_field if entry else DEFAULT_IMAGE_FIELD
    if image_field == GENERIC_IMAGE_FIELD:
        image_field = DEFAULT_IMAGE_FIELD
    plural = image_field.endswith("s")
    limit = (entry.max_images if entry else 1) if plural else 1
    if len(call.images) > limit:
        raise TooManyImages(
            f"model {call.model} takes at most {limit} input image(s) in {image_field!r}, "
            f"not {len(call.images)}"
        )
    urls = [image_reference(image) for image in call.images]
    body: dict[str, Any] = {
        prompt_field: call.prompt,
        image_field: urls if plural else urls[0],
        "num_images": 1,
        "output_format": "jpeg" if call.output_format == "jpeg" else "png",
    }
    if call.mask is not None:
        body[MASK_FIELD] = image_reference(call.mask)
    return body


def image_reference(image: InputImage) -> str:
    """How fal receives one image: its presigned URL, or its bytes as a data URI."""
    if image.url:
        return image.url
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"


def read_handle(body: bytes, status: int) -> UpstreamHandle:
    """The handle in a submit answer ``{request_id, status_url, response_url, cancel_url}``."""
    document = _json_object(body, status)
    fields = {
        name: document.get(name)
        for name in ("request_id", "status_url", "response_url", "cancel_url")
    }
    if not all(isinstance(value, str) and value for value in fields.values()):
        missing = sorted(name for name, value in fields.items() if not isinstance(value, str))
        raise UpstreamBadResponse(
            f"fal's submit answer lacks {', '.join(missing) or 'usable urls'}",
            upstream_status=status,
        )
    return UpstreamHandle(
        request_id=str(fields["request_id"]),
        poll_url=str(fields["status_url"]),
        result_url=str(fields["response_url"]),
        cancel_url=str(fields["cancel_url"]),
    )


def read_status(body: bytes, status: int) -> QueueStatus:
    """A status answer: ``IN_QUEUE`` (with ``queue_position``), ``IN_PROGRESS`` or
    ``COMPLETED`` (with ``error``/``error_type`` when the request failed)."""
    document = _json_object(body, status)
    state = document.get("status")
    if state not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        raise UpstreamBadResponse(
            f"fal answered an unknown request status {str(state)[:50]!r}", upstream_status=status
        )
    position = document.get("queue_position")
    error = document.get("error")
    error_type = document.get("error_type")
    return QueueStatus(
        state=state,
        queue_position=position if isinstance(position, int) and position >= 0 else None,
        error=error if isinstance(error, str) and error else None,
        error_type=error_type if isinstance(error_type, str) and error_type else None,
    )


def read_result(body: bytes, status: int) -> FalResult:
    """A finished request's answer ``{images: [{url, content_type}], has_nsfw_concepts?}``.

    ``url`` may be a data URI (a model run with ``sync_mode``): then the image is decoded
    here. Raises UpstreamBadResponse when there is no image.
    """
    document = _json_object(body, status)
    images = document.get("images")
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        raise UpstreamBadResponse("fal's result has no images", upstream_status=status)
    url = images[0].get("url")
    if not isinstance(url, str) or not url:
        raise UpstreamBadResponse("fal's result image has no url", upstream_status=status)
    content_type = images[0].get("content_type")
    flags = document.get("has_nsfw_concepts")
    flagged = isinstance(flags, list) and bool(flags) and flags[0] is True
    usage = usage_from(document.get("usage"))
    if url.startswith("data:"):
        return FalResult(decode_base64(url, status), None, _text(content_type), flagged, usage)
    return FalResult(None, url, _text(content_type), flagged, usage)


def read_cancel(body: bytes) -> str | None:
    """The ``status`` of a cancel answer (``CANCELLATION_REQUESTED``,
    ``ALREADY_COMPLETED``, ``NOT_FOUND``), or None when it has none."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    state = document.get("status") if isinstance(document, dict) else None
    return state if isinstance(state, str) else None


@dataclass(frozen=True)
class FalDetail:
    """What a fal error body said: a readable message and the error types it named."""

    message: str
    types: tuple[str, ...] = ()


def read_detail(body: bytes, status: int) -> FalDetail:
    """The message and types of a fal error body (either shape; raw text otherwise)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        document = None
    if isinstance(document, list):  # some models answer the bare list of errors
        document = {"detail": document}
    detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, str) and detail.strip():
        error_type = document.get("error_type") if isinstance(document, dict) else None
        named: tuple[str, ...] = (error_type,) if isinstance(error_type, str) else ()
        return FalDetail(_truncate(detail), named)
    if isinstance(detail, list) and detail:
        items = [item for item in detail if isinstance(item, dict)]
        messages = [_item_message(item) for item in items]
        types = tuple(str(item["type"]) for item in items if isinstance(item.get("type"), str))
        return FalDetail(_truncate("; ".join(m for m in messages if m) or f"HTTP {status}"), types)
    text = body.decode("utf-8", errors="replace").strip()
    return FalDetail(_truncate(text) if text else f"HTTP {status}")


def fal_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """The exception for a fal error answer (see the module docstring)."""
    detail = read_detail(body, status)
    if MODERATION_TYPE in detail.types:
        return ContentFiltered(
            f"fal's content checker refused the request: {detail.message}",
            upstream_status=status,
        )
    if status == 403 and "exhausted balance" in detail.message.lower():
        return InsufficientCredits(
            f"upstream answered HTTP {status}: {detail.message}", upstream_status=status
        )
    restated = json.dumps({"error": {"message": detail.message}}).encode()
    return error_for_status(status, restated, retry_after)


def failed_status_error(status: QueueStatus) -> UpstreamError:
    """The error of a request whose status says it failed, when its result cannot be read."""
    kind = f" ({status.error_type})" if status.error_type else ""
    return UpstreamError(f"fal reports the request failed{kind}: {_truncate(status.error or '')}")


def _item_message(item: dict[str, Any]) -> str:
    message = item.get("msg")
    if not isinstance(message, str):
        return ""
    location = item.get("loc")
    if isinstance(location, list) and location:
        return f"{'.'.join(str(part) for part in location)}: {message}"
    return message


def _json_object(body: bytes, status: int) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponse("fal's answer is not JSON", upstream_status=status) from exc
    if not isinstance(document, dict):
        raise UpstreamBadResponse("fal's answer is not a JSON object", upstream_status=status)
    return document


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _truncate(text: str) -> str:
    text = text.strip()
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[: MAX_MESSAGE_CHARS - 1] + "…"
