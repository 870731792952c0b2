"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from app.errors import EditqError, ServiceUnavailable
from app.http.app_keys import JOB_STORE, STORAGE
from app.http.openapi import Reply, operation
from app.http.schema import Health, NotReadyBody, Readiness

PROBE_TIMEOUT_S = 2.0


@operation("Liveness", tags=("health",), replies={200: Health})
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up."""
    return web.json_response({"status": "ok"})


@operation(
    "Readiness",
    tags=("health",),
    replies={200: Readiness, 503: Reply(NotReadyBody, headers=("Retry-After",))},
)
async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: Redis and object storage answer; 503 naming what does not."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[JOB_STORE].ping(), PROBE_TIMEOUT_S)
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = f"unavailable: {exc or type(exc).__name__}"
    try:
        await asyncio.wait_for(request.app[STORAGE].ping(), PROBE_TIMEOUT_S)
        checks["s3"] = "ok"
    except (EditqError, OSError, TimeoutError) as exc:
        checks["s3"] = f"unavailable: {exc or type(exc).__name__}"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        error = ServiceUnavailable(f"not ready: {', '.join(failing)} unavailable", retry_after=5)
        body = error.body()
        body["checks"] = checks
        return web.json_response(body, status=503, headers=error.headers())
    return web.json_response({"status": "ready", "checks": checks})
