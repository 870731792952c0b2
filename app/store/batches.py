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
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.core.batches import Batch, BatchSpec, BatchStatus, batch_from_hash
from app.core.jobs import JobSpec, JobStatus
from app.dispatch import BatchWindow
from app.store.keys import Keys

CHUNK = 1000
log = logging.getLogger(__name__)


class BatchStore:
    """Creates batches with their jobs in bulk and reads them back."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        window: BatchWindow,
        *,
        retention_s: int,
        on_transition: Callable[[JobStatus, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._window = window
        self._on_transition = on_transition  # told how many queued jobs it created (metrics)
        self._retention_s = retention_s

    async def create(
        self,
        spec: BatchSpec,
        jobs: Sequence[JobSpec],
        window: int,
        *,
        reached: Callable[[str], None] = lambda point: None,
    ) -> Batch:
        """Store the batch and its queued jobs; enqueue the first ``window`` variants.
        ``reached`` is told each crash point passed (``app.crash_points``)."""
        key = self._keys.batch(spec.id)
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
            log = self._keys.log(spec.id)
            pipe.xadd(
                log,
                {"status": BatchStatus.RUNNING.value, "counts": json.dumps(counts), "at": now_ms},
            )
            pipe.expire(log, self._retention_s)
            pipe.zadd(self._keys.tenant_batches(spec.tenant), {spec.id: 0})
            job_list = self._keys.batch_jobs(spec.id)
            for start in range(0, len(jobs), CHUNK):
                chunk = jobs[start : start + CHUNK]
                pipe.rpush(job_list, *(job.id for job in chunk))
                for job in chunk:
                    self._add_job(pipe, job, spec)
            pipe.expire(job_list, self._retention_s)
            await pipe.execute()
        reached("batch.jobs_written")
        # The jobs exist before any of them can be picked.
        async with self._redis.pipeline(transaction=False) as pipe:
            self._window.enqueue_variants(
                pipe,
                [job.id for job in jobs],
                window=window,
                pending_key=self._keys.batch_pending(spec.id),
                ttl_s=self._retention_s,
            )
            await pipe.execute()
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
