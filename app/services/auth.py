"""API keys: who is calling. A job belongs to the tenant of the key that created it.

The tenant id is a hash of the key, so keys are never stored or logged; keys are
compared in constant time against every configured key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from app.errors import AuthenticationFailed


def tenant_of(key: str) -> str:
    """The stable tenant id of an API key (16 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeys:
    """The configured keys; ``authenticate`` maps an Authorization header to a tenant."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [(key.encode(), tenant_of(key)) for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> str:
        """The tenant for ``Authorization: Bearer <key>``; AuthenticationFailed otherwise."""
        if not authorization:
            raise AuthenticationFailed("missing API key: send Authorization: Bearer <key>")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationFailed("Authorization must be 'Bearer <key>'")
        # A header byte that is not UTF-8 arrives as a surrogate: still just a wrong key.
        candidate = presented.strip().encode("utf-8", "surrogateescape")
        tenant = None
        for key, key_tenant in self._keys:
            if hmac.compare_digest(candidate, key):
                tenant = key_tenant
        if tenant is None:
            raise AuthenticationFailed("invalid API key")
        return tenant
