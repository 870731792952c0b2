"""Cross-origin requests from the browser origins in ``EDITQ_CORS_ORIGINS`` (none by
default, so no browser page of another origin can call the API).

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed
origin is answered 204 before authentication, since browsers send it without the
key; every answer to an allowed origin then names it in ``Access-Control-Allow-Origin``
and exposes editq's headers to the page. Credentials travel in ``Authorization``,
never cookies, so ``Access-Control-Allow-Credentials`` is not sent.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from app.http.app_keys import SETTINGS

ANY_ORIGIN = "*"
ALLOWED_METHODS = "GET, POST, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Prefer, Last-Event-ID"
EXPOSED_HEADERS = ", ".join(
    (
        "x-request-id",
        "x-job-id",
        "Location",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "x-ratelimit-reset-requests",
        "Preference-Applied",
        "Idempotent-Replayed",
        "x-editq-ignored-params",
    )
)
MAX_AGE_S = 600


def allowed_origin(request: web.Request) -> str | None:
    """The request's ``Origin`` when the settings allow it, else None."""
    origin = request.headers.get("Origin")
    origins = request.app[SETTINGS].cors_origins
    if origin and (origin in origins or ANY_ORIGIN in origins):
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an allowed origin's preflight (204) before authentication runs."""
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if preflight and allowed_origin(request) is not None:
        requested = request.headers.get("Access-Control-Request-Headers")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                # The origin is trusted: let its page send what it asks to (the SDKs'
                # own x-stainless-* headers included).
                "Access-Control-Allow-Headers": requested or DEFAULT_ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S),
            },
        )
    return await handler(request)


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: let an allowed origin's page read the answer."""
    origin = allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
