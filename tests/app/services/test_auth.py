"""API keys: parsing the Authorization header and mapping keys to tenants."""

from __future__ import annotations

import pytest

from app.errors import AuthenticationFailed
from app.services.auth import ApiKeys, tenant_of

KEYS = ApiKeys(["key-a", "key-b", ""])


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "key-a",
        "Basic key-a",
        "Token key-a",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearer key-c",
        "Bearer key-a-longer",
        "Bearer key-",
        "Bearer KEY-A",
        "Bearerkey-a",
    ],
)
def test_refused(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        KEYS.authenticate(header)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert caught.value.body()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer key-a", "key-a"),
        ("bearer key-b", "key-b"),
        ("BEARER key-a", "key-a"),
        ("Bearer  key-a ", "key-a"),
    ],
)
def test_accepted(header: str, key: str) -> None:
    assert KEYS.authenticate(header) == tenant_of(key)


def test_tenants_differ_per_key_and_are_stable() -> None:
    assert tenant_of("key-a") != tenant_of("key-b")
    assert tenant_of("key-a") == tenant_of("key-a")
    assert len(tenant_of("key-a")) == 16
    assert int(tenant_of("key-a"), 16) >= 0
    assert "key-a" not in tenant_of("key-a")


def test_empty_key_is_not_configured() -> None:
    assert not ApiKeys([""])
    assert KEYS
    with pytest.raises(AuthenticationFailed):
        ApiKeys([""]).authenticate("Bearer ")
