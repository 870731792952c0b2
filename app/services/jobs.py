"""What the API does with jobs: accept, read, wait for, cancel and retry them.

Accepting stores the inputs in object storage first, then records the job and
queues its run in one MULTI: a failure (or a crash) before that leaves nothing a
client was told about, and after it the job runs. A retry moves the job and queues
its new run in one MULTI too. With an ``Idempotency-Key`` the job's id is reserved
before anything is written, so a retried request after a crash returns that job
(or creates it under that id) instead of a second one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio.client import Pipeline

from app.blobs import ObjectStore, input_key, mask_key
from app.core.images import CheckedImage
from app.core.jobs import (
    TERMINAL,
    Job,
    JobInputs,
    JobSpec,
    JobStatus,
    StoredImage,
    is_job_id,
    new_job_id,
)
from app.core.providers_config import ProvidersConfig
from app.core.submissions import Submission
from app.core.validation import check_models
from app.crash_points import CrashPoints
from app.dispatch import EditQueue
from app.errors import Conflict, NotFound, ServiceUnavailable
from app.net import check_url
from app.services.reservations import Reservation
from app.store.events import JobEventHub
from app.store.jobs import JobPage, JobStore

log = logging.getLogger(__name__)


class JobService:
    """The job operations behind the HTTP handlers, scoped to one tenant per call."""

    def __init__(
        self,
        *,
        store: JobStore,
        storage: ObjectStore,
        queue: EditQueue,
        events: JobEventHub,
        providers: ProvidersConfig,
        allow_private_urls: bool = False,
        crash_points: CrashPoints | None = None,
    ) -> None:
        self._allow_private_urls = allow_private_urls
        self._crash_points = crash_points or CrashPoints()
        self._store = store
        self._storage = storage
        self._queue = queue
        self._events = events
        self._providers = providers

    def check_request(self, submission: Submission) -> None:
        """Every model the request names must exist and edit images; a webhook URL
        must be http(s) and not a literal private address."""
        url = submission.params.webhook_url
        if url is not None:
            check_url(url, param="webhook_url", allow_private=self._allow_private_urls)
        check_models(submission.params, self._providers)

    async def accept(
        self, submission: Submission, tenant: str, *, reservation: Reservation | None = None
    ) -> Job:
        """Store the inputs, record the job and enqueue its first run; with a
        ``reservation``, the job an interrupted earlier request reserved, if it exists."""
        self.check_request(submission)
        resumed = reservation.resumed if reservation is not None else None
        if resumed is not None and is_job_id(resumed):
            existing = await self._store.get(resumed)
            if existing is not None:
                if existing.spec.tenant != tenant:
                    raise Conflict(f"job {resumed} belongs to another key")
                return existing
            job_id = resumed  # nothing of it was recorded: create it under that id
        else:
            job_id = new_job_id()
            if reservation is not None:
                await reservation.reserve(job_id)
        inputs = await self.store_inputs(job_id, submission.images, submission.mask)
        self._crash_points.reach("job.inputs_stored")
        spec = JobSpec(
            id=job_id,
            tenant=tenant,
            created_at=time.time(),
            request=submission.params,
            inputs=inputs,
        )
        job = await self._store.create(
            spec, lambda pipe: self._queue.enqueue_on(pipe, job_id, 1, spec.lane)
        )
        self._crash_points.reach("job.recorded")
        return job

    async def store_inputs(
        self, owner_id: str, checked: list[CheckedImage], mask: CheckedImage | None
    ) -> JobInputs:
        """Write the input images (and mask) once under ``owner_id`` (a job or batch); an
        image from an uploaded file is copied server-side (``_store_input``)."""
        images = [
            (input_key(owner_id, index, image.extension), image)
            for index, image in enumerate(checked)
        ]
        entries = images + ([(mask_key(owner_id, mask.extension), mask)] if mask else [])
        await asyncio.gather(*(self._store_input(key, image) for key, image in entries))
        stored = [_stored(key, image) for key, image in entries]
        return JobInputs(
            images=tuple(stored[: len(images)]),
            mask=stored[-1] if mask else None,
        )

    async def _store_input(self, key: str, image: CheckedImage) -> None:
        """Write one input under ``key``: a server-side copy when its bytes are stored
        already (an uploaded file), else (or when the file's object has just gone) a put."""
        if image.stored_at is not None:
            try:
                await self._storage.copy(image.stored_at, key)
                return
            except ServiceUnavailable:
                log.info("input %s: copying %s failed; writing the bytes", key, image.stored_at)
        await self._storage.put(key, image.data, image.content_type)

    async def get(self, job_id: str, tenant: str) -> Job:
        """The tenant's job; NotFound for a missing job or another tenant's."""
        job = await self._store.get(job_id) if is_job_id(job_id) else None
        if job is None or job.spec.tenant != tenant:
            raise NotFound(f"no job {job_id}", param="job_id")
        return job

    async def wait(self, job_id: str, tenant: str, timeout: float) -> Job:
        """The job once terminal, or as it is after ``timeout`` seconds (long-poll)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._events.listen(job_id) as events:
            job = await self.get(job_id, tenant)
            while not job.status.terminal:
                event = await events.next_event(deadline - loop.time())
                if event is None:
                    break
                if event.status in TERMINAL:
                    job = await self.get(job_id, tenant)
        return job

    async def list(
        self, tenant: str, *, status: JobStatus | None, limit: int, after: str | None
    ) -> JobPage:
        """A page of the tenant's jobs, newest first."""
        return await self._store.list_for_tenant(tenant, status=status, limit=limit, after=after)

    async def cancel(self, job_id: str, tenant: str) -> Job:
        """Cancel a queued or running job; 409 Conflict if it already finished."""
        job = await self.get(job_id, tenant)
        result = await self._store.transition(
            job_id, JobStatus.CANCELED, fields={"finished_at": time.time()}
        )
        if not result.applied:
            raise Conflict(
                f"job {job_id} is {job.status.value}; only queued or running jobs can be canceled"
            )
        if result.previous == JobStatus.QUEUED:
            await self._queue.withdraw(job_id, result.run, job.lane)
        elif result.previous == JobStatus.RUNNING:
            # A run waiting on an asynchronous upstream is deferred in its queue: its
            # next delivery cancels the upstream's edit, so it is made due now.
            await self._queue.wake(job_id, result.run, job.lane)
        return await self.get(job_id, tenant)

    async def retry(self, job_id: str, tenant: str) -> Job:
        """Run a failed or canceled job again under the same id; 409 otherwise."""
        job = await self.get(job_id, tenant)
        lane = job.lane

        async def enqueue(pipe: Pipeline, job_key: str, token: str, run: int) -> None:
            await self._queue.enqueue_moved(
                pipe, job_key=job_key, token=token, job_id=job_id, run=run, lane=lane
            )

        result = await self._store.transition(
            job_id,
            JobStatus.QUEUED,
            sources=[JobStatus.FAILED, JobStatus.CANCELED],
            next_run=True,
            then=enqueue,
            fields={
                "error": None,
                "outcome": None,
                "cached": None,
                "started_at": None,
                "finished_at": None,
            },
        )
        if not result.applied:
            raise Conflict(
                f"job {job_id} is {job.status.value}; only failed or canceled jobs can be retried"
            )
        self._crash_points.reach("job.requeued")
        return await self.get(job_id, tenant)


def _stored(key: str, image: CheckedImage) -> StoredImage:
    return StoredImage(
        key=key,
        content_type=image.content_type,
        bytes=len(image.data),
        width=image.width,
        height=image.height,
        sha256=image.sha256,
    )
