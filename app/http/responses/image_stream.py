"""The synchronous drop-in edit answered as a stream, in OpenAI's image edit format.

A drop-in request with ``stream=true`` (``app.http.handlers.images_compat``) is
accepted as a job like any other; the answer is then ``text/event-stream``, with
``x-job-id`` among its headers:

- ``event: image_edit.partial_image`` for each partial image the upstream streamed
  (``partial_images`` 1-3, an OpenAI-compatible upstream only; see
  ``worker.runs.partials``), relayed from the job's log in index order, with
  ``data: {"type", "b64_json", "created_at", "size", "quality", "background",
  "output_format", "partial_image_index"}``;
- ``: keepalive`` comment lines every ``stream_keepalive_s`` seconds while the job
  is queued or running, so proxies and clients keep an idle connection open;
- ``event: image_edit.completed`` once the job succeeds, one per output image, with
  ``data: {"type", "b64_json", "created_at", "size", "quality", "background",
  "output_format", "usage"}`` as OpenAI documents it. ``usage`` is the job's on the
  last event and zeros on earlier ones, so the events add up to the job's total;
- ``event: error`` when the job fails, is canceled or is still unfinished after
  ``sync_wait_limit_s``, with ``data: {"type": "error", "error": {"message", "type",
  "param", "code"}}`` (the openai SDK raises it as an ``APIError``). The job keeps
  running in the last case: read it at ``GET /v1/jobs/{id}``.

Anything refused before the stream starts (a bad field, an unknown job) is an
ordinary JSON error answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.blobs import ObjectStore
from app.core.jobs import PARTIAL, Job, JobError, JobStatus, Usage
from app.errors import Conflict, EditqError, ServiceUnavailable, SyncWaitExceeded
from app.http.app_keys import EVENTS, JOB_SERVICE, JOB_STORE, SETTINGS, STORAGE
from app.http.middleware.errors import REQUEST_ID, TENANT
from app.http.responses.sse import KEEPALIVE
from app.http.responses.streaming import started_stream
from app.store.jobs import JobStore

JOB_ID_HEADER = "x-job-id"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
COMPLETED = "image_edit.completed"
PARTIAL_IMAGE = "image_edit.partial_image"
LOG_PAGE = 500


async def stream_edit(request: web.Request, job_id: str) -> web.StreamResponse:
    """Answer the accepted job ``job_id`` as OpenAI's edit event stream; see the module
    docstring. NotFound (a JSON answer) if the job is not the caller's."""
    app = request.app
    service, tenant = app[JOB_SERVICE], request[TENANT]
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.headers[JOB_ID_HEADER] = job_id
    response.headers["x-request-id"] = request[REQUEST_ID]
    settings, loop = app[SETTINGS], asyncio.get_running_loop()
    deadline = loop.time() + settings.sync_wait_limit_s
    with app[EVENTS].listen(job_id) as events:
        job = await service.get(job_id, tenant)
        partials = _Partials(job, app[JOB_STORE], app[STORAGE])
        async with started_stream(request, response, f"image edit stream {job_id}"):
            while True:
                # The job is read before the log: every partial image logged before it
                # ended is relayed before the final events.
                job = await service.get(job_id, tenant)
                await partials.relay(response)
                remaining = deadline - loop.time()
                if job.status.terminal or remaining <= 0:
                    break
                if await events.next_event(min(settings.stream_keepalive_s, remaining)) is None:
                    await response.write(KEEPALIVE)
            for frame in await _final_frames(job, app[STORAGE], settings.sync_wait_limit_s):
                await response.write(frame)
    return response


@dataclass
class _Partials:
    """Relays a job's partial images from its log as ``image_edit.partial_image``
    events, each index once and in order: a retried call's repeats are skipped."""

    job: Job
    store: JobStore
    storage: ObjectStore
    last_id: str | None = None
    next_index: int = 0

    async def relay(self, response: web.StreamResponse) -> None:
        """Write the partial images logged since the last call."""
        if not self.job.spec.request.partial_images:
            return
        while True:
            entries = await self.store.log_since(self.job.id, self.last_id, LOG_PAGE)
            for entry_id, fields in entries:
                self.last_id = entry_id
                index = int(fields.get("index") or 0)
                if fields.get("status") == PARTIAL and index >= self.next_index:
                    await self._send(response, index, fields)
            if len(entries) < LOG_PAGE:
                return

    async def _send(self, response: web.StreamResponse, index: int, fields: dict[str, str]) -> None:
        try:
            image = await self.storage.get(fields.get("key", ""))
        except ServiceUnavailable:
            return  # a preview that cannot be read is skipped, like one never made
        at_s = int(fields.get("at") or 0) // 1000
        await response.write(_frame(PARTIAL_IMAGE, partial_event(self.job, image, index, at_s)))
        self.next_index = index + 1


def partial_event(job: Job, image: bytes, index: int, created_at: int) -> dict[str, Any]:
    """An ``image_edit.partial_image`` payload: partial image ``index`` of ``job``, with
    the settings the job asked for (``auto`` where it left them to the upstream)."""
    request = job.spec.request
    return {
        "type": PARTIAL_IMAGE,
        "b64_json": base64.b64encode(image).decode(),
        "created_at": created_at,
        "size": request.size or "auto",
        "quality": request.quality or "auto",
        "background": request.background or "auto",
        "output_format": request.output_format,
        "partial_image_index": index,
    }


async def _final_frames(job: Job, storage: ObjectStore, limit_s: float) -> list[bytes]:
    """The events that end the stream: the completed images, or one error."""
    if job.status is JobStatus.SUCCEEDED and job.outcome is not None:
        outcome = job.outcome
        blobs = await asyncio.gather(*(storage.get(output.key) for output in outcome.outputs))
        last = len(blobs) - 1
        return [
            _frame(COMPLETED, completed_event(job, blob, usage=index == last))
            for index, blob in enumerate(blobs)
        ]
    return [_frame("error", error_event(job, limit_s))]


def completed_event(job: Job, image: bytes, *, usage: bool) -> dict[str, Any]:
    """An ``image_edit.completed`` payload for one output of a succeeded job; ``usage``
    says whether it carries the job's usage (else zeros)."""
    outcome = job.outcome
    if outcome is None:
        raise ValueError(f"job {job.id} has no outcome")
    return {
        "type": COMPLETED,
        "b64_json": base64.b64encode(image).decode(),
        "created_at": int(job.finished_at or time.time()),
        "size": outcome.size,
        "quality": outcome.quality,
        "background": job.spec.request.background or "auto",
        "output_format": outcome.output_format,
        "usage": (outcome.usage if usage else Usage()).model_dump(mode="json"),
    }


def error_event(job: Job, limit_s: float) -> dict[str, Any]:
    """The ``error`` payload for a job that did not succeed: OpenAI's error object
    under ``error``, as the non-streamed answer would carry it."""
    if job.status is JobStatus.FAILED:
        error = job.error or JobError(
            type="server_error", code="internal_error", message=f"job {job.id} failed"
        )
        return {"type": "error", "error": {**error.model_dump(mode="json"), "param": None}}
    if job.status is JobStatus.CANCELED:
        refusal: EditqError = Conflict(f"job {job.id} was canceled before it finished")
    else:
        refusal = SyncWaitExceeded(
            f"job {job.id} is still {job.status.value} after {limit_s:g} s; it keeps "
            f"running: read it at GET /v1/jobs/{job.id}"
        )
    return {"type": "error", **refusal.body()}


def _frame(event: str, data: dict[str, Any]) -> bytes:
    """One event without an id: the drop-in stream is not resumable (the job's own
    event stream is)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def asks_for_stream(request: web.Request, job_id: str) -> bool:
    """Whether the accepted job ``job_id`` was asked for with ``stream=true`` (a retry
    with the same ``Idempotency-Key`` gets the answer its first request asked for)."""
    job = await request.app[JOB_SERVICE].get(job_id, request[TENANT])
    return job.spec.request.stream
