"""The job object as the API shows it, with output links made at read time."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from app.blobs import ObjectStore
from app.core.jobs import Job
from app.core.public import job_json


async def render_job(
    job: Job, storage: ObjectStore, *, inline: bool = False, queue_position: int | None = None
) -> dict[str, Any]:
    """The public job object; a succeeded job's result carries presigned URLs, or
    ``b64_json`` when the request asked for it and ``inline`` is set (single-job reads)."""
    data: list[dict[str, Any]] | None = None
    if job.outcome is not None:
        outputs = job.outcome.outputs
        if inline and job.spec.request.response_format == "b64_json":
            blobs = await asyncio.gather(*(storage.get(output.key) for output in outputs))
            data = [{"b64_json": base64.b64encode(blob).decode()} for blob in blobs]
        else:
            data = [{"url": storage.presigned_url(output.key)} for output in outputs]
    return job_json(job, data, queue_position)
