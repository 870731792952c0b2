"""Leases on running jobs, kept in arq's own queue so a dead worker's jobs come back
(the arq side of it is ``app.dispatch``'s ``extend_leases`` and ``hand_back``).

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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from app.background import Supervised
from app.dispatch import EditQueue
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
        queue: EditQueue,
        gate: UpstreamGate,
        *,
        lease_s: float,
        caps: Mapping[str, int],
    ) -> None:
        self._queue = queue
        self._gate = gate
        self._lease_s = lease_s
        self._caps = dict(caps)
        self._held: dict[str, Lease] = {}
        # A renewal must not push back a job deferred while it was being written.
        self._renewing = asyncio.Lock()
        self._loop = Supervised(
            "lease-renewal", self._tick, every_s=lease_s / 3, errors=(RedisError, OSError)
        )

    def start(self) -> None:
        """Begin renewing (and reaping) every third of a lease."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop renewing (held leases then lapse unless handed back)."""
        await self._loop.stop()

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

    async def defer(self, lease: Lease, delay_s: float) -> None:
        """End ``lease`` with its job due again in ``delay_s`` (its delivery must then end
        with arq's ``RetryJob``), its slots kept for the wait and one lease more (a run
        waiting on an asynchronous upstream); the ``hold`` block then releases nothing."""
        async with self._renewing:
            self._held.pop(lease.arq_job_id, None)
            await self._gate.hold(lease.slots, delay_s + self._lease_s)
            await self._queue.defer(lease.arq_job_id, lease.queue_name, delay_s)
        lease.slots = []

    async def hand_back(self, arq_job_id: str, queue_name: str) -> None:
        """Make a job this worker gives up (shutdown) ready for another worker now."""
        await self._queue.hand_back(arq_job_id, queue_name)

    async def _extend(self, leases: list[Lease]) -> None:
        by_queue: dict[str, list[str]] = {}
        for lease in leases:
            by_queue.setdefault(lease.queue_name, []).append(lease.arq_job_id)
        await self._queue.extend_leases(by_queue, self._lease_s)

    async def _tick(self) -> None:
        async with self._renewing:
            held = list(self._held.values())
            if held:
                await self._extend(held)
                await self._gate.renew([grant for lease in held for grant in lease.slots])
        for upstream, cap in self._caps.items():
            await self._gate.reap(upstream, cap)
