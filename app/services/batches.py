"""What the API does with batches: accept, read, wait for, page through, cancel."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence

from app.core.batches import Batch, BatchSpec, BatchStatus, variant_jobs
from app.core.jobs import (
    Job,
    JobStatus,
    Lane,
    is_batch_id,
    is_job_id,
    new_batch_id,
    new_job_id,
)
from app.core.providers_config import ProvidersConfig
from app.core.submissions import BatchSubmission
from app.core.validation import check_models, in_variant
from app.crash_points import CrashPoints
from app.dispatch import EditQueue
from app.errors import Conflict, EditqError, IdempotencyKeyInUse, NotFound
from app.net import check_url
from app.services.jobs import JobService
from app.services.reservations import Reservation
from app.store.batches import BatchStore, CreationLost
from app.store.events import JobEventHub
from app.store.jobs import JobStore

CANCEL_CHUNK = 500
WRITE_CHUNK = 250  # variants per MULTI while a batch is created (bounded loop time)


def _still_being_created(batch_id: str) -> IdempotencyKeyInUse:
    return IdempotencyKeyInUse(
        f"batch {batch_id} is still being created by another request; retry later",
        param="Idempotency-Key",
    )


class BatchService:
    """The batch operations behind the HTTP handlers, scoped to one tenant per call."""

    def __init__(
        self,
        *,
        batches: BatchStore,
        jobs: JobStore,
        job_service: JobService,
        queue: EditQueue,
        events: JobEventHub,
        window: int,
        providers: ProvidersConfig,
        allow_private_urls: bool,
        crash_points: CrashPoints | None = None,
    ) -> None:
        self._crash_points = crash_points or CrashPoints()
        self._providers = providers
        self._batches = batches
        self._jobs = jobs
        self._job_service = job_service
        self._queue = queue
        self._events = events
        self._window = window
        self._allow_private_urls = allow_private_urls

    async def accept(
        self,
        submission: BatchSubmission,
        tenant: str,
        *,
        reservation: Reservation | None = None,
    ) -> Batch:
        """Store the inputs once, create every variant's job, release the first window;
        with a ``reservation``, finish or return the batch an interrupted earlier
        request with the same key reserved instead of making another."""
        options = submission.options
        if options.webhook_url is not None:
            check_url(
                options.webhook_url, param="webhook_url", allow_private=self._allow_private_urls
            )
        for index, params in enumerate(submission.variants):
            try:
                check_models(params, self._providers)
            except EditqError as exc:
                raise in_variant(exc, index, submission.overrides[index]) from None
        resumed = reservation.resumed if reservation is not None else None
        if resumed is not None and is_batch_id(resumed):
            batch = await self._resume(resumed, submission, tenant)
            if batch is not None:
                return batch
            batch_id = resumed  # nothing of it was written (or it was discarded): anew
        else:
            batch_id = new_batch_id()
            if reservation is not None:
                await reservation.reserve(batch_id)
        inputs = await self._job_service.store_inputs(batch_id, submission.images, submission.mask)
        self._crash_points.reach("batch.inputs_stored")
        now = time.time()
        spec = BatchSpec(
            id=batch_id,
            tenant=tenant,
            created_at=now,
            total=len(submission.variants),
            inputs=inputs,
            metadata=options.metadata,
            webhook_url=options.webhook_url,
            webhook_events=options.webhook_events,
            first_rank=await self._batches.fair_clock(),
        )
        job_ids = [new_job_id(now) for _ in submission.variants]
        token = os.urandom(12).hex()
        if not await self._batches.begin(spec, job_ids, token):
            raise _still_being_created(batch_id)
        return await self._finish_creation(spec, job_ids, submission, token)

    async def _resume(
        self, batch_id: str, submission: BatchSubmission, tenant: str
    ) -> Batch | None:
        """The batch an interrupted request with the same key reserved: as it is once
        released, finished first while still being created; None if it was never
        written (or was discarded)."""
        batch = await self._batches.get(batch_id)
        if batch is not None:
            if batch.spec.tenant != tenant:
                raise Conflict(f"batch {batch_id} belongs to another key")
            return batch
        creating = await self._batches.being_created(batch_id)
        if creating is None:
            return None
        token = os.urandom(12).hex()
        if not await self._batches.take_over(batch_id, token):
            raise _still_being_created(batch_id)
        return await self._finish_creation(creating.spec, creating.job_ids, submission, token)

    async def _finish_creation(
        self,
        spec: BatchSpec,
        job_ids: Sequence[str],
        submission: BatchSubmission,
        token: str,
    ) -> Batch:
        """Write every variant in bounded chunks (built chunk by chunk, so neither memory
        nor the event loop holds all of them at once), then release the batch."""
        try:
            for start in range(0, len(job_ids), WRITE_CHUNK):
                stop = start + WRITE_CHUNK
                chunk = variant_jobs(
                    spec, job_ids[start:stop], submission.variants[start:stop], start=start
                )
                await self._batches.write_jobs(spec, chunk, token)
                self._crash_points.reach("batch.jobs_written")
            await self._batches.release(spec, job_ids, token, self._window)
        except CreationLost:
            raise _still_being_created(spec.id) from None
        self._crash_points.reach("batch.released")
        return await self.get(spec.id, spec.tenant)

    async def get(self, batch_id: str, tenant: str) -> Batch:
        """The tenant's batch; NotFound for a missing one or another tenant's."""
        batch = await self._batches.get(batch_id) if is_batch_id(batch_id) else None
        if batch is None or batch.spec.tenant != tenant:
            raise NotFound(f"no batch {batch_id}", param="batch_id")
        return batch

    async def wait(self, batch_id: str, tenant: str, timeout: float) -> Batch:
        """The batch once it is no longer running, or as it is after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._events.listen(batch_id) as events:
            batch = await self.get(batch_id, tenant)
            while batch.status == BatchStatus.RUNNING:
                event = await events.next_event(deadline - loop.time())
                if event is None:
                    break
                if event.status != BatchStatus.RUNNING.value:
                    batch = await self.get(batch_id, tenant)
        return batch

    async def page(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        """A page of the tenant's batches, newest first."""
        return await self._batches.list_for_tenant(tenant, limit=limit, after=after)

    async def jobs_page(
        self, batch: Batch, *, status: JobStatus | None, limit: int, after: str | None
    ) -> tuple[list[Job], bool]:
        """Variants' jobs in variant order after job ``after``, filtered by status."""
        start = 0
        if after is not None:
            anchor = await self._jobs.get(after) if is_job_id(after) else None
            if anchor is None or anchor.spec.batch_id != batch.id:
                raise NotFound(f"no job {after} in batch {batch.id}", param="after")
            start = (anchor.spec.variant_index or 0) + 1
        found: list[Job] = []
        while start < batch.spec.total:
            ids = await self._batches.job_ids(batch.id, start, start + max(limit, 100) - 1)
            for job in await self._jobs.get_many(ids):
                if job is not None and (status is None or job.status == status):
                    if len(found) == limit:
                        return found, True
                    found.append(job)
            start += len(ids)
            if not ids:
                break
        return found, False

    async def all_jobs(self, batch: Batch, chunk: int = 500) -> AsyncIterator[Job | None]:
        """Every variant's job in variant order (None where a record expired)."""
        for start in range(0, batch.spec.total, chunk):
            ids = await self._batches.job_ids(batch.id, start, start + chunk - 1)
            for job in await self._jobs.get_many(ids):
                yield job

    async def cancel(self, batch_id: str, tenant: str) -> Batch:
        """Cancel every variant not yet finished; 409 once the batch is not running."""
        batch = await self.get(batch_id, tenant)
        if batch.status != BatchStatus.RUNNING:
            raise Conflict(f"batch {batch_id} is {batch.status.value}")
        await self._batches.begin_cancel(batch_id)
        async for job in self.all_jobs(batch, CANCEL_CHUNK):
            if job is not None and not job.status.terminal:
                result = await self._jobs.transition(
                    job.id, JobStatus.CANCELED, fields={"finished_at": time.time()}
                )
                if result.applied and result.previous == JobStatus.QUEUED:
                    await self._queue.withdraw(job.id, result.run, job.lane)
        return await self.get(batch_id, tenant)

    async def queue_position(self, job: Job) -> int | None:
        """Roughly how many runs are ahead of a queued job in its lane."""
        if job.status != JobStatus.QUEUED:
            return None
        position = await self._queue.position(job.id, job.run, job.lane)
        if position is not None or job.spec.batch_id is None:
            return position
        batch = await self._batches.get(job.spec.batch_id)
        if batch is None:
            return None
        released = batch.spec.total - await self._batches.pending(batch.id)
        ahead_in_window = await self._queue.depth(Lane.BULK)
        return ahead_in_window + max(0, (job.spec.variant_index or 0) - released)
