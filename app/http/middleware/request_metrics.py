"""Counting every API request in ``editq_http_requests`` and its latency, by the
route's template (``app.obs.metrics`` owns the metrics)."""

from __future__ import annotations

import time

from aiohttp import web

from app.http.app_keys import METRICS
from app.http.middleware.errors import Handler


@web.middleware
async def request_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: it sees the final status of every answer, errors included. A handler
    that raises past ``errors_middleware`` (a redirect, a dropped connection) is
    counted with the status it carries, or 500."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        request.app[METRICS].http_request(request.method, route, status, time.monotonic() - started)
