"""Webhook state in Redis: events, the delivery outbox, each job's delivery log,
signing secrets and receivers that said 410 Gone.

The keys are ``app.store.keys``'s. An event's hash holds subject (job or batch id),
type, tenant, state (pending | delivered | failed), attempts, created_at (ms) and
body (the JSON body, fixed at the first attempt). The outbox holds pending event ids
by due time (ms); a dispatcher moves a due event a lease ahead while it is being
delivered, so a crash only delays it. Each job (and batch) lists its event ids and
its delivery attempts; a URL that answered 410 is marked gone and sent nothing more.

Events are created in the same MULTI as the transition they report
(``webhook_event.lua``, run by ``app.store.jobs``).

A tenant's signing secret is derived from the configured root secret and the
tenant's rotation count (its generation), so nothing secret is stored; without a
root it is generated on first use and stored. A rotation hash per tenant holds the
generation, until when (ms) the secret a rotation replaced keeps signing, and, for a
generated secret, that replaced secret (``webhook_rotate_secret.lua``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel
from redis.asyncio import Redis

from app.core.webhooks import SigningSecrets, derived_secret, new_secret
from app.store.keys import Keys
from app.store.scripts import register

GONE_TTL_S = 30 * 24 * 3600


class DeliveryAttempt(BaseModel):
    """One POST of an event to its receiver."""

    event_id: str
    type: str
    attempt: int
    at: float
    url: str
    status_code: int | None = None
    duration_ms: int
    error: str | None = None
    outcome: str  # delivered | retrying | failed


@dataclass(frozen=True)
class WebhookEvent:
    """An event as stored."""

    id: str
    subject: str  # the job or batch the event is about
    type: str
    tenant: str
    state: str
    attempts: int
    created_at: float  # seconds
    body: str | None

    def summary(self, next_attempt_at: float | None) -> dict[str, Any]:
        """The event as the deliveries endpoint shows it."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": int(self.created_at),
            "next_attempt_at": None if next_attempt_at is None else int(next_attempt_at),
        }


class WebhookStore:
    """Reads and writes webhook state; see the module docstring for the layout."""

    def __init__(
        self, redis: Redis, keys: Keys, *, retention_s: int, root_secret: str | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._root_secret = root_secret
        self._retention_s = retention_s
        self._claim = register(redis, "webhook_claim_due")
        self._rotate = register(redis, "webhook_rotate_secret")

    @property
    def outbox_key(self) -> str:
        """The sorted set of pending event ids by due time."""
        return self._keys.webhook_outbox

    def _event_key(self, event_id: str) -> str:
        return self._keys.webhook_event(event_id)

    async def signing_secrets(self, tenant: str) -> SigningSecrets:
        """The tenant's signing secrets: derived from the configured root secret when
        there is one (``EDITQ_WEBHOOK_SECRET``), else generated and stored on first use."""
        rotation_key = self._keys.webhook_rotation(tenant)
        if self._root_secret is not None:
            generation, until = await cast(
                Awaitable[list[str | None]],
                self._redis.hmget(rotation_key, ["generation", "previous_until"]),
            )
            return self._derived(self._root_secret, tenant, int(generation or 0), until)
        secret_key = self._keys.webhook_secret(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(secret_key, new_secret(), nx=True)
            pipe.get(secret_key)
            pipe.hmget(rotation_key, ["previous", "previous_until"])
            _, current, (previous, until) = await pipe.execute()
        return SigningSecrets(str(current), previous, _seconds(until))

    async def rotate_secret(
        self, tenant: str, *, keep_previous_s: float, now: float | None = None
    ) -> SigningSecrets:
        """Give the tenant a new signing secret; the one it replaces keeps signing for
        ``keep_previous_s`` seconds from ``now`` (default: the present). Concurrent
        rotations each replace the secret the one before made. Returns the secrets
        after this rotation."""
        # Floored: a previous secret expired "at once" (0 s) is never shown as still in use.
        until_ms = int(((time.time() if now is None else now) + keep_previous_s) * 1000)
        fresh = new_secret() if self._root_secret is None else ""
        generation, replaced = await self._rotate(
            keys=[self._keys.webhook_secret(tenant), self._keys.webhook_rotation(tenant)],
            args=[fresh, until_ms],
        )
        if self._root_secret is not None:
            return self._derived(self._root_secret, tenant, int(generation), until_ms)
        return SigningSecrets(fresh, replaced, until_ms / 1000)

    @staticmethod
    def _derived(
        root: str, tenant: str, generation: int, until_ms: str | int | None
    ) -> SigningSecrets:
        if not generation:
            return SigningSecrets(derived_secret(root, tenant))
        return SigningSecrets(
            derived_secret(root, tenant, generation),
            derived_secret(root, tenant, generation - 1),
            _seconds(until_ms),
        )

    async def get(self, event_id: str) -> WebhookEvent | None:
        """The event, or None."""
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self._event_key(event_id)))
        if not row:
            return None
        return WebhookEvent(
            id=event_id,
            subject=row["subject"],
            type=row["type"],
            tenant=row["tenant"],
            state=row["state"],
            attempts=int(row.get("attempts", 0)),
            created_at=int(row["created_at"]) / 1000,
            body=row.get("body"),
        )

    async def events_of(self, subject: str) -> list[WebhookEvent]:
        """The events of a job or batch, oldest first."""
        ids = await cast(
            Awaitable[list[str]],
            self._redis.lrange(self._keys.webhook_events(subject), 0, -1),
        )
        events = [await self.get(event_id) for event_id in ids]
        return [event for event in events if event is not None]

    async def due_at(self, event_id: str) -> float | None:
        """When the event is next due (seconds), if it is pending."""
        score = await self._redis.zscore(self.outbox_key, event_id)
        return None if score is None else score / 1000

    async def claim_due(self, limit: int, lease_s: float) -> list[str]:
        """Take up to ``limit`` due events, moving each one lease ahead in the outbox."""
        now = int(time.time() * 1000)
        claimed = await self._claim(
            keys=[self.outbox_key], args=[now, now + int(lease_s * 1000), limit]
        )
        return [str(event_id) for event_id in claimed]

    async def keep_body(self, event_id: str, body: str) -> None:
        """Fix the body sent for every attempt of the event."""
        await cast(Awaitable[int], self._redis.hset(self._event_key(event_id), "body", body))

    async def record(
        self, event: WebhookEvent, attempt: DeliveryAttempt, next_due: float | None
    ) -> None:
        """Log an attempt and settle the event: delivered/failed, or due again at ``next_due``."""
        log_key = self._keys.deliveries(event.subject)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(log_key, attempt.model_dump_json())
            pipe.expire(log_key, self._retention_s)
            pipe.hset(
                self._event_key(event.id),
                mapping={
                    "attempts": attempt.attempt,
                    "state": "pending" if attempt.outcome == "retrying" else attempt.outcome,
                },
            )
            if next_due is None:
                pipe.zrem(self.outbox_key, event.id)
            else:
                pipe.zadd(self.outbox_key, {event.id: int(next_due * 1000)})
            await pipe.execute()

    async def deliveries(self, subject: str) -> list[DeliveryAttempt]:
        """Every delivery attempt of a job's (or batch's) events, oldest first."""
        rows = await cast(
            Awaitable[list[str]],
            self._redis.lrange(self._keys.deliveries(subject), 0, -1),
        )
        return [DeliveryAttempt.model_validate_json(row) for row in rows]

    async def redeliver(self, event: WebhookEvent, url: str) -> None:
        """Send the event again now, as a fresh series of attempts (same id and body)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._event_key(event.id), mapping={"state": "pending", "attempts": 0})
            pipe.expire(self._event_key(event.id), self._retention_s)
            pipe.delete(self._gone_key(event.tenant, url))
            pipe.zadd(self.outbox_key, {event.id: int(time.time() * 1000)})
            await pipe.execute()

    def _gone_key(self, tenant: str, url: str) -> str:
        return self._keys.webhook_gone(tenant, url)

    async def mark_gone(self, tenant: str, url: str) -> None:
        """Remember that ``url`` answered 410 Gone."""
        await self._redis.set(
            self._gone_key(tenant, url), json.dumps({"at": time.time()}), ex=GONE_TTL_S
        )

    async def is_gone(self, tenant: str, url: str) -> bool:
        """True if ``url`` answered 410 Gone (and no one redelivered to it since)."""
        return bool(await self._redis.exists(self._gone_key(tenant, url)))


def _seconds(ms: str | int | None) -> float | None:
    """A stored time in ms as seconds; None stays None."""
    return None if ms is None else int(ms) / 1000
