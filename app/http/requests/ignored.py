"""Naming the request parameters an endpoint ignored, in ``x-editq-ignored-params``.

Editq models OpenAI's image-edit parameters and its own; any other field is ignored,
never half-handled, and the answer says which (see ``app.core.edit_params``). The
readers note the names on the request (``note_ignored``); the HTTP edge turns them
into the header of whatever answer goes out (``app.http.middleware.ignored_params``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp import web

HEADER = "x-editq-ignored-params"
MAX_NAMES = 20
SAFE_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}", re.ASCII)

IGNORED_PARAMS = web.RequestKey("ignored_params", list[str])
"""The names ignored so far; one list per request, shared with its copies."""


def note_ignored(request: web.Request, names: Iterable[str]) -> None:
    """Add ``names`` to the request's ignored parameters (a no-op outside the app)."""
    ignored = request.get(IGNORED_PARAMS)
    if ignored is not None:
        ignored.extend(name for name in names if name not in ignored)


def header_value(names: list[str]) -> str:
    """The header's value: the names, comma-separated; names that cannot go in a
    header as they are (or past ``MAX_NAMES``) are counted instead."""
    shown = [name for name in names if SAFE_NAME.fullmatch(name)][:MAX_NAMES]
    others = len(names) - len(shown)
    return ", ".join([*shown, *([f"{others} more"] if others else [])])
