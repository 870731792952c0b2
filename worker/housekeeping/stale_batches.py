"""Discarding batches whose creation an API process began and never finished.

A batch is written in chunks with status ``creating`` and released to the workers
only when every variant is written (``app.store.batches``). If its API process
died meanwhile and the client never retried with the same ``Idempotency-Key``,
the half-written batch would sit unseen until its records expire, its inputs in
object storage even longer. The sweeper, run in every worker, takes over each
creation left for ``stale_after_s`` whose creator's lease lapsed (one worker wins
each, through the same lease a retry would take) and deletes what it wrote; its
inputs go to the retention janitor at once. No variant of such a batch ever ran,
so nothing a client was told about is lost.
"""

from __future__ import annotations

import logging
import os
import time

from redis.exceptions import RedisError

from app.background import Supervised
from app.errors import EditqError
from app.store.batches import BatchStore

log = logging.getLogger(__name__)


class StaleBatchSweeper:
    """Every ``interval_s``, discards creations begun over ``stale_after_s`` ago and
    no longer held by their creator."""

    def __init__(self, batches: BatchStore, *, interval_s: float, stale_after_s: float) -> None:
        self._batches = batches
        self._stale_after_ms = int(stale_after_s * 1000)
        self._loop = Supervised(
            "stale-batch-sweeper",
            self.sweep,
            every_s=interval_s,
            errors=(RedisError, OSError, EditqError),
        )

    def start(self) -> None:
        """Begin sweeping."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop sweeping."""
        await self._loop.stop()

    async def sweep(self) -> int:
        """Discard every stale creation this worker could take over; how many."""
        started_before = int(time.time() * 1000) - self._stale_after_ms
        discarded = 0
        for batch_id in await self._batches.stale_creations(started_before):
            token = f"sweeper:{os.getpid()}:{os.urandom(6).hex()}"
            if await self._batches.take_over(batch_id, token) and await self._batches.discard(
                batch_id, token
            ):
                discarded += 1
                log.warning("discarded batch %s: its creation was never finished", batch_id)
        return discarded
