"""Handing jobs to the workers through arq: the only module that knows arq's storage.

arq keeps, per queue, a sorted set of job ids scored by when each may start, a
payload key per job (``arq.constants.job_key_prefix``) and an in-progress marker
per running job (``in_progress_key_prefix``). editq relies on that layout in five
places, all here: enqueueing a run inside the MULTI that records it (a new job) or
moves it (a retry, ``enqueue_moved.lua``), so a crash can never leave a queued job
no worker will pick; writing a batch's variants' payloads in bulk while the batch
is created and then scoring its first window into the bulk queue, the rest
released one by one by ``release_window.lua``; withdrawing a canceled run; leasing
a running job (its score moved to *now + lease*, its marker shortened to the
lease) and handing a job back on shutdown. ``tests/test_dispatch_contract.py`` fails loudly when
arq's layout changes; ``pyproject.toml`` pins arq to the tested minor.

The front end enqueues ``run_edit`` by name with the job id and run number only
(images stay in object storage). Payloads are JSON (``serialize``), never pickle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.core.jobs import Lane
from app.store.scripts import register

EDIT_TASK = "run_edit"
PAYLOAD_TTL_MS = 24 * 3600 * 1000  # as arq's own enqueue (its ``expires_extra_ms``)
DELIVER_TASK = "deliver_webhook"


def serialize(payload: dict[str, Any]) -> bytes:
    """arq job payload to bytes, as JSON (never pickle)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    """Bytes back to an arq job payload."""
    payload: dict[str, Any] = json.loads(data)
    return payload


def arq_job_id(job_id: str, run: int) -> str:
    """arq's id for one run of a job: each run is its own arq job."""
    return f"{job_id}:{run}"


def lane_queue(queue_name: str, lane: Lane) -> str:
    """The arq queue of a lane: single jobs are interactive, batch variants bulk.

    Each lane has its own workers' poll loop, so a deep bulk queue never delays
    the pickup of an interactive job.
    """
    return f"{queue_name}:bulk" if lane == Lane.BULK else queue_name


def health_check_key(queue_name: str, lane: Lane) -> str:
    """The key a live worker of ``lane`` refreshes (arq's health check)."""
    return f"{lane_queue(queue_name, lane)}:health-check"


def redis_settings(redis_url: str) -> RedisSettings:
    """arq's connection settings for ``redis_url``."""
    return RedisSettings.from_dsn(redis_url)


async def open_pool(redis_url: str, queue_name: str) -> ArqRedis:
    """A new arq pool that reads and writes JSON payloads; the caller closes it."""
    return await create_pool(
        redis_settings(redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )


async def connect(redis_url: str, queue_name: str) -> EditQueue:
    """An ``EditQueue`` over a new arq pool (close it with ``aclose``)."""
    return EditQueue(await open_pool(redis_url, queue_name), queue_name)


def _payload(job_id: str, run: int, enqueued_ms: int) -> bytes:
    return serialize_job(EDIT_TASK, (job_id, run), {}, None, enqueued_ms, serializer=serialize)


def _now_ms() -> int:
    return int(time.time() * 1000)


class EditQueue:
    """Enqueues, withdraws and leases edit runs on the lanes' arq queues."""

    def __init__(self, pool: ArqRedis, queue_name: str) -> None:
        self._pool = pool
        self._queue_name = queue_name
        self._enqueue_moved = register(pool, "enqueue_moved")

    async def aclose(self) -> None:
        """Close the arq pool."""
        await self._pool.aclose()

    def queue_for(self, lane: Lane) -> str:
        """The arq queue of the lane."""
        return lane_queue(self._queue_name, lane)

    def health_check_key(self, lane: Lane) -> str:
        """The key a live worker of the lane refreshes."""
        return health_check_key(self._queue_name, lane)

    def enqueue_on(self, pipe: Pipeline, job_id: str, run: int, lane: Lane) -> None:
        """Queue run ``run`` of ``job_id`` for the next free worker of its lane, on
        ``pipe``: in the MULTI that records the job, so both happen or neither."""
        arq_id, now_ms = arq_job_id(job_id, run), _now_ms()
        pipe.psetex(job_key_prefix + arq_id, PAYLOAD_TTL_MS, _payload(job_id, run, now_ms))
        pipe.zadd(self.queue_for(lane), {arq_id: now_ms})

    async def enqueue_moved(
        self, pipe: Pipeline, *, job_key: str, token: str, job_id: str, run: int, lane: Lane
    ) -> None:
        """Queue on ``pipe`` (right after the job's transition) run ``run`` of
        ``job_id``, which happens only if that transition (``token``) applied."""
        arq_id, now_ms = arq_job_id(job_id, run), _now_ms()
        await self._enqueue_moved(
            keys=[job_key, job_key_prefix + arq_id, self.queue_for(lane)],
            args=[token, _payload(job_id, run, now_ms), PAYLOAD_TTL_MS, arq_id, now_ms],
            client=pipe,
        )

    async def enqueue_delivery(self, event_id: str) -> None:
        """Queue one delivery of webhook event ``event_id`` (on the interactive lane; each
        claim of a due event is its own arq job)."""
        await self._pool.enqueue_job(
            DELIVER_TASK,
            event_id,
            _job_id=f"wh:{event_id}:{_now_ms()}",
            _queue_name=self.queue_for(Lane.INTERACTIVE),
        )

    async def withdraw(self, job_id: str, run: int, lane: Lane) -> None:
        """Remove a run that has not started yet (a canceled queued job)."""
        arq_id = arq_job_id(job_id, run)
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zrem(self.queue_for(lane), arq_id)
            pipe.delete(job_key_prefix + arq_id)
            await pipe.execute()

    async def position(self, job_id: str, run: int, lane: Lane) -> int | None:
        """How many runs are ahead of this one in its lane (None if not in the queue)."""
        queue = self.queue_for(lane)
        score = await self._pool.zscore(queue, arq_job_id(job_id, run))
        if score is None:
            return None
        return int(await self._pool.zcount(queue, "-inf", f"({score}"))

    async def depth(self, lane: Lane) -> int:
        """How many runs wait in (or are leased from) a lane's queue."""
        return int(await self._pool.zcard(self.queue_for(lane)))

    async def extend_leases(self, leased: Mapping[str, Sequence[str]], lease_s: float) -> None:
        """Lease running arq jobs (queue name -> arq ids) for ``lease_s`` from now: their
        scores move past the lease, so no poll sees them, and their in-progress markers
        live exactly as long, so a dead worker's jobs are picked up again within one."""
        lease_ms = int(lease_s * 1000)
        deadline = _now_ms() + lease_ms
        async with self._pool.pipeline(transaction=False) as pipe:
            for queue, arq_ids in leased.items():  # one ZADD per queue, not per job
                if arq_ids:
                    pipe.zadd(queue, dict.fromkeys(arq_ids, deadline), xx=True)
            for arq_ids in leased.values():
                for arq_id in arq_ids:
                    pipe.pexpire(in_progress_key_prefix + arq_id, lease_ms)
            await pipe.execute()

    async def defer(self, arq_id: str, queue: str, delay_s: float) -> None:
        """Score a running job ``delay_s`` from now: the delivery then ends without
        finishing it (arq's ``RetryJob``), and it is delivered again at that time (a job
        waiting on an asynchronous upstream, which holds no worker slot meanwhile)."""
        await self._pool.zadd(queue, {arq_id: _now_ms() + int(delay_s * 1000)}, xx=True)

    async def wake(self, job_id: str, run: int, lane: Lane) -> None:
        """Make a deferred run ready now (a canceled job cancels its upstream edit at
        once); nothing if it is not queued, and a run being delivered stays with its
        worker (arq's in-progress marker)."""
        await self._pool.zadd(self.queue_for(lane), {arq_job_id(job_id, run): _now_ms()}, xx=True)

    async def hand_back(self, arq_id: str, queue: str) -> None:
        """Make a job this worker gives up (shutdown) ready for another worker now."""
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zadd(queue, {arq_id: _now_ms()}, xx=True)
            pipe.delete(in_progress_key_prefix + arq_id)
            await pipe.execute()


PUSH_CHUNK = 1000  # ids per RPUSH: one command's arguments stay bounded


class BatchWindow:
    """A batch's variants on the bulk lane: all payloads written while the batch is
    created, then a window of them queued at once, the rest released one per finished
    variant (by ``release_window.lua``)."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._queue = lane_queue(queue_name, Lane.BULK)
        self._release = register(redis, "release_window")

    def write_payloads(self, pipe: Pipeline, job_ids: Sequence[str], *, ttl_s: int) -> None:
        """Write run 1's arq payload of each variant on ``pipe``; none is queued yet."""
        now_ms = _now_ms()
        for job_id in job_ids:
            arq_id = arq_job_id(job_id, 1)
            pipe.psetex(job_key_prefix + arq_id, ttl_s * 1000, _payload(job_id, 1, now_ms))

    def forget_payloads(self, pipe: Pipeline, job_ids: Sequence[str]) -> None:
        """Delete run 1's arq payload of each variant on ``pipe`` (a batch discarded
        before it was released)."""
        if job_ids:
            pipe.delete(*(job_key_prefix + arq_job_id(job_id, 1) for job_id in job_ids))

    def release_first(
        self,
        pipe: Pipeline,
        job_ids: Sequence[str],
        *,
        window: int,
        pending_key: str,
        ttl_s: int,
    ) -> None:
        """Queue run 1 of a batch's variants on ``pipe``, their payloads written already
        (``write_payloads``): the first ``window`` are scored into the bulk queue and
        the rest wait in ``pending_key`` (released one per finished variant by
        ``release_window``)."""
        now_ms = _now_ms()
        arq_ids = [arq_job_id(job_id, 1) for job_id in job_ids]
        if ready := arq_ids[:window]:
            pipe.zadd(self._queue, {arq_id: now_ms + index for index, arq_id in enumerate(ready)})
        waiting = arq_ids[window:]
        for start in range(0, len(waiting), PUSH_CHUNK):
            pipe.rpush(pending_key, *waiting[start : start + PUSH_CHUNK])
        if waiting:
            pipe.expire(pending_key, ttl_s)

    async def release_next(
        self, pipe: Pipeline, *, job_key: str, pending_key: str, token: str
    ) -> None:
        """Queue on ``pipe`` (after the job's transition) the release of the batch's next
        waiting variant, which happens when that transition finished a variant."""
        await self._release(
            keys=[job_key, pending_key, self._queue],
            args=[token, _now_ms()],
            client=pipe,
        )
