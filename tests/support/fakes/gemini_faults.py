"""Answers the fake Gemini API can be scripted to give, one per request, in Google's
shapes: error bodies ``{"error": {"code", "message", "status", "details"}}`` (with
``RetryInfo`` and ``ErrorInfo`` details), a prompt blocked by moderation, a candidate
withheld with a ``finishReason``, an answer in words only. Each is an
``upstream_faults.Fault`` for ``FakeGemini.fail_next`` or ``fail_always``.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.fakes.upstream_faults import Fault

GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""The ``google.rpc.Code`` name sent with each HTTP status."""


def google_error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> bytes:
    """Google's error body ``{"error": {"code", "message", "status", "details"?}}``."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": GOOGLE_STATUSES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def google_error(
    status: int,
    message: str | None = None,
    *,
    retry_delay: str | None = None,
    retry_after: str | None = None,
    reason: str | None = None,
) -> Fault:
    """An error answer: ``retry_delay`` (``"3s"``) adds ``RetryInfo``, ``retry_after`` the
    ``Retry-After`` header, ``reason`` an ``ErrorInfo`` (``API_KEY_INVALID`` …)."""
    details: list[dict[str, Any]] = []
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    text = message or f"fake Gemini fault: HTTP {status}"
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    body = google_error_body(status, text, details)
    return Fault.raw(status, body, content_type="application/json", headers=headers)


def blocked_prompt(reason: str = "PROHIBITED_CONTENT") -> Fault:
    """A 200 whose prompt was blocked: ``promptFeedback.blockReason``, no candidates."""
    answer = {
        "promptFeedback": {"blockReason": reason},
        "usageMetadata": {"promptTokenCount": 300, "totalTokenCount": 300},
        "modelVersion": "gemini-fake",
    }
    return Fault.raw(200, json.dumps(answer), content_type="application/json")


def withheld(finish_reason: str = "IMAGE_SAFETY") -> Fault:
    """A 200 whose candidate has no content and a ``finishReason`` saying why."""
    answer = {
        "candidates": [{"finishReason": finish_reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 300, "totalTokenCount": 300},
        "modelVersion": "gemini-fake",
    }
    return Fault.raw(200, json.dumps(answer), content_type="application/json")


def text_only(text: str = "I cannot make that edit, but here is a description.") -> Fault:
    """A 200 whose candidate answers in words only (``finishReason`` ``STOP``)."""
    answer = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 300,
            "candidatesTokenCount": 12,
            "totalTokenCount": 312,
        },
    }
    return Fault.raw(200, json.dumps(answer), content_type="application/json")
