"""Synchronous drop-in image-edit endpoints, backed by the job queue.

``POST /v1/images/edits`` (OpenAI's image edit API) and
``POST /v2/router/images/edits`` (orq's router, routing knobs at the top level or
in ``orq``) take the bodies ``POST /v1/jobs`` takes, enqueue a job, hold the request
until the job finishes and answer 200 with the OpenAI images response. ``data`` is
``[{"b64_json"}]``, as GPT image models answer, unless the client sent
``response_format=url``.

Once the job exists every answer carries ``x-job-id``, and the job no longer depends
on the request: a client that hangs up, or a wait past ``sync_wait_limit_s`` or past
what the client said it waits (``app.http.requests.sync_deadline``: 504
``sync_wait_exceeded``), leaves it running, to be read at ``GET /v1/jobs/{id}``.
An answer a retry would only repeat (that 504, a failed or canceled job) says
``x-should-retry: false``, which the OpenAI SDKs obey; a retry they send anyway waits
on the same job (``app.http.middleware.idempotency``).
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from app.core.jobs import JobError, JobStatus
from app.core.submissions import Submission
from app.errors import (
    NO_RETRY_HEADERS,
    Conflict,
    ServiceUnavailable,
    SyncWaitExceeded,
    status_for_code,
)
from app.http.app_keys import FETCH_SESSION, IMAGE_DECODER, JOB_SERVICE, SETTINGS, STORAGE
from app.http.middleware.errors import ERRORS, REQUEST_ID, TENANT, error_response
from app.http.middleware.idempotency import RESERVATION, SYNC_JOB, remember_sync_job
from app.http.openapi import Reply, operation
from app.http.requests.file_uploads import callers_files
from app.http.requests.submissions import read_submission
from app.http.requests.sync_deadline import SyncDeadline, sync_deadline
from app.http.responses.image_stream import asks_for_stream, stream_edit
from app.http.schema import ImagesResponse, SyncEditForm, SyncEditHeaders, SyncEditJsonRequest
from app.services.job_views import render_job

JOB_ID_HEADER = "x-job-id"

# The statuses a failed job's error can be answered with (``status_for_code``).
FAILED_JOB_STATUSES = (400, 402, 413, 429, 500, 502, 503, 504)


@operation(
    "Edit an image synchronously",
    tags=("images",),
    headers=SyncEditHeaders,
    json_body=SyncEditJsonRequest,
    form_body=SyncEditForm,
    replies={
        200: Reply(
            ImagesResponse,
            headers=(JOB_ID_HEADER,),
            description="with stream=true: text/event-stream of image_edit.partial_image "
            "and image_edit.completed events, as OpenAI streams edits",
        )
    },
    errors={400, 408, 409, 413, 415, 422, 500, 502, 503, 504, *FAILED_JOB_STATUSES},
)
async def edit_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/edits, /v2/router/images/edits: edit synchronously (a queued job
    waited for); 200 with the OpenAI images response and ``x-job-id``. A retry with the
    same ``Idempotency-Key`` (``SYNC_JOB`` set) answers from the first request's job.
    With ``stream=true`` the answer is an event stream (``app.http.responses.image_stream``)."""
    job_id = request.get(SYNC_JOB) or await _accept(request)
    if await asks_for_stream(request, job_id):
        return await stream_edit(request, job_id)
    try:
        response = await _finished_job_response(request, job_id)
    except Exception as exc:
        # The job is accepted: every answer from here on names it (x-job-id).
        error = ERRORS.translate(exc)
        if error is None:
            raise
        if isinstance(error, ServiceUnavailable):
            error = ServiceUnavailable(
                f"{error.message}; job {job_id} was accepted: read it later at "
                f"GET /v1/jobs/{job_id}",
                retry_after=error.retry_after,
            )
        response = error_response(error, request[REQUEST_ID])
    response.headers[JOB_ID_HEADER] = job_id
    return response


async def _accept(request: web.Request) -> str:
    """Read, check and accept the request's edit; the new job's id (also as ``SYNC_JOB``)."""
    app = request.app
    submission = await read_submission(
        request, app[SETTINGS], app[IMAGE_DECODER], app[FETCH_SESSION], callers_files(request)
    )
    # Shielded: a client hanging up now must not leave a job recorded but never enqueued,
    # or one its retries cannot find.
    return await asyncio.shield(_accept_submission(request, submission))


async def _accept_submission(request: web.Request, submission: Submission) -> str:
    job = await request.app[JOB_SERVICE].accept(
        with_sync_defaults(submission),
        request[TENANT],
        reservation=request.get(RESERVATION),
    )
    await remember_sync_job(request, job.id)
    return job.id


def with_sync_defaults(submission: Submission) -> Submission:
    """``submission`` asking for ``b64_json`` unless the client chose a ``response_format``."""
    params = submission.params
    if "response_format" in params.model_fields_set:
        return submission
    inline = params.model_copy(update={"response_format": "b64_json"})
    return dataclasses.replace(submission, params=inline)


def failed_job_status(error: JobError) -> int:
    """The HTTP status for a failed job's error: by its code, else 502 for an upstream's."""
    return status_for_code(error.code, error.type)


async def _finished_job_response(request: web.Request, job_id: str) -> web.Response:
    """The job's outcome once it is terminal; SyncWaitExceeded if that takes too long."""
    app = request.app
    deadline = sync_deadline(request)
    job = await app[JOB_SERVICE].wait(job_id, request[TENANT], deadline.remaining_s())
    if job.status is JobStatus.SUCCEEDED:
        rendered = await render_job(job, app[STORAGE], inline=True)
        return web.json_response(rendered["result"])
    if job.status is JobStatus.FAILED:
        error = job.error or JobError(
            type="server_error", code="internal_error", message=f"job {job_id} failed"
        )
        body = {"error": {**error.model_dump(mode="json"), "param": None}}
        return web.json_response(body, status=failed_job_status(error), headers=NO_RETRY_HEADERS)
    if job.status is JobStatus.CANCELED:
        canceled = Conflict(f"job {job_id} was canceled before it finished")
        response = error_response(canceled, request[REQUEST_ID])
        response.headers.update(NO_RETRY_HEADERS)
        return response
    raise SyncWaitExceeded(_still_running(job_id, job.status, deadline))


def _still_running(job_id: str, status: JobStatus, deadline: SyncDeadline) -> str:
    """Why a synchronous edit stopped waiting for a job still ``status``."""
    if deadline.client_timeout_s is not None:
        waited = (
            f"after {deadline.wait_s:g} s, ahead of the client's "
            f"{deadline.client_timeout_s:g} s timeout"
        )
    else:
        waited = f"after {deadline.wait_s:g} s"
    return (
        f"job {job_id} is still {status.value} {waited}; it keeps running: "
        f"read it at GET /v1/jobs/{job_id}"
    )
