"""Request ids, authentication and the one mapping from exceptions to error bodies."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from app.app_keys import API_KEYS
from app.errors import (
    EditqError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json"})
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TENANT = web.RequestKey("tenant", str)
REQUEST_ID = web.RequestKey("request_id", str)


def error_response(error: EditqError, request_id: str) -> web.Response:
    """The OpenAI-style JSON error response for ``error``."""
    headers = {"x-request-id": request_id, **error.headers()}
    return web.json_response(error.body(), status=error.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> EditqError:
    if exc.status == 404:
        return NotFound("no such endpoint")
    if exc.status == 413:
        return PayloadTooLarge("request body is too large")
    if exc.status == 415:
        return UnsupportedMediaType(exc.reason)
    if exc.status == 405:
        return InvalidRequest(f"method not allowed: {exc.reason}", code="method_not_allowed")
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.text or exc.reason)
    return EditqError(exc.reason)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every response an ``x-request-id`` and turn every failure into an error body."""
    presented = request.headers.get("x-request-id", "")
    request_id = presented if CLIENT_REQUEST_ID.match(presented) else str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except EditqError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["x-request-id"] = request_id
            raise
        return error_response(_from_http_exception(exc), request_id)
    except (RedisError, ConnectionError) as exc:
        log.warning("redis unavailable for request %s: %s", request_id, exc)
        return error_response(
            ServiceUnavailable("the job store is unavailable; try again", retry_after=5),
            request_id,
        )
    except Exception:
        log.exception("unhandled error for request %s", request_id)
        return error_response(EditqError("internal error"), request_id)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but health, readiness and docs needs a valid Bearer key."""
    if request.path not in PUBLIC_PATHS:
        request[TENANT] = request.app[API_KEYS].authenticate(request.headers.get("Authorization"))
    return await handler(request)
