"""The ``Prefer: wait=N`` request header (RFC 7240) of the submit endpoints.

A client that would rather have the finished object than a 202 asks for it with
``Prefer: wait=N``: the answer is held up to N seconds (at most ``EDITQ_MAX_WAIT_S``)
for the job or batch to finish. ``Preference-Applied: wait=N`` names the wait that
was honoured. Other preferences (``respond-async``, ``return=...``) and a ``wait``
whose value is not a whole number of seconds are ignored, as RFC 7240 asks.
"""

from __future__ import annotations

import math

from aiohttp import web

PREFER = "Prefer"
PREFERENCE_APPLIED = "Preference-Applied"
SUBMIT_HEADERS = ("Location", PREFERENCE_APPLIED)
"""The headers of a submit's answer (``Preference-Applied`` when a wait was asked)."""


def preferred_wait(request: web.Request, limit_s: float) -> int | None:
    """The seconds ``Prefer: wait=N`` asks to hold the answer, capped at ``limit_s``;
    None when no valid wait above 0 is asked for (or ``limit_s`` allows none)."""
    for header in request.headers.getall(PREFER, ()):
        for preference in header.split(","):
            token = preference.partition(";")[0]  # a preference's parameters: none known
            name, _, value = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            seconds = value.strip().strip('"')
            if not seconds.isascii() or not seconds.isdigit():
                return None
            wait = min(int(seconds), math.floor(limit_s))
            return wait if wait > 0 else None
    return None


def applied(wait: int) -> dict[str, str]:
    """The header naming the wait honoured."""
    return {PREFERENCE_APPLIED: f"wait={wait}"}


def submit_status(wait: int | None, finished: bool) -> int:
    """A submit's status: 201 when the client asked to wait and the object finished,
    else 202, even for an object finished already (an idempotent retry's, a cache
    hit): without ``Prefer`` every submit answers alike."""
    return 201 if wait is not None and finished else 202
