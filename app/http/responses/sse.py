"""The Server-Sent Events wire format as editq writes it, and the resume ids it reads.

An event is ``id``, ``event`` and one line of JSON ``data``; ids are Redis stream
ids (``<ms>-<seq>``), so a client resumes with the last one it saw as
``Last-Event-ID``. A stream opens with a ``retry`` field (the reconnection delay).
``app.client.models.SseDecoder`` is the reading side.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.errors import InvalidRequest

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = 3000
RETRY = f"retry: {RETRY_MS}\n".encode()
"""Sent first on every stream: a dropped connection is retried after 3 s (browsers
otherwise pick their own delay). No blank line follows: the field joins the first
event's block, so SSE libraries that dispatch a block with no data (httpx-sse) do
not yield an empty event before the first real one."""
STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
MAX_ID_PART = 2**64 - 1


def encode_event(event_id: str, event: str, data: Any) -> bytes:
    """One event's frame: ``id``, ``event`` and ``data`` (``data`` as one line of JSON)."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


def parse_stream_id(value: str | None, *, param: str) -> str | None:
    """A resume id (``<ms>-<seq>`` or ``<ms>``), or None when absent or empty.

    InvalidRequest naming ``param`` when it is not a Redis stream id.
    """
    if not value:
        return None
    match = STREAM_ID.fullmatch(value)
    if match is None or any(int(part) > MAX_ID_PART for part in match.groups("0")):
        raise InvalidRequest(
            f"{param} must be an event id from this stream (like 1712345678901-0)", param=param
        )
    return value
