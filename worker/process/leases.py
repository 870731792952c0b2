"""Leases on running jobs, kept in arq's own queue so a dead worker's jobs come back.

arq keeps a running job in its queue (a sorted set scored by the time it may
start) and guards it with an in-progress key that lives ``job_timeout + 10`` s,
so a killed worker's job waits minutes and every poll rescans all running jobs.
Instead, a job that starts here has its score moved to *now + lease* and its
in-progress key shortened to the lease; a renewal loop pushes both forward every
third of a lease, together with the upstream slots the job holds. The queue's
ready range then holds only jobs waiting to start, and when a worker dies its jobs
fall back into that range, and its slots expire, within one lease.

The same loop reaps every upstream's expired slots (see ``upstream_gate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

from worker.capacity.gate import SlotGrant, UpstreamGate

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """One running job's lease and the upstream slots it holds."""

    arq_job_id: str
    queue_name: str
    slots: list[SlotGrant] = field(default_factory=list)


class LeaseKeeper:
    """Holds and renews the leases of the arq jobs this worker is running."""

    def __init__(
        self,
        pool: ArqRedis,
        gate: UpstreamGate,
        *,
        lease_s: float,
        caps: Mapping[str, int],
    ) -> None:
        self._pool = pool
        self._gate = gate
        self._lease_ms = int(lease_s * 1000)
        self._caps = dict(caps)
        self._held: dict[str, Lease] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin renewing (and reaping) every third of a lease."""
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def stop(self) -> None:
        """Stop renewing (held leases then lapse unless handed back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def hold(self, arq_job_id: str, queue_name: str) -> AsyncIterator[Lease]:
        """Lease ``arq_job_id`` (in ``queue_name``) for as long as the block runs; slots
        added to the lease are renewed with it and released when the block ends."""
        lease = Lease(arq_job_id, queue_name)
        self._held[arq_job_id] = lease
        try:
            await self._extend([lease])
            yield lease
        finally:
            self._held.pop(arq_job_id, None)
            await asyncio.shield(self.release_slots(lease))

    async def release_slots(self, lease: Lease) -> None:
        """Give back every slot of ``lease`` (waking waiters)."""
        grants, lease.slots = lease.slots, []
        for grant in grants:
            try:
                await self._gate.release(grant, self._caps.get(grant.upstream, 1))
            except (RedisError, OSError) as exc:
                log.warning("could not release %s slots (they expire): %s", grant.upstream, exc)

    async def hand_back(self, arq_job_id: str, queue_name: str) -> None:
        """Make a job this worker gives up (shutdown) ready for another worker now."""
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zadd(queue_name, {arq_job_id: _now_ms()}, xx=True)
            pipe.delete(in_progress_key_prefix + arq_job_id)
            await pipe.execute()

    async def _extend(self, leases: list[Lease]) -> None:
        deadline = _now_ms() + self._lease_ms
        by_queue: dict[str, dict[str, int]] = {}
        for lease in leases:
            by_queue.setdefault(lease.queue_name, {})[lease.arq_job_id] = deadline
        async with self._pool.pipeline(transaction=False) as pipe:
            for queue_name, scores in by_queue.items():  # one ZADD per queue, not per job
                pipe.zadd(queue_name, scores, xx=True)
            for lease in leases:
                pipe.pexpire(in_progress_key_prefix + lease.arq_job_id, self._lease_ms)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        interval = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._tick()
            except (RedisError, OSError) as exc:
                log.warning("could not renew leases: %s", exc)

    async def _tick(self) -> None:
        held = list(self._held.values())
        if held:
            await self._extend(held)
            await self._gate.renew([grant for lease in held for grant in lease.slots])
        for upstream, cap in self._caps.items():
            await self._gate.reap(upstream, cap)


def _now_ms() -> int:
    return int(time.time() * 1000)
