"""The pure rules of uploaded files: ids, purposes, expiry and the public object."""

from __future__ import annotations

import pytest

from app.core.files import (
    EXPIRES_AFTER_MAX_S,
    EXPIRES_AFTER_MIN_S,
    FileRecord,
    check_purpose,
    expiry_of,
    is_file_id,
    new_file_id,
)
from app.errors import InvalidRequest


def test_file_ids_look_like_openais_and_sort_by_creation() -> None:
    first, second = new_file_id(1_000.0), new_file_id(1_000.001)
    assert is_file_id(first) and is_file_id(second)
    assert first.startswith("file-") and len(first) == 29
    assert first < second
    assert not is_file_id("file-../../x") and not is_file_id(first + ":log")


def test_openais_purposes_are_accepted_and_others_refused() -> None:
    assert check_purpose("vision") == "vision"
    assert check_purpose("user_data") == "user_data"
    for wrong in (None, "", "images"):
        with pytest.raises(InvalidRequest) as refused:
            check_purpose(wrong)
        assert refused.value.param == "purpose"


def test_expires_after_is_anchored_at_creation_within_openais_bounds() -> None:
    assert expiry_of(None, None, created_at=100) is None
    assert expiry_of("created_at", "3600", created_at=100) == 3700
    assert expiry_of("created_at", str(EXPIRES_AFTER_MAX_S), created_at=0) == EXPIRES_AFTER_MAX_S
    cases = [
        ("last_active_at", "3600", "expires_after[anchor]"),
        (None, "3600", "expires_after[anchor]"),
        ("created_at", None, "expires_after[seconds]"),
        ("created_at", "1e400", "expires_after[seconds]"),
        ("created_at", str(EXPIRES_AFTER_MIN_S - 1), "expires_after[seconds]"),
        ("created_at", str(EXPIRES_AFTER_MAX_S + 1), "expires_after[seconds]"),
    ]
    for anchor, seconds, param in cases:
        with pytest.raises(InvalidRequest) as refused:
            expiry_of(anchor, seconds, created_at=100)
        assert refused.value.param == param, (anchor, seconds)


def test_a_record_expires_at_its_time_and_shows_openais_file_object() -> None:
    record = FileRecord(
        id="file-0123456789abABCDEFGHIJKL",
        tenant="t",
        bytes=10,
        created_at=100,
        expires_at=200,
        filename="a.png",
        purpose="vision",
        sha256="0" * 64,
        content_type="image/png",
    )
    assert not record.expired(199.9) and record.expired(200)
    assert record.public() == {
        "id": "file-0123456789abABCDEFGHIJKL",
        "object": "file",
        "bytes": 10,
        "created_at": 100,
        "expires_at": 200,
        "filename": "a.png",
        "purpose": "vision",
        "status": "processed",
    }
