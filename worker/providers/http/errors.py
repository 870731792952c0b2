"""How an OpenAI-compatible upstream's HTTP error answer becomes an ``UpstreamError``.

Pure functions, no I/O: ``error_for_status`` maps a status, body and ``Retry-After``
header to the exception the adapter raises, keeping the upstream's own message::

    429                 UpstreamRateLimited (retry_after); InsufficientCredits when the
                        body says the quota is spent
    408, 504            UpstreamTimeout
    other 5xx (529 …)   UpstreamError
    400, 404, 422       UpstreamRejected  model_capability_mismatch | invalid_request_error
    401, 403            UpstreamRejected  upstream_auth_failed
    402                 InsufficientCredits
    413                 UpstreamRejected  payload_too_large
    other 4xx           UpstreamRejected  invalid_request_error
    anything else       UpstreamBadResponse
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from app.errors import (
    InsufficientCredits,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)

MAX_MESSAGE_CHARS = 500
"""Longest upstream message (or raw body excerpt) kept in an error."""

PASSED_THROUGH_CODES = frozenset({"model_capability_mismatch", "invalid_request_error"})
"""Codes of a rejected request that are kept as the upstream sent them."""

QUOTA_CODES = frozenset(
    {"insufficient_quota", "insufficient_credits", "billing_hard_limit_reached"}
)
"""Codes a 429 carries when the account is out of money, not merely too fast."""

_REJECTED_CODES: dict[int, str] = {
    401: "upstream_auth_failed",
    402: "insufficient_credits",
    403: "upstream_auth_failed",
    413: "payload_too_large",
}


@dataclass(frozen=True)
class ErrorBody:
    """What an upstream's error body said: its message and, if it gave them, code and type."""

    message: str
    code: str | None = None
    type: str | None = None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date.

    A date is measured from ``now`` (the current UTC time by default). The result is
    never negative; None when the value is missing or unreadable.
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until(value, now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds_until(http_date: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_error_body(body: bytes, status: int) -> ErrorBody:
    """The message, code and type of an error answer.

    Understands OpenAI's ``{"error": {"message", "code", "type"}}``, the router shape
    ``{"error": {"origin", "message"}}``, ``{"error": "text"}`` and the problem-details
    shape ``{"title", "detail", "status"}`` (Replicate); anything else yields the
    body's text, truncated, or ``HTTP <status>`` when it is empty.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str) and error.strip():
        return ErrorBody(message=_truncate(error))
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
        if isinstance(error.get("origin"), str):
            message = f"{message} (origin: {error['origin']})"
        return ErrorBody(
            message=_truncate(message),
            code=_text_or_none(error.get("code")),
            type=_text_or_none(error.get("type")),
        )
    detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, str) and detail.strip():
        return ErrorBody(message=_truncate(detail))
    text = body.decode("utf-8", errors="replace").strip()
    return ErrorBody(message=_truncate(text) if text else f"HTTP {status}")


def error_for_status(
    status: int, body: bytes, retry_after: str | None = None, now: datetime | None = None
) -> UpstreamError:
    """The exception for a non-2xx answer; see the module docstring for the table."""
    error = parse_error_body(body, status)
    message = f"upstream answered HTTP {status}: {error.message}"
    wait = parse_retry_after(retry_after, now)
    if status == 429:
        if error.code in QUOTA_CODES:
            return InsufficientCredits(message, upstream_status=status)
        return UpstreamRateLimited(message, upstream_status=status, retry_after=wait)
    if status in (408, 504):
        return UpstreamTimeout(message, upstream_status=status, retry_after=wait)
    if 500 <= status <= 599:
        return UpstreamError(message, upstream_status=status, retry_after=wait)
    if 400 <= status <= 499:
        code = _rejected_code(status, error)
        if code == InsufficientCredits.default_code:
            return InsufficientCredits(message, upstream_status=status)
        return UpstreamRejected(message, upstream_status=status, code=code)
    return UpstreamBadResponse(message, upstream_status=status)


def _rejected_code(status: int, error: ErrorBody) -> str:
    if status in _REJECTED_CODES:
        return _REJECTED_CODES[status]
    if error.code is not None and error.code in PASSED_THROUGH_CODES:
        return error.code
    return "invalid_request_error"


def _truncate(text: str) -> str:
    text = text.strip()
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[: MAX_MESSAGE_CHARS - 1] + "…"


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
