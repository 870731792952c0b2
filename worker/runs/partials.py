"""Where an upstream's partial images go while a job runs: S3, then the job's log.

A job asking for ``partial_images`` has its first output's calls made with a
``partial_sink``: each partial image is stored at ``app.blobs.partial_key`` and
appended to the job's log (``JobStore.log_partial``), which announces it to the
job's event streams (``job.partial``) and to a streamed drop-in edit
(``image_edit.partial_image``). A partial image is only a preview: one that cannot
be stored or logged is dropped with a warning, and the edit goes on.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from app.blobs import partial_key
from app.core.jobs import Job
from app.errors import ServiceUnavailable
from worker.process.resources import WorkerContext
from worker.providers.base import PartialSink

log = logging.getLogger(__name__)


def partial_sink(context: WorkerContext, job: Job) -> PartialSink:
    """The sink of ``job``'s partial images (its current run and attempt)."""
    output_format = job.spec.request.output_format

    async def publish(index: int, image: bytes) -> None:
        key = partial_key(job.id, index, output_format, job.attempt)
        try:
            await context.storage.put(key, image, f"image/{output_format}")
            await context.store.log_partial(job.id, job.run, index, key)
        except (ServiceUnavailable, RedisError, OSError) as exc:
            log.warning("partial image %d of %s dropped: %s", index, job.id, exc)

    return publish
