"""The one exception tree of editq, each class carrying its HTTP status and error code.

::

    EditqError                      500 server_error / internal_error
    ├── InvalidRequest              400 invalid_request_error (names the ``param``)
    │   ├── ModelNotFound           400 model_not_found: no such model is configured
    │   └── ModelCapabilityMismatch 400 model_capability_mismatch: it exists, cannot edit
    ├── AuthenticationFailed        401 invalid_api_key
    ├── NotFound                    404 not_found
    ├── MethodNotAllowed            405 method_not_allowed (``Allow`` names the methods)
    ├── RequestTimeout              408 request_timeout: the body did not arrive in time
    ├── Conflict                    409 conflict
    │   └── IdempotencyKeyInUse     409 idempotency_key_in_use: the key's first request runs
    ├── IdempotencyKeyReused        422 idempotency_key_reused: the key came with another request
    ├── PayloadTooLarge             413 payload_too_large
    ├── UnsupportedMediaType        415 unsupported_media_type
    ├── RateLimited                 429 rate_limit_exceeded (``retry_after`` seconds)
    ├── ServiceUnavailable          503 service_unavailable (``retry_after`` seconds)
    ├── SyncWaitExceeded            504 sync_wait_exceeded: a synchronous edit outlived its wait
    └── UpstreamError               502 upstream_error: an upstream call failed
        ├── UpstreamTimeout         504 upstream_timeout: no answer within the call's time
        ├── UpstreamRateLimited     429 rate_limit_exceeded (``retry_after`` from the upstream)
        ├── UpstreamRejected        400 the upstream refused the request (its code)
        │   ├── InsufficientCredits 402 insufficient_credits: the upstream's quota is spent
        │   └── UnsupportedPrompt   400 unsupported_prompt: the local editor knows no word of it
        └── UpstreamBadResponse     502 upstream_error: an answer that is not an image response

Each class's ``status`` and ``default_code`` are the only mapping from errors to HTTP:
``status_for_code`` answers a stored job error (``type``/``code``) from the same tree,
and ``ErrorRegistry`` (Starlette-style, looked up along the exception's MRO) turns
foreign exceptions (aiohttp's, Redis's) into one of these; the HTTP edge registers
those translations (``app.http.middleware.errors``) and renders every error as the
OpenAI body ``{"error": {"message", "type", "code", "param"}}``. A job that fails
records the same ``type``/``code``/``message`` in its ``error`` field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

E = TypeVar("E", bound=BaseException)

NO_RETRY_HEADERS = {"x-should-retry": "false"}
"""On an answer a retry would only repeat: the OpenAI SDKs then do not retry it."""


class EditqError(Exception):
    """Base of every error editq reports; unexpected failures map to a 500."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body for an HTTP response."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` where a wait is known)."""
        return {}


class InvalidRequest(EditqError):
    """The request is malformed or a parameter is out of range; ``param`` names it."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request_error"


class ModelNotFound(InvalidRequest):
    """The request names a model that is not configured (a 400, as the request is wrong,
    with OpenAI's ``model_not_found`` code)."""

    default_code = "model_not_found"


class ModelCapabilityMismatch(InvalidRequest):
    """The model is configured but cannot do what the request asks (edit images)."""

    default_code = "model_capability_mismatch"


class AuthenticationFailed(EditqError):
    """No API key, or one that is not configured."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(EditqError):
    """No such resource for this API key (another key's resources are not found either)."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class RequestTimeout(EditqError):
    """The client did not send its whole request body in time (a stalled or slow-loris
    upload); the connection is closed after the answer."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class MethodNotAllowed(EditqError):
    """The route exists but not with this method; ``Allow`` lists the ones it takes."""

    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.allowed = tuple(sorted(allowed))

    def headers(self) -> dict[str, str]:
        """``Allow``: the methods the route takes."""
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class Conflict(EditqError):
    """The resource is in a state that does not allow the operation."""

    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class IdempotencyKeyInUse(Conflict):
    """A request with the same ``Idempotency-Key`` is still being processed."""

    default_code = "idempotency_key_in_use"


class IdempotencyKeyReused(EditqError):
    """The ``Idempotency-Key`` was first used with a different request."""

    status = 422
    type = "invalid_request_error"
    default_code = "idempotency_key_reused"


class PayloadTooLarge(EditqError):
    """The body, or one file in it, is over its size limit."""

    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaType(EditqError):
    """A content type the endpoint does not accept, or a file that is not png/jpeg/webp."""

    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class _WithRetryAfter(EditqError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class RateLimited(_WithRetryAfter):
    """Too many requests for this API key."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(_WithRetryAfter):
    """A dependency (Redis, S3) is unreachable; nothing was accepted."""

    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class SyncWaitExceeded(EditqError):
    """A synchronous edit endpoint stopped waiting; the job goes on and can be polled.
    A retry would wait on the same job again, so clients are told not to."""

    status = 504
    type = "server_error"
    default_code = "sync_wait_exceeded"

    def headers(self) -> dict[str, str]:
        """``x-should-retry: false``, which the OpenAI SDKs obey."""
        return dict(NO_RETRY_HEADERS)


class UpstreamError(_WithRetryAfter):
    """An upstream call failed; ``upstream_status`` is its HTTP status when it answered."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the call's time limit."""

    status = 504
    default_code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; ``retry_after`` is its wait in seconds, if it gave one."""

    status = 429
    default_code = "rate_limit_exceeded"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (a 4xx other than 429); retrying will not help."""

    status = 400


class UpstreamBadResponse(UpstreamError):
    """The upstream answered 2xx with a body that is not a usable image response."""


class UnsupportedPrompt(UpstreamRejected):
    """The built-in local editor found no word it knows in the prompt, so it has nothing
    to do; the message lists the words it knows."""

    default_code = "unsupported_prompt"


class ContentFiltered(UpstreamRejected):
    """The upstream's moderation refused the input or its own output. Final: the same
    request is neither retried nor sent to a fallback model."""

    default_code = "content_filtered"


class InsufficientCredits(UpstreamRejected):
    """The upstream refused the call because the account's credits or quota are spent."""

    status = 402
    default_code = "insufficient_credits"


def _codes() -> dict[str, int]:
    """Each code a class of the tree defines itself, with that class's status."""
    found: dict[str, int] = {}
    pending: list[type[EditqError]] = [EditqError]
    while pending:
        cls = pending.pop()
        if "default_code" in vars(cls):
            found.setdefault(cls.default_code, cls.status)
        pending.extend(cls.__subclasses__())
    return found


def status_for_code(code: str, error_type: str) -> int:
    """The HTTP status of a recorded error: that of the class defining ``code``, else 502
    for an upstream's error, else 500."""
    status = _codes().get(code)
    if status is not None:
        return status
    return UpstreamError.status if error_type == UpstreamError.type else EditqError.status


class ErrorRegistry:
    """Exception classes to translations into ``EditqError``, found along the MRO.

    An ``EditqError`` translates to itself; other classes must be registered.
    """

    def __init__(self) -> None:
        self._translations: dict[type[BaseException], Callable[[Any], EditqError]] = {}

    def register(self, cls: type[E], translate: Callable[[E], EditqError]) -> None:
        """Translate ``cls`` (and its subclasses without a closer entry) with ``translate``."""
        self._translations[cls] = translate

    def translate(self, exc: BaseException) -> EditqError | None:
        """The error ``exc`` is answered with, or None when nothing is registered for it."""
        if isinstance(exc, EditqError):
            return exc
        for cls in type(exc).__mro__:
            translate = self._translations.get(cls)
            if translate is not None:
                return translate(exc)
        return None
