"""Leases on running jobs, kept in arq's own queue so a dead worker's jobs come back.

arq keeps a running job in its queue (a sorted set scored by the time it may
start) and guards it with an in-progress key that lives ``job_timeout + 10`` s,
so a killed worker's job waits minutes and every poll rescans all running jobs.
Instead, a job that starts here has its score moved to *now + lease* and its
in-progress key shortened to the lease; a renewal loop pushes both forward every
third of a lease. The queue's ready range then holds only jobs waiting to start,
and when a worker dies its jobs fall back into that range within one lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds and renews the leases of the arq jobs this worker is running."""

    def __init__(self, pool: ArqRedis, queue_name: str, lease_s: float) -> None:
        self._pool = pool
        self._queue_name = queue_name
        self._lease_ms = int(lease_s * 1000)
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin renewing every third of a lease."""
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def stop(self) -> None:
        """Stop renewing (held leases then lapse unless handed back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def hold(self, arq_job_id: str) -> AsyncIterator[None]:
        """Lease ``arq_job_id`` for as long as the block runs."""
        self._held.add(arq_job_id)
        try:
            await self._extend([arq_job_id])
            yield
        finally:
            self._held.discard(arq_job_id)

    async def hand_back(self, arq_job_id: str) -> None:
        """Make a job this worker gives up (shutdown) ready for another worker now."""
        self._held.discard(arq_job_id)
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zadd(self._queue_name, {arq_job_id: _now_ms()}, xx=True)
            pipe.delete(in_progress_key_prefix + arq_job_id)
            await pipe.execute()

    async def _extend(self, arq_job_ids: list[str]) -> None:
        deadline = _now_ms() + self._lease_ms
        async with self._pool.pipeline(transaction=False) as pipe:
            for arq_job_id in arq_job_ids:
                pipe.zadd(self._queue_name, {arq_job_id: deadline}, xx=True)
                pipe.pexpire(in_progress_key_prefix + arq_job_id, self._lease_ms)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        interval = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            held = list(self._held)
            if not held:
                continue
            try:
                await self._extend(held)
            except (RedisError, OSError) as exc:
                log.warning("could not renew %d leases: %s", len(held), exc)


def _now_ms() -> int:
    return int(time.time() * 1000)
