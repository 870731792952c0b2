"""Idempotency records in Redis: one hash per tenant and ``Idempotency-Key``.

One hash per record (``Keys.idempotency``: the key itself is stored hashed)::

    state (in_progress | done), owner (the claim's token), fingerprint,
    lease (ms, Redis time), resource (the job or batch id the request reserved);
    once done also status, headers (JSON), body (absent: answer from job_id), job_id

A request claims its key in one atomic step with a lease of ``lease_s``, which its
holder renews while it runs. Before it writes anything it reserves the id it will
create (``reserve``). If its API process dies, the lease lapses and the next request
with the same key and fingerprint takes the claim over and learns that id
(``Claim.resumed``), so it finishes or returns that job or batch instead of making a
second one. A record lives ``done_ttl_s`` (24 h) from its claim and again from its
answer. Only the claim's owner can renew, reserve, finish or release it.
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

LEASE_S = 15.0
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
    """A key this request holds (``token`` proves it) until it finishes or releases it.
    ``resumed`` is the id an earlier holder of the key reserved before it died."""

    record_key: str
    token: str
    fingerprint: str
    resumed: str | None = None


@dataclass(frozen=True)
class ExistingRecord:
    """Someone else's record for the key: still running (``response`` None, and
    ``resource`` the id it reserved, once it did) or done."""

    fingerprint: str
    response: StoredResponse | None
    resource: str | None = None


class IdempotencyStore:
    """Claims, renews, reserves, finishes and releases idempotency records (times in
    seconds)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        lease_s: float = LEASE_S,
        done_ttl_s: float = DONE_TTL_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.lease_s = lease_s
        self._done_ttl_ms = int(done_ttl_s * 1000)
        self._lease_ms = int(lease_s * 1000)
        self._claim = register(redis, "idempotency_claim")
        self._renew = register(redis, "idempotency_renew")
        self._reserve = register(redis, "idempotency_reserve")
        self._finish = register(redis, "idempotency_finish")
        self._release = register(redis, "idempotency_release")

    async def claim(self, tenant: str, key: str, fingerprint: str) -> Claim | ExistingRecord:
        """Take the key for a request with ``fingerprint`` (taking over one whose holder's
        lease lapsed: ``Claim.resumed`` then names what it reserved), or the record
        already there."""
        record_key, token = self._keys.idempotency(tenant, key), uuid.uuid4().hex
        reply = await cast(
            Awaitable[list[str]],
            self._claim(
                keys=[record_key],
                args=[token, fingerprint, self._lease_ms, self._done_ttl_ms],
            ),
        )
        if reply[0] == "claimed":
            return Claim(record_key, token, fingerprint, resumed=reply[1] or None)
        fields = reply[1:]
        return _existing(dict(zip(fields[::2], fields[1::2], strict=True)))

    async def renew(self, claim: Claim) -> bool:
        """Extend the claim's lease; False once it is no longer this request's."""
        renewed = await cast(
            Awaitable[int],
            self._renew(keys=[claim.record_key], args=[claim.token, self._lease_ms]),
        )
        return bool(renewed)

    async def reserve(self, claim: Claim, resource_id: str) -> bool:
        """Record the id this request is about to create; False once the claim is no
        longer this request's (then it must create nothing)."""
        reserved = await cast(
            Awaitable[int],
            self._reserve(keys=[claim.record_key], args=[claim.token, resource_id]),
        )
        return bool(reserved)

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
        """Give the key back after an error answer: freed when the request reserved
        nothing, else left for the next retry to take over and finish what it
        reserved."""
        await cast(Awaitable[int], self._release(keys=[claim.record_key], args=[claim.token]))


def _existing(row: dict[str, str]) -> ExistingRecord:
    if row.get("state") != "done":
        return ExistingRecord(
            fingerprint=row.get("fingerprint", ""),
            response=None,
            resource=row.get("resource") or None,
        )
    response = StoredResponse(
        status=int(row["status"]),
        headers=json.loads(row.get("headers", "{}")),
        body=row.get("body"),
        job_id=row.get("job_id"),
    )
    return ExistingRecord(fingerprint=row["fingerprint"], response=response)
