"""The secret stream URLs are signed with (``app.core.stream_tokens``): 32 random bytes
(kept as hex) the first API process to start writes to Redis and every later one reads,
so a URL one process issued opens the stream on any other."""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from app.store.keys import Keys

SECRET_BYTES = 32


async def shared_stream_secret(redis: Redis, keys: Keys) -> bytes:
    """The shared secret, created on first use (SET NX: two starting processes agree)."""
    await redis.set(keys.stream_secret, secrets.token_hex(SECRET_BYTES), nx=True)
    stored = await redis.get(keys.stream_secret)
    try:
        secret = bytes.fromhex(stored) if isinstance(stored, str) else b""
    except ValueError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise RuntimeError(f"{keys.stream_secret} does not hold a {SECRET_BYTES}-byte secret")
    return secret
