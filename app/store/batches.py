"""Batches in Redis: the batch hash, its variants' jobs, and the pending window.

The keys are ``app.store.keys``'s. A batch's hash holds spec (JSON), tenant, status,
total, n_<status> (counts, kept by ``batch_progress.lua`` in every variant's
transition), u_*/ud_* (usage sums), finished_at (ms), cancel_requested and
webhook_events; ``batch_jobs`` lists the variants' job ids in variant order,
``batch_pending`` the arq ids of variants not released yet, ``log`` its status and
counts after every change (the ids its SSE resume from).

Only a window of each batch's variants sits in the bulk queue at a time; each
variant that finishes releases the next one (``release_window.lua``, in the same
MULTI as its transition), so concurrent batches take turns on a shared upstream
instead of the first one holding it until it is done, and a 10,000-variant batch
costs the queue nothing.

Creating a 10,000-variant batch is many writes, so it is made crash-safe rather than
one huge transaction. ``begin`` writes the record with status ``creating`` (no client
sees it) and the variants' ids, and takes the batch's ``creator`` key (the creating
request's token, with a lease of ``lease_s``); ``write_jobs`` writes the variants in
bounded chunks, each a MULTI fenced on that token (WATCH) that renews the lease; and
``release`` makes it ``running``, lists it and queues its first window in one fenced
MULTI. Until then no variant can run. A creator that dies leaves the batch
``creating``: a retry of the same request (``take_over`` once the lease lapsed)
writes the chunks again (the same ids, the same content) and releases it, or the
worker's sweeper discards it when no retry came (``stale_creations``, ``discard``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from app.core.batches import CREATING, Batch, BatchSpec, BatchStatus, batch_from_hash
from app.core.jobs import JobSpec, JobStatus
from app.dispatch import BatchWindow
from app.store.keys import Keys

CHUNK = 1000
log = logging.getLogger(__name__)


class CreationLost(Exception):
    """Another request (or the stale-creation sweeper) holds this batch's creation now."""


@dataclass(frozen=True)
class CreatingBatch:
    """A batch whose creation has begun and not finished: its spec and variant ids."""

    spec: BatchSpec
    job_ids: tuple[str, ...]


class BatchStore:
    """Creates batches with their jobs in bulk and reads them back."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        window: BatchWindow,
        *,
        retention_s: int,
        lease_s: float,
        on_transition: Callable[[JobStatus, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._lease_ms = int(lease_s * 1000)
        self._keys = keys
        self._window = window
        self._on_transition = on_transition  # told how many queued jobs it created (metrics)
        self._retention_s = retention_s

    async def begin(self, spec: BatchSpec, job_ids: Sequence[str], token: str) -> bool:
        """Start creating the batch: its record (status ``creating``, seen by no client)
        and its variants' ids, held by ``token`` for one lease. False, writing
        nothing, when another request holds the batch's creation."""
        creator = self._keys.batch_creator(spec.id)
        if not await self._redis.set(creator, token, nx=True, px=self._lease_ms):
            return False
        key, job_list = self._keys.batch(spec.id), self._keys.batch_jobs(spec.id)
        fields: dict[str, str | int] = {
            "spec": spec.model_dump_json(),
            "tenant": spec.tenant,
            "status": CREATING,
            "total": spec.total,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._retention_s)
            pipe.delete(job_list)
            for start in range(0, len(job_ids), CHUNK):
                pipe.rpush(job_list, *job_ids[start : start + CHUNK])
            pipe.expire(job_list, self._retention_s)
            pipe.zadd(self._keys.batches_being_created, {spec.id: int(time.time() * 1000)})
            await pipe.execute()
        return True

    async def take_over(self, batch_id: str, token: str) -> bool:
        """Hold the creation of a batch whose creator's lease lapsed; False while
        another request (or the sweeper) holds it."""
        creator = self._keys.batch_creator(batch_id)
        return bool(await self._redis.set(creator, token, nx=True, px=self._lease_ms))

    async def being_created(self, batch_id: str) -> CreatingBatch | None:
        """The batch as far as its creation got, while it is still being created."""
        key = self._keys.batch(batch_id)
        status, spec = await cast(
            Awaitable[list[str | None]], self._redis.hmget(key, ["status", "spec"])
        )
        if status != CREATING or spec is None:
            return None
        job_ids = await self.job_ids(batch_id)
        return CreatingBatch(BatchSpec.model_validate_json(spec), tuple(job_ids))

    async def write_jobs(self, batch: BatchSpec, jobs: Sequence[JobSpec], token: str) -> None:
        """Write one bounded chunk of the batch's variants (records, logs, arq payloads)
        and renew the creation's lease; CreationLost (writing nothing) if ``token``
        no longer holds it. Writing a chunk again writes the same thing."""
        creator = self._keys.batch_creator(batch.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(creator)
            if await cast(Awaitable[str | None], pipe.get(creator)) != token:
                raise CreationLost(f"batch {batch.id} is being created by another request")
            pipe.multi()  # type: ignore[no-untyped-call]
            for job in jobs:
                self._add_job(pipe, job, batch)
            self._window.write_payloads(pipe, [job.id for job in jobs], ttl_s=self._retention_s)
            pipe.pexpire(creator, self._lease_ms)
            try:
                await pipe.execute()
            except WatchError:
                raise CreationLost(f"batch {batch.id} was taken over while written") from None

    async def release(
        self, batch: BatchSpec, job_ids: Sequence[str], token: str, window: int
    ) -> None:
        """Finish the creation in one MULTI: the batch becomes ``running``, is listed for
        its tenant and its first ``window`` variants are queued. CreationLost if
        ``token`` no longer holds it; a batch released already stays as it is."""
        key, creator = self._keys.batch(batch.id), self._keys.batch_creator(batch.id)
        now_ms = int(time.time() * 1000)
        counts = {status.value: 0 for status in JobStatus} | {JobStatus.QUEUED.value: batch.total}
        fields: dict[str, str | int] = {
            "status": BatchStatus.RUNNING.value,
            f"n_{JobStatus.QUEUED.value}": batch.total,
        }
        if batch.webhook_url and "batch.completed" in batch.webhook_events:
            fields["webhook_events"] = " batch.completed "
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(creator, key)
            held = await cast(Awaitable[str | None], pipe.get(creator)) == token
            status = await cast(Awaitable[str | None], pipe.hget(key, "status"))
            if not held or status != CREATING:
                raise CreationLost(f"batch {batch.id} is being created by another request")
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, mapping=fields)
            log_key = self._keys.log(batch.id)
            running = BatchStatus.RUNNING.value
            pipe.xadd(log_key, {"status": running, "counts": json.dumps(counts), "at": now_ms})
            pipe.expire(log_key, self._retention_s)
            pipe.zadd(self._keys.tenant_batches(batch.tenant), {batch.id: 0})
            self._window.release_first(
                pipe,
                job_ids,
                window=window,
                pending_key=self._keys.batch_pending(batch.id),
                ttl_s=self._retention_s,
            )
            pipe.delete(creator)
            pipe.zrem(self._keys.batches_being_created, batch.id)
            try:
                await pipe.execute()
            except WatchError:
                raise CreationLost(f"batch {batch.id} was taken over while released") from None
        if self._on_transition is not None:
            self._on_transition(JobStatus.QUEUED, len(job_ids))

    async def stale_creations(self, started_before_ms: int, limit: int = 100) -> list[str]:
        """Ids of batches whose creation began before ``started_before_ms`` and is not
        finished (the sweeper's candidates; each may still be held by a live creator)."""
        ids = await self._redis.zrangebyscore(
            self._keys.batches_being_created, "-inf", started_before_ms, start=0, num=limit
        )
        return [str(batch_id) for batch_id in ids]

    async def discard(self, batch_id: str, token: str) -> bool:
        """Delete everything a creation that will not be finished wrote (its variants'
        records, logs and payloads, then the batch), holding it with ``token``; its
        stored inputs are left to the retention janitor, due now. False if ``token``
        does not hold it (nothing is deleted then)."""
        creator, key = self._keys.batch_creator(batch_id), self._keys.batch(batch_id)
        if await self._redis.get(creator) != token:
            return False
        if await cast(Awaitable[str | None], self._redis.hget(key, "status")) not in (
            CREATING,
            None,
        ):
            await self._redis.zrem(self._keys.batches_being_created, batch_id)
            return False  # released meanwhile: nothing to discard
        job_ids = await self.job_ids(batch_id)
        for start in range(0, len(job_ids), CHUNK):
            chunk = job_ids[start : start + CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.delete(self._keys.job(job_id), self._keys.log(job_id))
                self._window.forget_payloads(pipe, chunk)
                pipe.pexpire(creator, self._lease_ms)
                await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key, self._keys.batch_jobs(batch_id), creator)
            pipe.zrem(self._keys.batches_being_created, batch_id)
            pipe.zadd(self._keys.retention, {batch_id: int(time.time() * 1000)})
            await pipe.execute()
        return True

    def _add_job(self, pipe: Pipeline, job: JobSpec, batch: BatchSpec) -> None:
        fields: dict[str, str | int] = {
            "spec": job.model_dump_json(),
            "tenant": job.tenant,
            "status": JobStatus.QUEUED.value,
            "run": 1,
            "attempts": "[]",
            "batch": batch.id,
        }
        job_events = [kind for kind in batch.webhook_events if kind.startswith("job.")]
        if batch.webhook_url and job_events:
            fields["webhook_events"] = f" {' '.join(job_events)} "
        key, log = self._keys.job(job.id), self._keys.log(job.id)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._retention_s)
        pipe.xadd(log, {"status": "queued", "run": 1, "at": int(job.created_at * 1000)})
        pipe.expire(log, self._retention_s)

    async def fair_clock(self) -> float:
        """The bulk lane's virtual clock: the highest rank admitted to an upstream so far.

        A new batch's variants rank from here, so it shares capacity with the batches
        already running from the moment it arrives — neither behind them (first come,
        first served) nor ahead of them (catching up from rank 0).
        """
        value = await self._redis.get(self._keys.bulk_clock)
        return float(value) if value else 0.0

    async def get(self, batch_id: str) -> Batch | None:
        """The batch, or None."""
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self._keys.batch(batch_id)))
        try:
            return batch_from_hash(row)
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError included
            log.error("batch %s has an unreadable record (%s); it is skipped", batch_id, exc)
            return None

    async def job_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """The variants' job ids from index ``start`` to ``stop`` (inclusive)."""
        ids = await cast(
            Awaitable[list[str]],
            self._redis.lrange(self._keys.batch_jobs(batch_id), start, stop),
        )
        return ids

    async def pending(self, batch_id: str) -> int:
        """How many variants have not been released to the queue yet."""
        return int(await cast(Awaitable[int], self._redis.llen(self._keys.batch_pending(batch_id))))

    async def begin_cancel(self, batch_id: str) -> None:
        """Mark the batch canceled and release no more variants."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.batch(batch_id), "cancel_requested", "1")
            pipe.delete(self._keys.batch_pending(batch_id))
            await pipe.execute()

    async def list_for_tenant(
        self, tenant: str, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        """A page of the tenant's batches, newest first, and whether there are more."""
        key = self._keys.tenant_batches(tenant)
        upper = f"({after}" if after else "+"
        ids = await self._redis.zrevrangebylex(key, upper, "-", start=0, num=limit + 1)
        batches = [await self.get(batch_id) for batch_id in ids[:limit]]
        return [batch for batch in batches if batch is not None], len(ids) > limit
