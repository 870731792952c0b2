"""Limits every worker shares per upstream, kept in Redis: concurrency slots, request
rate, and a cool-down after a 429.

Slots: ``P:upstream:{name}:slots`` is a sorted set of slot tokens scored by lease
expiry (ms). A job is *admitted* only when all the slots it needs are free; if not,
its ticket (``queue|arq_job_id``, scored by its rank: see ``worker.runs.task.waiter_rank``)
goes into ``P:upstream:{name}:waiting`` and the job goes back to the queue, parked,
holding no worker slot. Nobody jumps the queue: a free slot is not taken by a ticket
ranked after a waiter. Releasing slots wakes as many waiters as slots came free by moving
their arq jobs to the front of their queue: no one polls. Tokens are renewed with
the job's lease; a crashed worker's tokens expire within one lease and the reaper
(every worker, every third of a lease) frees them and wakes waiters.

Rate: ``requests_per_minute`` spaces calls through a shared reservation time
(GCRA-style, a tenth of the minute's quota may burst). Cool-down: a 429 sets
``P:upstream:{name}:cooldown`` to the time the upstream asked everyone to wait until.
``permit`` returns how long a caller must wait for both, in one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

ADMIT_SCRIPT = """
local k = #KEYS / 2
local now = tonumber(ARGV[1])
for i = 1, k do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
for i = 1, k do
  local need = tonumber(ARGV[5 + 2 * i])
  local cap = tonumber(ARGV[6 + 2 * i])
  local full = redis.call('ZCARD', KEYS[i]) + need > cap
  if not full and ARGV[3] ~= '' then
    -- no queue jumping: a waiter ranked before this ticket goes first
    local first = redis.call('ZRANGE', KEYS[k + i], 0, 0, 'WITHSCORES')
    full = first[1] ~= nil and first[1] ~= ARGV[3] and tonumber(first[2]) < tonumber(ARGV[4])
  end
  if full then
    if ARGV[3] ~= '' then
      redis.call('ZADD', KEYS[k + i], 'NX', ARGV[4], ARGV[3])
      if tonumber(ARGV[6]) > 0 then
        local sep = string.find(ARGV[3], '|', 1, true)
        redis.call('ZADD', string.sub(ARGV[3], 1, sep - 1), 'XX', now + tonumber(ARGV[6]),
                   string.sub(ARGV[3], sep + 1))
      end
    end
    return 0
  end
end
for i = 1, k do
  local need = tonumber(ARGV[5 + 2 * i])
  for j = 1, need do
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[5] .. ':' .. i .. ':' .. j)
  end
  redis.call('ZREM', KEYS[k + i], ARGV[3])
end
return 1
"""

RELEASE_SCRIPT = """
local now = tonumber(ARGV[1])
if #ARGV > 2 then redis.call('ZREM', KEYS[1], unpack(ARGV, 3)) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return 0 end
local woken = redis.call('ZPOPMIN', KEYS[2], free)
for i = 1, #woken, 2 do
  local sep = string.find(woken[i], '|', 1, true)
  redis.call('ZADD', string.sub(woken[i], 1, sep - 1), 'XX', now,
             string.sub(woken[i], sep + 1))
end
return #woken / 2
"""

PERMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local earliest = now
local cooldown = tonumber(redis.call('GET', KEYS[1]) or '0')
if cooldown > earliest then earliest = cooldown end
if interval > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  earliest = math.max(earliest, tat - burst)
  local next_tat = math.max(tat, earliest) + interval
  redis.call('SET', KEYS[2], next_tat, 'PX', next_tat - now + 60000)
end
return earliest - now
"""

ADVANCE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

COOL_DOWN_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class SlotGrant:
    """Slots held on one upstream: its sorted-set key and the tokens in it."""

    upstream: str
    key: str
    tokens: tuple[str, ...]


class UpstreamGate:
    """The shared limits of every upstream; see the module docstring."""

    def __init__(self, redis: Redis, *, prefix: str, lease_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._admit = redis.register_script(ADMIT_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._permit = redis.register_script(PERMIT_SCRIPT)
        self._cool_down = redis.register_script(COOL_DOWN_SCRIPT)
        self._advance = redis.register_script(ADVANCE_SCRIPT)

    def _key(self, upstream: str, part: str) -> str:
        return f"{self._prefix}:upstream:{upstream}:{part}"

    def slots_key(self, upstream: str) -> str:
        """The sorted set of the upstream's slot tokens (score: lease expiry, ms)."""
        return self._key(upstream, "slots")

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

        Returns the grants, or None after queueing ``ticket`` (``queue|arq_job_id``;
        empty for none) as a waiter of the first upstream that is full and, in the
        same atomic step, parking its arq job ``park_s`` ahead in its queue when
        ``park_s`` > 0 (a wake-up brings it back to the front). ``holder`` names the tokens.
        """
        names = sorted(needs)
        keys = [self.slots_key(name) for name in names]
        keys += [self._key(name, "waiting") for name in names]
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
        return [
            SlotGrant(
                upstream=name,
                key=self.slots_key(name),
                tokens=tuple(f"{holder}:{i}:{j}" for j in range(1, needs[name][0] + 1)),
            )
            for i, name in enumerate(names, start=1)
        ]

    async def release(self, grant: SlotGrant, cap: int) -> int:
        """Give the slots back and wake as many waiters as slots are free; how many woke."""
        keys = [grant.key, self._key(grant.upstream, "waiting")]
        return int(await self._release(keys=keys, args=[_now_ms(), cap, *grant.tokens]))

    async def reap(self, upstream: str, cap: int) -> int:
        """Free expired slots (dead workers') and wake waiters for any free slot."""
        keys = [self.slots_key(upstream), self._key(upstream, "waiting")]
        return int(await self._release(keys=keys, args=[_now_ms(), cap]))

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
        return int(await self._redis.zcard(self._key(upstream, "waiting")))

    async def permit(self, upstream: str, requests_per_minute: int | None) -> float:
        """Seconds to wait before calling ``upstream`` (cool-down and rate), reserving a turn."""
        interval = 60_000 / requests_per_minute if requests_per_minute else 0
        burst = interval * max(1, (requests_per_minute or 0) // 10)
        keys = [self._key(upstream, "cooldown"), self._key(upstream, "rate")]
        wait_ms = await self._permit(keys=keys, args=[_now_ms(), int(interval), int(burst)])
        return max(0.0, int(wait_ms) / 1000)

    async def advance_clock(self, rank: float) -> None:
        """Move the bulk lane's fair-share clock up to ``rank`` (never back)."""
        await self._advance(keys=[f"{self._prefix}:bulk:clock"], args=[rank])

    async def cool_down(self, upstream: str, seconds: float) -> None:
        """Make every worker hold calls to ``upstream`` for ``seconds`` (after a 429)."""
        until = _now_ms() + int(seconds * 1000)
        await self._cool_down(
            keys=[self._key(upstream, "cooldown")], args=[until, int(seconds * 1000) + 1000]
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
