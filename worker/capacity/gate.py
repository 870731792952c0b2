"""Limits every worker shares per upstream, kept in Redis: concurrency slots, request
rate, and a cool-down after a 429.

Slots: ``Keys.upstream_slots`` is a sorted set of slot tokens scored by lease
expiry (ms). A job is *admitted* only when all the slots it needs are free; if not,
its ticket (``<lane>|<arq job id>``, scored by its rank: see
``worker.runs.task.waiter_rank``) goes into ``Keys.upstream_waiting`` and the job
goes back to its lane's queue (``app.dispatch.lane_queue``), parked,
holding no worker slot. Nobody jumps the queue: a free slot is not taken by a ticket
ranked after a waiter. Releasing slots wakes as many waiters as slots came free by moving
their arq jobs to the front of their queue: no one polls. Tokens are renewed with
the job's lease; a crashed worker's tokens expire within one lease and the reaper
(every worker, every third of a lease) frees them and wakes waiters.

Rate: ``requests_per_minute`` spaces calls through a shared reservation time
(GCRA-style, a tenth of the minute's quota may burst). Cool-down: a 429 sets
``Keys.upstream_cooldown`` to the time the upstream asked everyone to wait until.
``permit`` returns how long a caller must wait for both, in one round trip.

The scripts are ``worker/capacity/lua/*.lua``; each is handed every key it touches,
the lanes' queues included.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from app.core.jobs import Lane
from app.dispatch import lane_queue
from app.store.keys import Keys
from app.store.scripts import register

SCRIPTS = "worker.capacity"
LANE_ORDER = (Lane.INTERACTIVE, Lane.BULK)  # the order admit.lua and release.lua expect


def ticket_for(lane: Lane, arq_job_id: str) -> str:
    """A waiter's ticket: its lane (whose queue it is parked and woken in) and arq job."""
    return f"{lane.value}|{arq_job_id}"


@dataclass(frozen=True)
class SlotGrant:
    """Slots held on one upstream: its sorted-set key and the tokens in it."""

    upstream: str
    key: str
    tokens: tuple[str, ...]


class UpstreamGate:
    """The shared limits of every upstream; see the module docstring."""

    def __init__(self, redis: Redis, keys: Keys, queue_name: str, *, lease_s: float) -> None:
        self._redis = redis
        self._keys = keys
        # Waking or parking a waiter scores its arq job in its lane's queue.
        self._lane_queues = [lane_queue(queue_name, lane) for lane in LANE_ORDER]
        self._lease_ms = int(lease_s * 1000)
        self._admit = register(redis, "admit", SCRIPTS)
        self._release = register(redis, "release", SCRIPTS)
        self._permit = register(redis, "permit", SCRIPTS)
        self._raise_to = register(redis, "raise_to", SCRIPTS)

    def slots_key(self, upstream: str) -> str:
        """The sorted set of the upstream's slot tokens (score: lease expiry, ms)."""
        return self._keys.upstream_slots(upstream)

    async def admit(
        self,
        needs: Mapping[str, tuple[int, int]],
        *,
        holder: str,
        ticket: str,
        ticket_score: float,
        park_s: float = 0,
    ) -> list[SlotGrant] | None:
        """Take ``need`` slots on every upstream of ``needs`` (name -> (need, cap)) at once.

        Returns the grants, or None after queueing ``ticket`` (``ticket_for(...)``;
        empty for none) as a waiter of the first upstream that is full and, in the
        same atomic step, parking its arq job ``park_s`` ahead in its queue when
        ``park_s`` > 0 (a wake-up brings it back to the front). ``holder`` names the tokens.
        """
        names = sorted(needs)
        keys = [self.slots_key(name) for name in names]
        keys += [self._keys.upstream_waiting(name) for name in names]
        keys += self._lane_queues
        now = _now_ms()
        args: list[str | int | float] = [
            now,
            now + self._lease_ms,
            ticket,
            ticket_score,
            holder,
            int(park_s * 1000),
        ]
        for name in names:
            args.extend(needs[name])
        if not await self._admit(keys=keys, args=args):
            return None
        return self.grants_for({name: need for name, (need, _) in needs.items()}, holder)

    def grants_for(self, needs: Mapping[str, int], holder: str) -> list[SlotGrant]:
        """The grants ``admit`` gives ``holder`` for ``needs`` (name -> slots), named the
        same way: a run waiting on an asynchronous upstream finds its slots again with
        them on a later delivery (admit.lua names token j of upstream i ``holder:i:j``,
        the upstreams in sorted order)."""
        return [
            SlotGrant(
                upstream=name,
                key=self.slots_key(name),
                tokens=tuple(f"{holder}:{i}:{j}" for j in range(1, needs[name] + 1)),
            )
            for i, name in enumerate(sorted(needs), start=1)
        ]

    async def hold(self, grants: Sequence[SlotGrant], for_s: float) -> None:
        """Keep ``grants`` held for ``for_s`` seconds from now, taking them again if they
        lapsed: a run waiting on an asynchronous upstream holds its slots between
        deliveries (the upstream works on its edit meanwhile, so it counts). A lapsed
        slot taken again may briefly put the upstream over its cap (a worker that died)."""
        if not grants:
            return
        expiry = _now_ms() + int(for_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for grant in grants:
                pipe.zadd(grant.key, dict.fromkeys(grant.tokens, expiry))
            await pipe.execute()

    async def release(self, grant: SlotGrant, cap: int) -> int:
        """Give the slots back and wake as many waiters as slots are free; how many woke."""
        keys = [grant.key, self._keys.upstream_waiting(grant.upstream), *self._lane_queues]
        return int(await self._release(keys=keys, args=[_now_ms(), cap, *grant.tokens]))

    async def reap(self, upstream: str, cap: int) -> int:
        """Free expired slots (dead workers') and wake waiters for any free slot."""
        keys = [self.slots_key(upstream), self._keys.upstream_waiting(upstream)]
        return int(await self._release(keys=keys + self._lane_queues, args=[_now_ms(), cap]))

    async def renew(self, grants: Sequence[SlotGrant]) -> None:
        """Push the leases of ``grants`` one lease into the future."""
        if not grants:
            return
        expiry = _now_ms() + self._lease_ms
        by_key: dict[str, dict[str, int]] = {}
        for grant in grants:
            by_key.setdefault(grant.key, {}).update(dict.fromkeys(grant.tokens, expiry))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, scores in by_key.items():  # one ZADD per upstream, not per job
                pipe.zadd(key, scores, xx=True)
            await pipe.execute()

    async def held(self, upstream: str) -> int:
        """How many unexpired slots the upstream has out (for metrics and tests)."""
        return int(await self._redis.zcount(self.slots_key(upstream), _now_ms(), "+inf"))

    async def waiting(self, upstream: str) -> int:
        """How many jobs wait for a slot on the upstream."""
        return int(await self._redis.zcard(self._keys.upstream_waiting(upstream)))

    async def permit(self, upstream: str, requests_per_minute: int | None) -> float:
        """Seconds to wait before calling ``upstream`` (cool-down and rate), reserving a turn."""
        interval = 60_000 / requests_per_minute if requests_per_minute else 0
        burst = interval * max(1, (requests_per_minute or 0) // 10)
        keys = [self._keys.upstream_cooldown(upstream), self._keys.upstream_rate(upstream)]
        wait_ms = await self._permit(keys=keys, args=[_now_ms(), int(interval), int(burst)])
        return max(0.0, int(wait_ms) / 1000)

    async def advance_clock(self, rank: float) -> None:
        """Move the bulk lane's fair-share clock up to ``rank`` (never back)."""
        await self._raise_to(keys=[self._keys.bulk_clock], args=[rank, ""])

    async def cool_down(self, upstream: str, seconds: float) -> None:
        """Make every worker hold calls to ``upstream`` for ``seconds`` (after a 429)."""
        until = _now_ms() + int(seconds * 1000)
        await self._raise_to(
            keys=[self._keys.upstream_cooldown(upstream)],
            args=[until, int(seconds * 1000) + 1000],
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
