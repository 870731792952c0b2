"""HTTP handlers of the async job API: submit, read, wait, list, cancel, retry."""

from __future__ import annotations

from aiohttp import web

from app.core.public import job_urls
from app.http.app_keys import (
    BATCH_SERVICE,
    FETCH_SESSION,
    IMAGE_DECODER,
    JOB_SERVICE,
    SETTINGS,
    STORAGE,
)
from app.http.middleware.errors import TENANT
from app.http.middleware.idempotency import RESERVATION
from app.http.openapi import Reply, operation
from app.http.requests.file_uploads import callers_files
from app.http.requests.prefer import SUBMIT_HEADERS, applied, preferred_wait, submit_status
from app.http.requests.query import MAX_PAGE, float_query, parse_status
from app.http.requests.submissions import read_submission
from app.http.responses.lists import list_page
from app.http.schema import (
    EditForm,
    EditJsonRequest,
    JobList,
    JobObject,
    JobPageQuery,
    SubmitHeaders,
    WaitQuery,
)
from app.services.job_views import render_job


@operation(
    "Submit an edit job",
    tags=("jobs",),
    headers=SubmitHeaders,
    json_body=EditJsonRequest,
    form_body=EditForm,
    replies={
        201: Reply(JobObject, description="finished within Prefer: wait", headers=SUBMIT_HEADERS),
        202: Reply(JobObject, headers=SUBMIT_HEADERS),
    },
    errors=(400, 408, 409, 413, 415, 422, 503),
)
async def submit_job(request: web.Request) -> web.Response:
    """POST /v1/jobs: validate, store the inputs, enqueue; 202 with the job, or 201
    with the finished job when it finishes within ``Prefer: wait=N``."""
    app = request.app
    wait = preferred_wait(request, app[SETTINGS].max_wait_s)
    submission = await read_submission(
        request, app[SETTINGS], app[IMAGE_DECODER], app[FETCH_SESSION], callers_files(request)
    )
    service, tenant = app[JOB_SERVICE], request[TENANT]
    job = await service.accept(submission, tenant, reservation=request.get(RESERVATION))
    headers = {"Location": job_urls(job.id).get}
    if wait is not None:
        job = await service.wait(job.id, tenant, wait)
        headers.update(applied(wait))
    body = await render_job(job, app[STORAGE])
    status = submit_status(wait, job.status.terminal)
    return web.json_response(body, status=status, headers=headers)


@operation(
    "Read a job",
    tags=("jobs",),
    query=WaitQuery,
    replies={200: JobObject},
    errors=(400, 404, 503),
)
async def get_job(request: web.Request) -> web.Response:
    """GET /v1/jobs/{id}[?wait=N]: the job, after waiting up to N s for it to finish."""
    app = request.app
    wait = float_query(request, "wait", 0, 0, app[SETTINGS].max_wait_s)
    service = app[JOB_SERVICE]
    job_id = request.match_info["job_id"]
    tenant = request[TENANT]
    job = await (service.wait(job_id, tenant, wait) if wait else service.get(job_id, tenant))
    position = await app[BATCH_SERVICE].queue_position(job)
    return web.json_response(
        await render_job(job, app[STORAGE], inline=True, queue_position=position)
    )


@operation(
    "List jobs",
    tags=("jobs",),
    query=JobPageQuery,
    replies={200: JobList},
    errors=(400, 503),
)
async def list_jobs(request: web.Request) -> web.Response:
    """GET /v1/jobs?status=&limit=&after=: the caller's jobs, newest first."""
    app = request.app
    limit = int(float_query(request, "limit", 20, 1, MAX_PAGE))
    page = await app[JOB_SERVICE].list(
        request[TENANT],
        status=parse_status(request.query.get("status")),
        limit=limit,
        after=request.query.get("after") or None,
    )
    data = [await render_job(job, app[STORAGE]) for job in page.jobs]
    return web.json_response(list_page(data, has_more=page.has_more, last_id=page.last_id))


@operation("Cancel a job", tags=("jobs",), replies={200: JobObject}, errors=(404, 409, 503))
async def cancel_job(request: web.Request) -> web.Response:
    """POST /v1/jobs/{id}/cancel."""
    job = await request.app[JOB_SERVICE].cancel(request.match_info["job_id"], request[TENANT])
    return web.json_response(await render_job(job, request.app[STORAGE]))


@operation(
    "Retry a job",
    tags=("jobs",),
    replies={202: Reply(JobObject, headers=("Location",))},
    errors=(404, 409, 503),
)
async def retry_job(request: web.Request) -> web.Response:
    """POST /v1/jobs/{id}/retry: a failed or canceled job runs again under the same id."""
    job = await request.app[JOB_SERVICE].retry(request.match_info["job_id"], request[TENANT])
    return web.json_response(
        await render_job(job, request.app[STORAGE]),
        status=202,
        headers={"Location": job_urls(job.id).get},
    )
