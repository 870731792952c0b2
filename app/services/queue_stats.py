"""What the queue looks like right now: lane depths, upstream slots in use, live workers.

Read from the keys the workers keep (the front end never imports worker code):
an upstream's slots (``Keys.upstream_slots``, a sorted set of slot tokens scored by
lease expiry in ms) and the jobs waiting for one (``Keys.upstream_waiting``; see
``worker.capacity.gate``); a live arq worker refreshes its lane's health-check key
(``app.dispatch.health_check_key``; it expires a second after the check interval).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from app.dispatch import EditQueue
from app.store.keys import Keys


class LaneStats(BaseModel):
    """One lane: runs in its queue (waiting or leased) and whether a worker serves it."""

    model_config = ConfigDict(frozen=True)

    name: Literal["interactive", "bulk"]
    depth: int = Field(description="runs in the lane's queue: waiting, parked or running")
    worker_alive: bool = Field(description="a worker refreshed the lane's health check")
    worker_report: str | None = Field(description="arq's last health-check line, if alive")


class UpstreamStats(BaseModel):
    """One upstream: calls in flight across all workers against its cap, jobs waiting."""

    model_config = ConfigDict(frozen=True)

    name: str
    in_flight: int = Field(description="unexpired slots held by all workers")
    max_concurrency: int
    waiting: int = Field(description="jobs parked until a slot frees")


class QueueSnapshot(BaseModel):
    """Every lane and upstream at one moment (the API's queue object)."""

    model_config = ConfigDict(frozen=True)

    object: Literal["queue"] = "queue"
    lanes: tuple[LaneStats, ...]
    upstreams: tuple[UpstreamStats, ...]

    def public(self) -> dict[str, Any]:
        """The object as JSON-ready data."""
        return self.model_dump(mode="json")


class QueueStats:
    """Reads a ``QueueSnapshot`` from Redis (``redis`` must decode responses)."""

    def __init__(
        self, redis: Redis, keys: Keys, queue: EditQueue, *, providers: ProvidersConfig
    ) -> None:
        self._redis = redis
        self._queue = queue
        self._keys = keys
        self._upstreams = [(u.name, u.max_concurrency) for u in providers.upstreams]

    async def read(self) -> QueueSnapshot:
        """The current snapshot; raises RedisError when Redis is unreachable."""
        depths = await asyncio.gather(*(self._queue.depth(lane) for lane in Lane))
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for lane in Lane:
                pipe.get(self._queue.health_check_key(lane))
            for name, _ in self._upstreams:
                pipe.zcount(self._keys.upstream_slots(name), now_ms, "+inf")
                pipe.zcard(self._keys.upstream_waiting(name))
            replies = await pipe.execute()
        reports, counts = replies[: len(Lane)], replies[len(Lane) :]
        lanes = tuple(
            LaneStats(
                name=lane.value, depth=depth, worker_alive=report is not None, worker_report=report
            )
            for lane, depth, report in zip(Lane, depths, reports, strict=True)
        )
        upstreams = tuple(
            UpstreamStats(
                name=name,
                in_flight=int(counts[2 * i]),
                max_concurrency=cap,
                waiting=int(counts[2 * i + 1]),
            )
            for i, (name, cap) in enumerate(self._upstreams)
        )
        return QueueSnapshot(lanes=lanes, upstreams=upstreams)
