"""Idempotency records in Redis: one hash per tenant and ``Idempotency-Key``.

One hash per record (``Keys.idempotency``: the key itself is stored hashed)::

    state (in_progress | done), owner (the claim's
                                    token), fingerprint; once done also status,
                                    headers (JSON), body (absent: answer from job_id),
                                    job_id

A request claims its key in one atomic step (set only if absent) for ``claim_ttl_s``,
which its holder renews while it runs, so a crashed API process frees the key within
one claim TTL. A finished record lives ``done_ttl_s`` (24 h). Only the claim's owner
can renew, finish or release it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from app.store.keys import Keys
from app.store.scripts import register

CLAIM_TTL_S = 120.0
DONE_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class StoredResponse:
    """What a finished request left for its retries: the response it sent (``body``),
    or, when ``body`` is None, the job (``job_id``) to answer from again."""

    status: int
    headers: dict[str, str]
    body: str | None
    job_id: str | None


@dataclass(frozen=True)
class Claim:
    """A key this request holds (``token`` proves it) until it finishes or releases it."""

    record_key: str
    token: str
    fingerprint: str


@dataclass(frozen=True)
class ExistingRecord:
    """Someone else's record for the key: still running (``response`` None) or done."""

    fingerprint: str
    response: StoredResponse | None


class IdempotencyStore:
    """Claims, renews, finishes and releases idempotency records (times in seconds)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        claim_ttl_s: float = CLAIM_TTL_S,
        done_ttl_s: float = DONE_TTL_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.claim_ttl_s = claim_ttl_s
        self._done_ttl_ms = int(done_ttl_s * 1000)
        self._claim_ttl_ms = int(claim_ttl_s * 1000)
        self._claim = register(redis, "idempotency_claim")
        self._renew = register(redis, "idempotency_renew")
        self._finish = register(redis, "idempotency_finish")
        self._release = register(redis, "idempotency_release")

    async def claim(self, tenant: str, key: str, fingerprint: str) -> Claim | ExistingRecord:
        """Take the key for a request with ``fingerprint``, or the record already there."""
        claim = Claim(self._keys.idempotency(tenant, key), uuid.uuid4().hex, fingerprint)
        reply = await cast(
            Awaitable[list[str]],
            self._claim(
                keys=[claim.record_key], args=[claim.token, fingerprint, self._claim_ttl_ms]
            ),
        )
        if not reply:
            return claim
        return _existing(dict(zip(reply[::2], reply[1::2], strict=True)))

    async def renew(self, claim: Claim) -> bool:
        """Extend the claim by its TTL; False once it is no longer this request's."""
        renewed = await cast(
            Awaitable[int],
            self._renew(keys=[claim.record_key], args=[claim.token, self._claim_ttl_ms]),
        )
        return bool(renewed)

    async def finish(self, claim: Claim, response: StoredResponse) -> bool:
        """Keep ``response`` for the key's retries; False if another request holds it."""
        fields: list[str | int] = [
            "fingerprint",
            claim.fingerprint,
            "status",
            response.status,
            "headers",
            json.dumps(response.headers),
        ]
        if response.body is not None:
            fields += ["body", response.body]
        if response.job_id is not None:
            fields += ["job_id", response.job_id]
        done = await cast(
            Awaitable[int],
            self._finish(keys=[claim.record_key], args=[claim.token, self._done_ttl_ms, *fields]),
        )
        return bool(done)

    async def release(self, claim: Claim) -> None:
        """Free the key: the request created nothing, so a retry may run afresh."""
        await cast(Awaitable[int], self._release(keys=[claim.record_key], args=[claim.token]))


def _existing(row: dict[str, str]) -> ExistingRecord:
    if row.get("state") != "done":
        return ExistingRecord(fingerprint=row.get("fingerprint", ""), response=None)
    response = StoredResponse(
        status=int(row["status"]),
        headers=json.loads(row.get("headers", "{}")),
        body=row.get("body"),
        job_id=row.get("job_id"),
    )
    return ExistingRecord(fingerprint=row["fingerprint"], response=response)
