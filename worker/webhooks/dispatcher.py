"""Turning due webhook events into delivery tasks.

Every worker runs one dispatcher. It wakes on every job event (a transition may
just have put an event in the outbox) and at least once a second (retries come
due), claims due events — moving each a lease ahead in the outbox, so a worker
that dies mid-delivery only delays it — and enqueues one ``deliver_webhook`` arq
task per event. Deliveries never run inside an edit task.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError

from app.background import Supervised
from app.dispatch import EditQueue
from app.store.events import JobEvent, JobEventHub
from app.store.webhooks import WebhookStore

CLAIM_BATCH = 100
IDLE_WAKE_S = 1.0


class WebhookDispatcher:
    """Claims due events and enqueues their deliveries."""

    def __init__(
        self,
        store: WebhookStore,
        queue: EditQueue,
        events: JobEventHub,
        *,
        lease_s: float,
    ) -> None:
        self._store = store
        self._queue = queue
        self._lease_s = lease_s
        self._poke = asyncio.Event()
        self._loop = Supervised(
            "webhook-dispatcher",
            self._wake_and_dispatch,
            every_s=None,
            errors=(RedisError, OSError),
        )
        events.observe(self._on_job_event)

    def start(self) -> None:
        """Begin dispatching."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop dispatching (claimed events come due again after their lease)."""
        await self._loop.stop()

    def _on_job_event(self, event: JobEvent) -> None:
        self._poke.set()

    async def _wake_and_dispatch(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poke.wait(), IDLE_WAKE_S)
        self._poke.clear()
        await self.dispatch_due()

    async def dispatch_due(self) -> int:
        """Enqueue a delivery for every due event; how many were enqueued."""
        total = 0
        while claimed := await self._store.claim_due(CLAIM_BATCH, self._lease_s):
            for event_id in claimed:
                await self._queue.enqueue_delivery(event_id)
            total += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                break
        return total
