"""Signed, short-lived tokens that let a client which cannot send a key follow one job's
or one batch's events: a browser's ``EventSource`` sends no ``Authorization`` header.

A client with a key asks for a stream URL (``POST /v1/jobs/{id}/events/url``); the URL
carries ``?token=<expires>.<tenant>.<signature>``, an HMAC-SHA256 over the tenant, the
subject id and the expiry with a secret every API process shares. The token opens that
subject's event stream, for its tenant, until it expires: nothing else (not another
job, not a read of the job itself). Like a presigned URL, it is a bearer credential
for a narrow read; it never reveals the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

STREAM_TOKEN_TTL_S = 3600
"""How long a stream URL opens its stream (reconnects included): an hour, as
Replicate's stream URLs."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, tenant: str, subject: str, expires: int) -> bytes:
    message = b"editq stream\x00" + b"\x00".join(
        (tenant.encode(), subject.encode(), str(expires).encode())
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def issue_token(secret: bytes, tenant: str, subject: str, expires: int) -> str:
    """A token opening ``subject``'s events for ``tenant`` until ``expires`` (epoch s)."""
    signature = _signature(secret, tenant, subject, expires)
    return f"{expires}.{_b64(tenant.encode())}.{_b64(signature)}"


def token_tenant(secret: bytes, token: str, subject: str, now: float) -> str | None:
    """The tenant ``token`` was issued to, when it is genuine, for ``subject`` and not
    expired at ``now``; else None."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return None
    expires = int(parts[0])
    try:
        tenant = _unb64(parts[1]).decode()
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError):
        return None
    expected = _signature(secret, tenant, subject, expires)
    if not hmac.compare_digest(signature, expected) or expires <= now:
        return None
    return tenant
