"""The exception tree: each class's status, type, code, body and headers."""

from __future__ import annotations

import pytest

from app import errors
from app.errors import (
    AuthenticationFailed,
    Conflict,
    EditqError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidRequest,
    ModelCapabilityMismatch,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    UnsupportedPrompt,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)


@pytest.mark.parametrize(
    ("cls", "status", "error_type", "code"),
    [
        (EditqError, 500, "server_error", "internal_error"),
        (InvalidRequest, 400, "invalid_request_error", "invalid_request_error"),
        (ModelCapabilityMismatch, 400, "invalid_request_error", "model_capability_mismatch"),
        (ModelNotFound, 400, "invalid_request_error", "model_not_found"),
        (AuthenticationFailed, 401, "authentication_error", "invalid_api_key"),
        (NotFound, 404, "invalid_request_error", "not_found"),
        (Conflict, 409, "invalid_request_error", "conflict"),
        (IdempotencyKeyInUse, 409, "invalid_request_error", "idempotency_key_in_use"),
        (IdempotencyKeyReused, 422, "invalid_request_error", "idempotency_key_reused"),
        (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
        (UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
        (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
        (ServiceUnavailable, 503, "server_error", "service_unavailable"),
        (UpstreamError, 502, "upstream_error", "upstream_error"),
        (UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
        (UpstreamRateLimited, 429, "upstream_error", "rate_limit_exceeded"),
        (UpstreamRejected, 400, "upstream_error", "upstream_error"),
        (UnsupportedPrompt, 400, "upstream_error", "unsupported_prompt"),
        (UpstreamBadResponse, 502, "upstream_error", "upstream_error"),
    ],
)
def test_class_table(cls: type[EditqError], status: int, error_type: str, code: str) -> None:
    error = cls("it went wrong")
    assert (error.status, error.type, error.code) == (status, error_type, code)
    assert error.body() == {
        "error": {"message": "it went wrong", "type": error_type, "code": code, "param": None}
    }
    assert str(error) == "it went wrong"
    assert error.headers() == {}
    assert isinstance(error, EditqError)


@pytest.mark.parametrize("cls", [InvalidRequest, NotFound, PayloadTooLarge, RateLimited])
def test_param_and_code_in_body(cls: type[InvalidRequest]) -> None:
    error = cls("bad n", param="n", code="custom_code")
    assert error.body()["error"] == {
        "message": "bad n",
        "type": cls.type,
        "code": "custom_code",
        "param": "n",
    }


def test_tree() -> None:
    assert issubclass(ModelCapabilityMismatch, InvalidRequest)
    for cls in (UpstreamTimeout, UpstreamRateLimited, UpstreamRejected, UpstreamBadResponse):
        assert issubclass(cls, UpstreamError)
    assert not issubclass(RateLimited, UpstreamError)


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (0.2, "1"),
        (0.0, "1"),
        (1.0, "1"),
        (2.6, "3"),
        (30, "30"),
        (1.4, "2"),
        (2.5, "3"),
    ],
)
@pytest.mark.parametrize("cls", [RateLimited, ServiceUnavailable, UpstreamRateLimited])
def test_retry_after_header(cls: type[RateLimited], retry_after: float, header: str) -> None:
    error = cls("wait", retry_after=retry_after)
    assert error.headers() == {"Retry-After": header}
    assert error.retry_after == retry_after


def test_upstream_rate_limited_carries_upstream_facts() -> None:
    error = UpstreamRateLimited("slow down", upstream_status=429, retry_after=7.5)
    assert (error.upstream_status, error.retry_after, error.status) == (429, 7.5, 429)
    assert error.headers() == {"Retry-After": "8"}
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    rejected = UpstreamRejected("no", upstream_status=422, code="content_policy_violation")
    assert (rejected.upstream_status, rejected.code, rejected.retry_after) == (
        422,
        "content_policy_violation",
        None,
    )
    assert UpstreamError("down").upstream_status is None


def test_every_code_of_the_tree_answers_with_its_class_status() -> None:
    def classes(root: type[errors.EditqError]) -> list[type[errors.EditqError]]:
        return [root, *(c for sub in root.__subclasses__() for c in classes(sub))]

    owners = [cls for cls in classes(errors.EditqError) if "default_code" in vars(cls)]
    assert errors.InsufficientCredits in owners
    for cls in owners:
        assert errors.status_for_code(cls.default_code, cls.type) == cls.status, cls


@pytest.mark.parametrize(
    ("code", "error_type", "status"),
    [
        ("insufficient_credits", "upstream_error", 402),
        ("upstream_auth_failed", "upstream_error", 502),  # an upstream's code we do not own
        ("something_new", "server_error", 500),
        ("payload_too_large", "invalid_request_error", 413),
    ],
)
def test_a_recorded_error_is_answered_by_code_then_type(
    code: str, error_type: str, status: int
) -> None:
    assert errors.status_for_code(code, error_type) == status


def test_the_registry_translates_along_the_mro() -> None:
    class StoreDown(ConnectionError):
        pass

    registry = errors.ErrorRegistry()
    registry.register(OSError, lambda exc: errors.ServiceUnavailable(f"os: {exc}"))
    registry.register(ConnectionError, lambda exc: errors.ServiceUnavailable(f"conn: {exc}"))
    own = errors.NotFound("nope")
    assert registry.translate(own) is own
    translated = registry.translate(StoreDown("x"))
    assert translated is not None and translated.message == "conn: x"
    file_error = registry.translate(FileNotFoundError("f"))
    assert file_error is not None and file_error.message == "os: f"
    assert registry.translate(KeyError("k")) is None
