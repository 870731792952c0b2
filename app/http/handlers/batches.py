"""HTTP handlers of batches: submit, read, wait, list, page, results, cancel."""

from __future__ import annotations

import json

from aiohttp import web

from app.blobs import ObjectStore
from app.core.jobs import Job
from app.core.public import batch_json, batch_urls
from app.http.app_keys import BATCH_SERVICE, FETCH_SESSION, IMAGE_DECODER, SETTINGS, STORAGE
from app.http.middleware.errors import REQUEST_ID, TENANT
from app.http.middleware.idempotency import RESERVATION
from app.http.openapi import Reply, operation
from app.http.requests.batch_submissions import read_batch_submission
from app.http.requests.file_uploads import callers_files
from app.http.requests.prefer import SUBMIT_HEADERS, applied, preferred_wait, submit_status
from app.http.requests.query import MAX_PAGE, float_query, parse_status
from app.http.responses.lists import list_page
from app.http.responses.streaming import started_stream
from app.http.schema import (
    BatchForm,
    BatchJsonRequest,
    BatchList,
    BatchObject,
    BatchResultLine,
    JobList,
    JobPageQuery,
    PageQuery,
    SubmitHeaders,
    WaitQuery,
)
from app.services.job_views import render_job


@operation(
    "Submit a batch",
    tags=("batches",),
    headers=SubmitHeaders,
    json_body=BatchJsonRequest,
    form_body=BatchForm,
    replies={
        201: Reply(BatchObject, description="finished within Prefer: wait", headers=SUBMIT_HEADERS),
        202: Reply(BatchObject, headers=SUBMIT_HEADERS),
    },
    errors=(400, 408, 409, 413, 415, 422, 503),
)
async def submit_batch(request: web.Request) -> web.Response:
    """POST /v1/batches: shared defaults plus variants (or n copies); 202 with the batch,
    or 201 with the finished batch when it finishes within ``Prefer: wait=N``."""
    app = request.app
    wait = preferred_wait(request, app[SETTINGS].max_wait_s)
    submission = await read_batch_submission(
        request, app[SETTINGS], app[IMAGE_DECODER], app[FETCH_SESSION], callers_files(request)
    )
    service, tenant = app[BATCH_SERVICE], request[TENANT]
    batch = await service.accept(submission, tenant, reservation=request.get(RESERVATION))
    headers = {"Location": batch_urls(batch.id).get}
    if wait is not None:
        batch = await service.wait(batch.id, tenant, wait)
        headers.update(applied(wait))
    status = submit_status(wait, batch.status.terminal)
    return web.json_response(batch_json(batch), status=status, headers=headers)


@operation(
    "Read a batch",
    tags=("batches",),
    query=WaitQuery,
    replies={200: BatchObject},
    errors=(400, 404, 503),
)
async def get_batch(request: web.Request) -> web.Response:
    """GET /v1/batches/{id}[?wait=N]: the batch, after waiting up to N s for it to finish."""
    app = request.app
    wait = float_query(request, "wait", 0, 0, app[SETTINGS].max_wait_s)
    service, batch_id, tenant = app[BATCH_SERVICE], request.match_info["batch_id"], request[TENANT]
    batch = await (service.wait(batch_id, tenant, wait) if wait else service.get(batch_id, tenant))
    return web.json_response(batch_json(batch))


@operation(
    "List batches", tags=("batches",), query=PageQuery, replies={200: BatchList}, errors=(400, 503)
)
async def list_batches(request: web.Request) -> web.Response:
    """GET /v1/batches?limit=&after=: the caller's batches, newest first."""
    limit = int(float_query(request, "limit", 20, 1, MAX_PAGE))
    batches, more = await request.app[BATCH_SERVICE].page(
        request[TENANT], limit=limit, after=request.query.get("after") or None
    )
    data = [batch_json(batch) for batch in batches]
    return web.json_response(list_page(data, has_more=more))


@operation(
    "A batch's jobs",
    tags=("batches",),
    query=JobPageQuery,
    replies={200: JobList},
    errors=(400, 404, 503),
)
async def batch_jobs(request: web.Request) -> web.Response:
    """GET /v1/batches/{id}/jobs?status=&limit=&after=: the variants' jobs, in order."""
    app = request.app
    service = app[BATCH_SERVICE]
    batch = await service.get(request.match_info["batch_id"], request[TENANT])
    jobs, more = await service.jobs_page(
        batch,
        status=parse_status(request.query.get("status")),
        limit=int(float_query(request, "limit", 20, 1, MAX_PAGE)),
        after=request.query.get("after") or None,
    )
    data = [await render_job(job, app[STORAGE]) for job in jobs]
    return web.json_response(list_page(data, has_more=more))


@operation(
    "A batch's results",
    tags=("batches",),
    replies={200: Reply(BatchResultLine, media_type="application/jsonl")},
    errors=(404, 503),
)
async def batch_results(request: web.Request) -> web.StreamResponse:
    """GET /v1/batches/{id}/results: JSON Lines, one per variant in order (index, job id,
    status, output URLs or error)."""
    app = request.app
    service = app[BATCH_SERVICE]
    batch = await service.get(request.match_info["batch_id"], request[TENANT])
    response = web.StreamResponse(
        headers={"Content-Type": "application/jsonl", "x-request-id": request[REQUEST_ID]}
    )
    async with started_stream(request, response, f"results of {batch.id}"):
        index = 0
        async for job in service.all_jobs(batch):
            line = _result_line(index, job, app[STORAGE])
            await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            index += 1
    return response


def _result_line(index: int, job: Job | None, storage: ObjectStore) -> dict[str, object]:
    if job is None:
        return {"index": index, "job_id": None, "status": "expired"}
    line: dict[str, object] = {"index": index, "job_id": job.id, "status": job.status.value}
    if job.outcome is not None:
        line["outputs"] = [storage.presigned_url(output.key) for output in job.outcome.outputs]
        line["usage"] = job.outcome.usage.model_dump(mode="json")
    if job.error is not None:
        line["error"] = job.error.model_dump(mode="json")
    return line


@operation("Cancel a batch", tags=("batches",), replies={200: BatchObject}, errors=(404, 409, 503))
async def cancel_batch(request: web.Request) -> web.Response:
    """POST /v1/batches/{id}/cancel: cancel every variant not yet finished."""
    batch = await request.app[BATCH_SERVICE].cancel(request.match_info["batch_id"], request[TENANT])
    return web.json_response(batch_json(batch))
