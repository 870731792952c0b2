"""When a synchronous edit must answer: the server's ``sync_wait_limit_s``, or a
little before the client said it gives up (``app.core.sync_wait``).

The OpenAI SDKs send their read timeout as ``x-stainless-read-timeout``; any client
may send ``Request-Timeout``; both are seconds. A read timeout runs from when the
client has sent its request, so the deadline is fixed once the body is read
(``sync_deadline``, first called by the idempotency middleware) and kept on the
request for the handler and for a retry waiting on its first attempt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from app.core.sync_wait import answer_within_s, parse_seconds
from app.http.app_keys import SETTINGS

READ_TIMEOUT_HEADER = "x-stainless-read-timeout"
REQUEST_TIMEOUT_HEADER = "Request-Timeout"


@dataclass(frozen=True)
class SyncDeadline:
    """The loop time (``asyncio`` clock, seconds) a synchronous edit answers by, and
    the client's timeout when that, not the server's limit, set it."""

    at: float
    wait_s: float
    client_timeout_s: float | None

    def remaining_s(self) -> float:
        """Seconds left until the deadline (0 once past it)."""
        return max(0.0, self.at - asyncio.get_running_loop().time())


SYNC_DEADLINE = web.RequestKey("sync_deadline", SyncDeadline)


def client_timeout_s(request: web.Request) -> float | None:
    """The shortest timeout (seconds) the request's headers announce, or None."""
    announced = [
        seconds
        for name in (READ_TIMEOUT_HEADER, REQUEST_TIMEOUT_HEADER)
        if (seconds := parse_seconds(request.headers.get(name))) is not None
    ]
    return min(announced, default=None)


def sync_deadline(request: web.Request) -> SyncDeadline:
    """The request's deadline, fixed (and kept on it) the first time it is asked."""
    found = request.get(SYNC_DEADLINE)
    if found is None:
        limit = request.app[SETTINGS].sync_wait_limit_s
        client = client_timeout_s(request)
        wait_s = answer_within_s(limit, client)
        found = SyncDeadline(
            at=asyncio.get_running_loop().time() + wait_s,
            wait_s=wait_s,
            client_timeout_s=client if wait_s < limit else None,
        )
        request[SYNC_DEADLINE] = found
    return found
