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
import logging
import time

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.store.events import JobEvent, JobEventHub
from app.store.webhooks import WebhookStore

log = logging.getLogger(__name__)

DELIVER_TASK = "deliver_webhook"
CLAIM_BATCH = 100
IDLE_WAKE_S = 1.0


class WebhookDispatcher:
    """Claims due events and enqueues their deliveries."""

    def __init__(
        self,
        store: WebhookStore,
        pool: ArqRedis,
        events: JobEventHub,
        *,
        queue_name: str,
        lease_s: float,
    ) -> None:
        self._store = store
        self._pool = pool
        self._queue_name = queue_name
        self._lease_s = lease_s
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        events.observe(self._on_job_event)

    def start(self) -> None:
        """Begin dispatching."""
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop dispatching (claimed events come due again after their lease)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_job_event(self, event: JobEvent) -> None:
        self._poke.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), IDLE_WAKE_S)
            self._poke.clear()
            try:
                await self.dispatch_due()
            except (RedisError, OSError) as exc:
                log.warning("webhook dispatch failed (will retry): %s", exc)

    async def dispatch_due(self) -> int:
        """Enqueue a delivery for every due event; how many were enqueued."""
        total = 0
        while claimed := await self._store.claim_due(CLAIM_BATCH, self._lease_s):
            stamp = int(time.time() * 1000)
            for event_id in claimed:
                await self._pool.enqueue_job(
                    DELIVER_TASK,
                    event_id,
                    _job_id=f"wh:{event_id}:{stamp}",
                    _queue_name=self._queue_name,
                )
            total += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                break
        return total
