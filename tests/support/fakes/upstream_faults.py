"""Faults the fake upstream can inject, one per request, and OpenAI's error body.

Build them with the class methods (``Fault.status(429, retry_after="2")``,
``Fault.hang(5)``, ``Fault.malformed()`` ...) and hand them to
``FakeUpstream.fail_next`` or ``FakeUpstream.fail_always``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "invalid_api_key"),
    402: ("insufficient_credits", "insufficient_credits"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout_error", "timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(message: str, *, code: str, error_type: str, param: str | None = None) -> bytes:
    """OpenAI's error body ``{"error": {"message", "type", "code", "param"}}`` as JSON bytes."""
    error = {"message": message, "type": error_type, "code": code, "param": param}
    return json.dumps({"error": error}).encode()


def error_kind(status: int) -> tuple[str, str]:
    """The OpenAI error ``(type, code)`` usually sent with ``status``."""
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    if status >= 500:
        return ("server_error", "server_error")
    return ("invalid_request_error", "invalid_request_error")


class FaultKind(StrEnum):
    """What a fault does: send a fixed answer, wait before answering, or drop the connection."""

    ANSWER = "answer"
    HANG = "hang"
    DISCONNECT = "disconnect"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the fake, for one request; build it with the class methods."""

    kind: FaultKind
    http_status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float | None = None

    @classmethod
    def status(
        cls, http_status: int, *, retry_after: str | float | None = None, message: str | None = None
    ) -> Fault:
        """An OpenAI error answer with ``http_status`` and its usual type and code.

        ``retry_after`` (seconds, or any text such as an HTTP date) sets ``Retry-After``.
        """
        error_type, code = error_kind(http_status)
        text = message or f"fake upstream fault: HTTP {http_status}"
        return cls.json_error(
            http_status, code=code, message=text, error_type=error_type, retry_after=retry_after
        )

    @classmethod
    def json_error(
        cls,
        http_status: int,
        *,
        code: str,
        message: str = "fake upstream fault",
        error_type: str = "invalid_request_error",
        retry_after: str | float | None = None,
    ) -> Fault:
        """An OpenAI error answer with the given ``code``, ``message`` and ``type``."""
        body = error_body(message, code=code, error_type=error_type)
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        return cls(FaultKind.ANSWER, http_status, body, "application/json", headers)

    @classmethod
    def raw(
        cls,
        http_status: int,
        body: bytes | str,
        *,
        content_type: str = "text/plain",
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Exactly this answer (for other error shapes, odd JSON, HTML error pages)."""
        data = body.encode() if isinstance(body, str) else body
        return cls(
            FaultKind.ANSWER, http_status, data, content_type, tuple((headers or {}).items())
        )

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Wait ``seconds`` more, then answer normally; with None, never answer."""
        return cls(FaultKind.HANG, seconds=seconds)

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without answering."""
        return cls(FaultKind.DISCONNECT)

    @classmethod
    def malformed(cls) -> Fault:
        """A 200 whose body is not JSON."""
        return cls.raw(200, "<html><body>502 Bad Gateway</body></html>", content_type="text/html")

    @classmethod
    def bad_image(cls) -> Fault:
        """A 200 edit answer whose ``b64_json`` is valid base64 of bytes that are no image."""
        b64 = base64.b64encode(b"this is not an image").decode()
        return cls.raw(200, _answer_json([{"b64_json": b64}]), content_type="application/json")

    @classmethod
    def bad_base64(cls) -> Fault:
        """A 200 edit answer whose ``b64_json`` is not base64 at all."""
        return cls.raw(
            200, _answer_json([{"b64_json": "%%% not base64 %%%"}]), content_type="application/json"
        )


def _answer_json(data: list[dict[str, str]]) -> str:
    return json.dumps({"created": int(time.time()), "data": data})
