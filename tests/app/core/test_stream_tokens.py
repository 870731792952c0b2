"""Signed stream tokens: they open one subject's events, for one tenant, until they expire."""

from __future__ import annotations

import pytest

from app.core.stream_tokens import issue_token, token_tenant

SECRET = b"s" * 32
NOW = 1_800_000_000


def test_a_token_names_its_tenant_for_its_subject() -> None:
    token = issue_token(SECRET, "tenant-a", "job_1", NOW + 60)
    assert token_tenant(SECRET, token, "job_1", NOW) == "tenant-a"


@pytest.mark.parametrize(
    ("secret", "subject", "now"),
    [
        (SECRET, "job_2", NOW),  # another job
        (b"t" * 32, "job_1", NOW),  # another deployment's secret
        (SECRET, "job_1", NOW + 60),  # expired exactly then
    ],
)
def test_a_token_opens_nothing_else(secret: bytes, subject: str, now: int) -> None:
    token = issue_token(SECRET, "tenant-a", "job_1", NOW + 60)
    assert token_tenant(secret, token, subject, now) is None


def test_changing_the_tenant_or_the_expiry_breaks_the_signature() -> None:
    expires, tenant, signature = issue_token(SECRET, "tenant-a", "job_1", NOW + 60).split(".")
    other_tenant = issue_token(SECRET, "tenant-b", "job_1", NOW + 60).split(".")[1]
    assert token_tenant(SECRET, f"{expires}.{other_tenant}.{signature}", "job_1", NOW) is None
    later = str(int(expires) + 3600)
    assert token_tenant(SECRET, f"{later}.{tenant}.{signature}", "job_1", NOW) is None


@pytest.mark.parametrize(
    "token", ["", "x", "1.2", "a.b.c", "99999999999999.YQ.YQ", "1800000060.%%%.YQ", "1.2.3.4"]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert token_tenant(SECRET, token, "job_1", NOW) is None
