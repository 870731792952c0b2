"""The jobs of synchronous edits sent without an ``Idempotency-Key``, by request.

One string per tenant and request fingerprint (``Keys.sync_call``) holds the id of the
job the last such request accepted, for ``window_s`` seconds. An SDK that timed out
on its side, or got a 5xx, sends the same request again marked as a retry
(``x-stainless-retry-count``); that retry finds the job here and waits on it instead
of accepting (and paying for) a second one.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.store.keys import Keys

WINDOW_S = 600.0


class SyncCallStore:
    """Remembers and finds the job of a synchronous edit by its request fingerprint."""

    def __init__(self, redis: Redis, keys: Keys, *, window_s: float = WINDOW_S) -> None:
        self._redis = redis
        self._keys = keys
        self._window_ms = max(1, int(window_s * 1000))

    async def remember(self, tenant: str, fingerprint: str, job_id: str) -> None:
        """Record ``job_id`` as the job of the tenant's request ``fingerprint``, for
        the window (replacing an earlier one: the latest request's job is found)."""
        await self._redis.set(self._keys.sync_call(tenant, fingerprint), job_id, px=self._window_ms)

    async def find(self, tenant: str, fingerprint: str) -> str | None:
        """The job the tenant's request ``fingerprint`` accepted within the window."""
        found = await self._redis.get(self._keys.sync_call(tenant, fingerprint))
        return None if found is None else str(found)
