"""Deleting the images of expired jobs and batches from object storage.

Job and batch records expire in Redis by themselves (TTL, restarted at every
change); their images in S3 do not. Every transition records its subject's
expiry in ``P:retention``; the janitor, run in every worker but acting in one at a
time (a Redis lock), deletes ``inputs/{id}/``, ``outputs/{id}/`` and
``partials/{id}/`` of every id whose expiry has passed. In the same turn it removes
expired uploaded files (``FileService.sweep_expired``). An S3 lifecycle rule on the bucket (see
deploy/README.md) is a second line of defence, not the mechanism.
"""

from __future__ import annotations

import logging
import os
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.background import Supervised
from app.blobs import ObjectStore
from app.errors import EditqError
from app.services.files import FileService
from app.store.keys import Keys

log = logging.getLogger(__name__)
SWEEP_BATCH = 200


class RetentionJanitor:
    """Sweeps expired ids' S3 prefixes and expired files every ``interval_s``, one
    worker at a time."""

    def __init__(
        self,
        redis: Redis,
        storage: ObjectStore,
        keys: Keys,
        files: FileService,
        *,
        interval_s: float,
    ) -> None:
        self._files = files
        self._redis = redis
        self._storage = storage
        self._index = keys.retention
        self._lock = keys.janitor_lock
        self._interval_s = interval_s
        self._loop = Supervised(
            "retention-janitor",
            self._sweep_if_first,
            every_s=interval_s,
            errors=(RedisError, OSError, EditqError),
        )

    def start(self) -> None:
        """Begin sweeping."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop sweeping."""
        await self._loop.stop()

    async def _sweep_if_first(self) -> None:
        """Sweep, unless another worker took this interval's turn."""
        token = f"{os.getpid()}:{time.time()}"
        if await self._redis.set(self._lock, token, nx=True, px=int(self._interval_s * 1000)):
            await self.sweep()
            await self._files.sweep_expired()

    async def sweep(self) -> int:
        """Delete the S3 objects of every expired id; how many ids were swept."""
        swept = 0
        while expired := await self._redis.zrangebyscore(
            self._index, "-inf", int(time.time() * 1000), start=0, num=SWEEP_BATCH
        ):
            for subject in expired:
                for area in ("inputs", "outputs", "partials"):
                    await self._storage.delete_prefix(f"{area}/{subject}/")
            await self._redis.zrem(self._index, *expired)
            swept += len(expired)
        if swept:
            log.info("retention: deleted the images of %d expired jobs and batches", swept)
        return swept
