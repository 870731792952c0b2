"""Request ids, authentication, per-key rate limits, and the one place exceptions become
error responses (``ERRORS``, the registry of translations for exceptions that are not
already an ``app.errors.EditqError``)."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import (
    BadHttpMessage,
    ContentEncodingError,
    DecompressSizeError,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestPayloadError
from redis.exceptions import RedisError

from app.core.stream_tokens import token_tenant
from app.errors import (
    AuthenticationFailed,
    EditqError,
    ErrorRegistry,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.http.app_keys import API_KEYS, FAILED_LOGINS, RATE_LIMITER, SETTINGS, STREAM_SECRET
from app.obs.logs import bind_log_fields, reset_log_fields
from app.store.rate_limits import RateWindow

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routes (by their path template) that need no key; the dashboard's page asks for one.
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/ui", "/ui/{name}"}
)
UNCOUNTED_PATHS = frozenset({"/metrics"})
# Routes a stream URL's ``?token=`` opens without a key (``app.core.stream_tokens``).
STREAM_PATHS = frozenset({"/v1/jobs/{job_id}/events", "/v1/batches/{batch_id}/events"})
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TENANT = web.RequestKey("tenant", str)
REQUEST_ID = web.RequestKey("request_id", str)
RATE_WINDOW = web.RequestKey("rate_window", RateWindow)


def error_response(error: EditqError, request_id: str) -> web.Response:
    """The OpenAI-style JSON error response for ``error``."""
    headers = {"x-request-id": request_id, **error.headers()}
    return web.json_response(error.body(), status=error.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> EditqError:
    """aiohttp's own refusals (no route, wrong method, body too large) as our errors."""
    if exc.status == 404:
        return NotFound("no such endpoint")
    if exc.status == 413:
        return PayloadTooLarge("request body is too large")
    if exc.status == 415:
        return UnsupportedMediaType(exc.reason)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"{exc.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}",
            allowed=exc.allowed_methods,
        )
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.text or exc.reason)
    return EditqError(exc.reason)


def _unreadable_body(exc: BadHttpMessage) -> EditqError:
    return InvalidRequest(f"the request body could not be read: {exc.message}")


def _undecodable_body(exc: ContentEncodingError) -> EditqError:
    return InvalidRequest(
        "the request body does not decode as its Content-Encoding says",
        code="invalid_content_encoding",
    )


def _inflates_too_far(exc: DecompressSizeError) -> EditqError:
    return PayloadTooLarge("the request body inflates past the size limit")


def _payload_error(exc: RequestPayloadError) -> EditqError:
    """aiohttp wraps what went wrong reading the body (its decoder's error) in this."""
    cause = exc.__cause__
    if isinstance(cause, DecompressSizeError):
        return _inflates_too_far(cause)
    if isinstance(cause, ContentEncodingError):
        return _undecodable_body(cause)
    return InvalidRequest(f"the request body could not be read: {exc}")


def decodable_encodings() -> frozenset[str]:
    """The request Content-Encodings aiohttp can decode here."""
    names = {"identity", "gzip", "deflate", "x-gzip"}
    if HAS_BROTLI:
        names.add("br")
    if HAS_ZSTD:
        names.add("zstd")
    return frozenset(names)


def _refuse_unknown_encoding(request: web.Request) -> None:
    header = request.headers.get("Content-Encoding")
    if not header:
        return
    unknown = [
        coding.strip()
        for coding in header.lower().split(",")
        if coding.strip() not in decodable_encodings()
    ]
    if unknown:
        raise _unsupported_encoding(", ".join(unknown))


def _unsupported_encoding(named: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"Content-Encoding {named} is not supported; send "
        f"{', '.join(sorted(decodable_encodings() - {'identity', 'x-gzip'}))} or none"
    )


PARSE_ERROR_MESSAGE_CHARS = 200
# aiohttp names an encoding it cannot decode like this: "... brotli (br). Please ...".
_NAMED_ENCODING = re.compile(r"\((?P<name>[\w-]+)\)")


def parse_error(exc: BaseException | None) -> EditqError:
    """What aiohttp's own HTTP parser refused (before any handler or middleware ran),
    as our error: a body in an encoding that cannot be decoded here is 415, anything
    else it could not parse 400; anything that is no parser error, 500.

    aiohttp's message is kept to its first line (the rest points into the request's
    bytes) and to ``PARSE_ERROR_MESSAGE_CHARS``.
    """
    if isinstance(exc, ContentEncodingError):
        # At parse time only an encoding without its library here (br, zstd) fails.
        named = _NAMED_ENCODING.search(exc.message)
        return _unsupported_encoding(named["name"] if named else "of this request")
    if isinstance(exc, LineTooLong):  # its message quotes the line
        return InvalidRequest(f"a line of the request's head is longer than {exc.args[1]} bytes")
    if isinstance(exc, HttpProcessingError):
        first_line = exc.message.strip().split("\n", 1)[0].rstrip(":")
        reason = first_line[:PARSE_ERROR_MESSAGE_CHARS] or "it could not be parsed"
        return InvalidRequest(f"the request is not valid HTTP/1.1: {reason}")
    return EditqError("internal error")


def _store_unavailable(exc: BaseException) -> EditqError:
    log.warning("redis unavailable: %s", exc)
    return ServiceUnavailable("the job store is unavailable; try again", retry_after=5)


ERRORS = ErrorRegistry()
"""How every exception a handler may raise is answered (looked up along its MRO)."""
ERRORS.register(web.HTTPException, _from_http_exception)
ERRORS.register(RequestPayloadError, _payload_error)
ERRORS.register(BadHttpMessage, _unreadable_body)
ERRORS.register(ContentEncodingError, _undecodable_body)
ERRORS.register(DecompressSizeError, _inflates_too_far)
ERRORS.register(RedisError, _store_unavailable)
ERRORS.register(ConnectionError, _store_unavailable)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every response an ``x-request-id`` and turn every failure into an error body."""
    presented = request.headers.get("x-request-id", "")
    request_id = presented if CLIENT_REQUEST_ID.match(presented) else str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    try:
        _refuse_unknown_encoding(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(_translated(exc, request_id), request_id)
        exc.headers["x-request-id"] = request_id  # a redirect passes through
        raise
    except Exception as exc:
        error = _translated(exc, request_id)
        if isinstance(error, RequestTimeout):
            return await _answer_and_close(request, error_response(error, request_id))
        return error_response(error, request_id)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


def _translated(exc: Exception, request_id: str) -> EditqError:
    error = ERRORS.translate(exc)
    if error is None:
        log.exception("unhandled error", extra={"request_id": request_id})
        return EditqError("internal error")
    return error


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` now, then drop the connection instead of reading the rest of a
    body the client is not sending (aiohttp would otherwise linger to drain it)."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but health, readiness, docs and the dashboard's files (and /metrics if
    made public) needs a key."""
    resource = request.match_info.route.resource
    public = (resource is not None and resource.canonical in PUBLIC_PATHS) or (
        request.path == "/metrics" and request.app[SETTINGS].metrics_public
    )
    if not public:
        request[TENANT] = _stream_token_tenant(request) or await _authenticate(request)
    return await handler(request)


def _stream_token_tenant(request: web.Request) -> str | None:
    """The tenant of a stream URL's token, on the event streams only; None without one.
    A token that is forged, expired or for another subject is a 401."""
    token = request.query.get("token")
    resource = request.match_info.route.resource
    if not token or resource is None or resource.canonical not in STREAM_PATHS:
        return None
    (subject,) = request.match_info.values()
    tenant = token_tenant(request.app[STREAM_SECRET], token, subject, time.time())
    if tenant is None:
        raise AuthenticationFailed(
            "this stream URL has expired or is not for this stream; ask for a new one",
            param="token",
        )
    return tenant


async def _authenticate(request: web.Request) -> str:
    """The caller's tenant; an address that failed too often is refused (429) first."""
    failures, address = request.app[FAILED_LOGINS], request.remote or ""
    wait = await failures.blocked_for(address)
    if wait is not None:
        raise RateLimited(
            f"too many failed authentications from this address; try again in {math.ceil(wait)} s",
            retry_after=wait,
        )
    try:
        return request.app[API_KEYS].authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed:
        await failures.record(address)
        raise


@web.middleware
async def log_fields_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag every line the handler logs with the request id and the caller's tenant."""
    fields = {"request_id": request[REQUEST_ID]}
    if TENANT in request:
        fields["tenant"] = request[TENANT]
    token = bind_log_fields(**fields)
    try:
        return await handler(request)
    finally:
        reset_log_fields(token)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every authenticated request against its key's limit; 429 once over it.
    Metrics scrapes do not count: a scraper must not spend a client's quota."""
    tenant = request.get(TENANT)
    if tenant is None or request.path in UNCOUNTED_PATHS:
        return await handler(request)
    window = await request.app[RATE_LIMITER].hit(tenant)
    if window is not None:
        request[RATE_WINDOW] = window
        if window.exceeded:
            raise RateLimited(
                f"more than {window.limit} requests a minute with this API key; "
                f"try again in {math.ceil(window.reset_s)} s",
                retry_after=window.reset_s,
            )
    return await handler(request)


async def rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the key's ``X-RateLimit-*`` on every authenticated response."""
    window = request.get(RATE_WINDOW)
    if window is not None:
        response.headers.update(window.headers())
