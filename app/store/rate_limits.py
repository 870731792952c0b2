"""Per-API-key request limits: a fixed one-minute window counted in Redis.

A key's window opens with its first request and lasts ``WINDOW_S``; one Lua script
counts the request and reads the time left atomically, so every API process shares
the count (``Keys.rate_limit``). Requests over the limit are counted too, but
never stretch the window. When Redis cannot be reached the limiter lets requests
through and logs once per outage: the job store answers 503 where it matters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.store.keys import Keys
from app.store.scripts import register

log = logging.getLogger(__name__)

WINDOW_S = 60


@dataclass(frozen=True)
class RateWindow:
    """One key's current window once a request was counted in it."""

    limit: int
    count: int
    reset_s: float
    """Seconds until the window closes and the count starts again."""

    @property
    def remaining(self) -> int:
        """Requests the key may still make in this window."""
        return max(0, self.limit - self.count)

    @property
    def exceeded(self) -> bool:
        """True when the request just counted was over the limit."""
        return self.count > self.limit

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and, as OpenAI spells it,
        ``x-ratelimit-reset-requests`` (whole seconds until the window closes, ``12s``)."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "x-ratelimit-reset-requests": f"{max(1, math.ceil(self.reset_s))}s",
        }


class RateLimiter:
    """Counts each tenant's requests against ``per_minute``; see the module docstring."""

    def __init__(self, redis: Redis, keys: Keys, *, per_minute: int) -> None:
        self._keys = keys
        self._limit = per_minute
        self._count = register(redis, "count_in_window")
        self._unavailable = False

    async def hit(self, tenant: str) -> RateWindow | None:
        """Count one request of ``tenant``; None when Redis cannot be reached (fail open)."""
        try:
            count, ttl_ms = await self._count(
                keys=[self._keys.rate_limit(tenant)], args=[WINDOW_S * 1000]
            )
        except (RedisError, OSError) as exc:
            if not self._unavailable:
                log.warning("rate limits are not enforced while Redis is unreachable: %s", exc)
                self._unavailable = True
            return None
        if self._unavailable:
            log.info("rate limits are enforced again")
            self._unavailable = False
        return RateWindow(limit=self._limit, count=int(count), reset_s=int(ttl_ms) / 1000)


class FailedLogins:
    """Failed authentications per client address, in one-minute windows shared by every
    API process: once an address has failed ``per_minute`` times, it is refused until
    its window ends, whatever key it presents. Other addresses, a valid key's other
    clients included, are not affected. Fails open when Redis cannot be reached."""

    def __init__(self, redis: Redis, keys: Keys, *, per_minute: int) -> None:
        self._redis = redis
        self._keys = keys
        self._limit = per_minute
        self._count = register(redis, "count_in_window")

    async def blocked_for(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        key = self._keys.auth_failures(address)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                count, ttl_ms = await pipe.execute()
        except (RedisError, OSError):
            return None
        if count is None or int(count) < self._limit:
            return None
        return max(int(ttl_ms), 0) / 1000 or WINDOW_S

    async def record(self, address: str) -> None:
        """Count one failed authentication of ``address``."""
        try:
            await self._count(keys=[self._keys.auth_failures(address)], args=[WINDOW_S * 1000])
        except (RedisError, OSError) as exc:
            log.warning("a failed login was not counted (Redis unreachable): %s", exc)
