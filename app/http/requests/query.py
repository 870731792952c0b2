"""Query-string parameters shared by the handlers: bounded numbers and the status filter."""

from __future__ import annotations

from aiohttp import web

from app.core.jobs import JobStatus
from app.errors import InvalidRequest

MAX_PAGE = 100


def float_query(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    """The query parameter ``name`` as a number within [low, high] (``default`` when
    absent); InvalidRequest naming it otherwise (NaN and infinities included)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", param=name)
    return value


def parse_status(value: str | None) -> JobStatus | None:
    """The ``status`` query filter, or None; InvalidRequest for an unknown status."""
    if not value:
        return None
    try:
        return JobStatus(value)
    except ValueError:
        names = ", ".join(status.value for status in JobStatus)
        raise InvalidRequest(f"status must be one of {names}", param="status") from None
