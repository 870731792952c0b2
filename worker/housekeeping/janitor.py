"""Deleting the images of expired jobs and batches from object storage.

Job and batch records expire in Redis by themselves (TTL, restarted at every
change); their inputs and outputs in S3 do not. Every transition records its
subject's expiry in ``P:retention``; the janitor, run in every worker but acting
in one at a time (a Redis lock), deletes ``inputs/{id}/`` and ``outputs/{id}/`` of
every id whose expiry has passed. An S3 lifecycle rule on the bucket (see
deploy/README.md) is a second line of defence, not the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.blobs import ObjectStore
from app.errors import EditqError

log = logging.getLogger(__name__)
SWEEP_BATCH = 200


class RetentionJanitor:
    """Sweeps expired ids' S3 prefixes every ``interval_s``, one worker at a time."""

    def __init__(
        self, redis: Redis, storage: ObjectStore, *, prefix: str, interval_s: float
    ) -> None:
        self._redis = redis
        self._storage = storage
        self._index = f"{prefix}:retention"
        self._lock = f"{prefix}:janitor:lock"
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sweeping."""
        self._task = asyncio.create_task(self._run(), name="retention-janitor")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                token = f"{os.getpid()}:{time.time()}"
                if await self._redis.set(
                    self._lock, token, nx=True, px=int(self._interval_s * 1000)
                ):
                    await self.sweep()
            except (RedisError, OSError, EditqError) as exc:
                log.warning("retention sweep failed (will retry): %s", exc)

    async def sweep(self) -> int:
        """Delete the S3 objects of every expired id; how many ids were swept."""
        swept = 0
        while expired := await self._redis.zrangebyscore(
            self._index, "-inf", int(time.time() * 1000), start=0, num=SWEEP_BATCH
        ):
            for subject in expired:
                for area in ("inputs", "outputs"):
                    await self._storage.delete_prefix(f"{area}/{subject}/")
            await self._redis.zrem(self._index, *expired)
            swept += len(expired)
        if swept:
            log.info("retention: deleted the images of %d expired jobs and batches", swept)
        return swept
