"""How long a synchronous edit may hold its request, and whether a request is a
client's retry: pure rules over header values.

A client that says when it gives up (the OpenAI SDKs' ``x-stainless-read-timeout``,
or ``Request-Timeout``, both in seconds) is answered a little before that, so it
reads a 504 naming its job instead of timing out on a bare connection: the margin
is 10 % of its timeout, at least 1 s, at most half of it.
"""

from __future__ import annotations

import math

MIN_MARGIN_S = 1.0
MARGIN_SHARE = 0.1


def parse_seconds(value: str | None) -> float | None:
    """A header's positive, finite number of seconds; None when absent or not one."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def answer_within_s(limit_s: float, client_timeout_s: float | None) -> float:
    """Seconds a synchronous edit may wait before answering: ``limit_s`` (the
    server's limit), shortened to end a margin before ``client_timeout_s``."""
    if client_timeout_s is None:
        return limit_s
    margin = min(max(MIN_MARGIN_S, MARGIN_SHARE * client_timeout_s), client_timeout_s / 2)
    return min(limit_s, client_timeout_s - margin)


def retry_count(value: str | None) -> int:
    """The attempt number a client sent (``x-stainless-retry-count``: 0 for the
    first attempt); 0 when absent or not a count."""
    if value is None:
        return 0
    try:
        count = int(value.strip())
    except ValueError:
        return 0
    return max(count, 0)
