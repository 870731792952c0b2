"""Batches in Redis: the batch hash, its variants' jobs, and the pending window.

Layout (``P`` is the key prefix)::

    P:batch:{id}               hash: spec (JSON), tenant, status, total, n_<status>
                               (counts, kept by the job transition script), u_*/ud_*
                               (usage sums), finished_at (ms), cancel_requested,
                               webhook_events
    P:batch:{id}:jobs          list of the variants' job ids, in variant order
    P:batch:{id}:pending       list of ``arq_id|payload`` of variants not yet released
    P:batch:{id}:log           stream of the batch's status and counts at creation and
                               after every variant transition (the ids its SSE resume from)
    P:tenant:{tenant}:batches  sorted set of batch ids (lexical = creation order)
    P:bulk:clock               the bulk lane's fair-share virtual clock (``fair_clock``)

Only a window of each batch's variants sits in the bulk queue at a time; each
variant that finishes releases the next one (inside the transition script), so
concurrent batches take turns on a shared upstream instead of the first one
holding it until it is done, and a 10,000-variant batch costs the queue nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.core.batches import Batch, BatchSpec, BatchStatus, batch_from_hash
from app.core.jobs import JobSpec, JobStatus
from app.dispatch import arq_job_id, edit_payload
from app.store.jobs import ARQ_JOB_TTL_MS

CHUNK = 1000


class BatchStore:
    """Creates batches with their jobs in bulk and reads them back."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        retention_s: int,
        bulk_queue: str,
        on_transition: Callable[[JobStatus, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._on_transition = on_transition  # told how many queued jobs it created (metrics)
        self._prefix = prefix
        self._retention_s = retention_s
        self._bulk_queue = bulk_queue

    def batch_key(self, batch_id: str) -> str:
        """The Redis key of a batch's hash."""
        return f"{self._prefix}:batch:{batch_id}"

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    async def create(self, spec: BatchSpec, jobs: Sequence[JobSpec], window: int) -> Batch:
        """Store the batch and its queued jobs; enqueue the first ``window`` variants."""
        key = self.batch_key(spec.id)
        fields: dict[str, str | int] = {
            "spec": spec.model_dump_json(),
            "tenant": spec.tenant,
            "status": BatchStatus.RUNNING.value,
            "total": spec.total,
            "n_queued": spec.total,
        }
        if spec.webhook_url and "batch.completed" in spec.webhook_events:
            fields["webhook_events"] = " batch.completed "
        now_ms = int(time.time() * 1000)
        counts = {status.value: 0 for status in JobStatus} | {JobStatus.QUEUED.value: spec.total}
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._retention_s)
            pipe.xadd(
                f"{key}:log",
                {"status": BatchStatus.RUNNING.value, "counts": json.dumps(counts), "at": now_ms},
            )
            pipe.expire(f"{key}:log", self._retention_s)
            pipe.zadd(f"{self._prefix}:tenant:{spec.tenant}:batches", {spec.id: 0})
            for start in range(0, len(jobs), CHUNK):
                chunk = jobs[start : start + CHUNK]
                pipe.rpush(f"{key}:jobs", *(job.id for job in chunk))
                for job in chunk:
                    self._add_job(pipe, job, spec)
            await pipe.execute()
        await self._enqueue(key, jobs, window, now_ms)
        if self._on_transition is not None:
            self._on_transition(JobStatus.QUEUED, len(jobs))
        batch = await self.get(spec.id)
        assert batch is not None
        return batch

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
        key = self._job_key(job.id)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._retention_s)
        pipe.xadd(f"{key}:log", {"status": "queued", "run": 1, "at": int(job.created_at * 1000)})
        pipe.expire(f"{key}:log", self._retention_s)

    async def _enqueue(self, key: str, jobs: Sequence[JobSpec], window: int, now_ms: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for index, job in enumerate(jobs):
                arq_id = arq_job_id(job.id, 1)
                payload = edit_payload(job.id, 1, now_ms)
                if index < window:
                    pipe.psetex(job_key_prefix + arq_id, ARQ_JOB_TTL_MS, payload)
                    pipe.zadd(self._bulk_queue, {arq_id: now_ms + index})
                else:
                    pipe.rpush(f"{key}:pending", f"{arq_id}|".encode() + payload)
            pipe.expire(f"{key}:pending", self._retention_s)
            pipe.expire(f"{key}:jobs", self._retention_s)
            await pipe.execute()

    async def fair_clock(self) -> float:
        """The bulk lane's virtual clock: the highest rank admitted to an upstream so far.

        A new batch's variants rank from here, so it shares capacity with the batches
        already running from the moment it arrives — neither behind them (first come,
        first served) nor ahead of them (catching up from rank 0).
        """
        value = await self._redis.get(f"{self._prefix}:bulk:clock")
        return float(value) if value else 0.0

    async def get(self, batch_id: str) -> Batch | None:
        """The batch, or None."""
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self.batch_key(batch_id)))
        return batch_from_hash(row)

    async def job_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """The variants' job ids from index ``start`` to ``stop`` (inclusive)."""
        ids = await cast(
            Awaitable[list[str]],
            self._redis.lrange(f"{self.batch_key(batch_id)}:jobs", start, stop),
        )
        return ids

    async def pending(self, batch_id: str) -> int:
        """How many variants have not been released to the queue yet."""
        return int(
            await cast(Awaitable[int], self._redis.llen(f"{self.batch_key(batch_id)}:pending"))
        )

    async def begin_cancel(self, batch_id: str) -> None:
        """Mark the batch canceled and release no more variants."""
        key = self.batch_key(batch_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "cancel_requested", "1")
            pipe.delete(f"{key}:pending")
            await pipe.execute()

    async def list_for_tenant(
        self, tenant: str, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        """A page of the tenant's batches, newest first, and whether there are more."""
        key = f"{self._prefix}:tenant:{tenant}:batches"
        upper = f"({after}" if after else "+"
        ids = await self._redis.zrevrangebylex(key, upper, "-", start=0, num=limit + 1)
        batches = [await self.get(batch_id) for batch_id in ids[:limit]]
        return [batch for batch in batches if batch is not None], len(ids) > limit
