"""The pure parts of the synchronous edit endpoints: default response format, error status."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.edit_params import parse_edit_params
from app.core.jobs import JobError
from app.core.submissions import Submission
from app.http.handlers.images_compat import failed_job_status, with_sync_defaults


def submission(**fields: Any) -> Submission:
    params = parse_edit_params({"model": "m/x", "prompt": "p", **fields}, max_prompt_chars=100)
    return Submission(params=params, images=[], mask=None)


def test_sync_requests_default_to_b64_json() -> None:
    assert submission().params.response_format == "url"  # the async API's default stays
    assert with_sync_defaults(submission()).params.response_format == "b64_json"


@pytest.mark.parametrize("chosen", ["url", "b64_json"])
def test_an_explicit_response_format_is_kept(chosen: str) -> None:
    assert with_sync_defaults(submission(response_format=chosen)).params.response_format == chosen


@pytest.mark.parametrize(
    ("error_type", "code", "status"),
    [
        ("upstream_error", "upstream_timeout", 504),
        ("upstream_error", "rate_limit_exceeded", 429),
        ("upstream_error", "model_capability_mismatch", 400),
        ("upstream_error", "invalid_request_error", 400),
        ("upstream_error", "insufficient_credits", 402),
        ("upstream_error", "upstream_error", 502),
        ("upstream_error", "upstream_auth_failed", 502),
        ("server_error", "service_unavailable", 503),
        ("server_error", "something_new", 500),
    ],
)
def test_failed_job_status(error_type: str, code: str, status: int) -> None:
    assert failed_job_status(JobError(type=error_type, code=code, message="m")) == status
