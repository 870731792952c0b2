"""Live progress of a job or a batch as Server-Sent Events.

Every transition is appended to the subject's Redis stream (``<key>:log``, see
``app.store.jobs``); each entry becomes one event whose ``id`` is its stream id:

- a job: ``event: job.<status>`` (queued, running, succeeded, failed, canceled) and
  ``data: {"status", "run", "at"}`` (``at`` in seconds). A terminal event that is
  still the job's current state also carries ``"job"``, the job object. A job asking
  for ``partial_images`` also gets ``event: job.partial`` for each preview its
  upstream streams, with ``"partial_image_index"`` and ``"url"`` (presigned).
- a batch: ``event: batch.progress`` for every change of its counts while it runs,
  then ``batch.completed`` or ``batch.canceled``; ``data: {"status", "counts", "at",
  "batch"}``, ``batch`` being the batch object as it is when the event is sent.

A stream first replays the entries after ``Last-Event-ID`` (the header, else
``?last_event_id=``; the whole log without one), then sends new ones as the events
channel (Redis pub/sub) announces them, rereading the log after the last id sent,
so nothing is skipped or repeated. After 15 s of silence it sends a ``: keepalive``
comment and rereads the log (a safety net should an announcement be lost). It ends
after the last event that leaves the job terminal (the batch no longer running); a
job retried later can be followed again by resuming from that event. A stream opens
with ``retry: 3000``; a reconnect (a resume id given) to a subject that has ended and
has nothing after that id answers 204 No Content, which is how an ``EventSource`` is
told to stop reconnecting.

An ``EventSource`` cannot send a key: ``POST .../events/url`` gives a stream URL whose
signed ``?token=`` opens that one stream for an hour (``app.core.stream_tokens``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from redis.exceptions import RedisError

from app.blobs import ObjectStore
from app.core.batches import BatchStatus
from app.core.jobs import PARTIAL, TERMINAL
from app.core.public import batch_json
from app.core.stream_tokens import STREAM_TOKEN_TTL_S, issue_token
from app.errors import NotFound
from app.http.app_keys import (
    BATCH_SERVICE,
    EVENTS,
    JOB_SERVICE,
    JOB_STORE,
    STORAGE,
    STREAM_SECRET,
)
from app.http.middleware.errors import REQUEST_ID, TENANT
from app.http.openapi import Reply, operation
from app.http.responses.sse import KEEPALIVE, RETRY, encode_event, parse_stream_id
from app.http.responses.streaming import started_stream
from app.http.schema import EventsHeaders, EventsQuery, StreamUrl
from app.services.batches import BatchService
from app.services.job_views import render_job
from app.store.events import JobEventStream
from app.store.jobs import JobStore

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
LOG_PAGE = 500
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


EVENT_REPLIES = {
    200: Reply(media_type="text/event-stream", description="Server-Sent Events"),
    204: Reply(media_type="", description="a reconnect after the last event: nothing more"),
}


class _Feed(Protocol):
    """What a stream follows: the job or batch (by id), how entries read, when it ends."""

    @property
    def subject(self) -> str: ...

    def ends(self, status: str) -> bool: ...

    async def frame(self, entry_id: str, fields: dict[str, str]) -> bytes: ...


@dataclass(frozen=True)
class _JobFeed:
    subject: str  # the job id
    store: JobStore
    storage: ObjectStore

    def ends(self, status: str) -> bool:
        return status in TERMINAL

    async def frame(self, entry_id: str, fields: dict[str, str]) -> bytes:
        data: dict[str, Any] = {
            "status": fields.get("status", ""),
            "run": int(fields.get("run") or 0),
            "at": _seconds(fields.get("at")),
        }
        if data["status"] == PARTIAL:
            data["partial_image_index"] = int(fields.get("index") or 0)
            data["url"] = self.storage.presigned_url(fields.get("key", ""))
        elif self.ends(data["status"]):
            job = await self.store.get(self.subject)
            if job is not None and (job.status.value, job.run) == (data["status"], data["run"]):
                data["job"] = await render_job(job, self.storage)
        return encode_event(entry_id, f"job.{data['status']}", data)


@dataclass(frozen=True)
class _BatchFeed:
    subject: str  # the batch id
    tenant: str
    service: BatchService

    def ends(self, status: str) -> bool:
        return status != BatchStatus.RUNNING.value

    async def frame(self, entry_id: str, fields: dict[str, str]) -> bytes:
        """One event: progress carries the status and counts (bounded, whatever the
        batch's metadata); only the final event carries the whole batch object."""
        status = fields.get("status", "")
        data: dict[str, Any] = {
            "status": status,
            "counts": json.loads(fields.get("counts") or "{}"),
            "at": _seconds(fields.get("at")),
        }
        if self.ends(status):
            try:
                data["batch"] = batch_json(await self.service.get(self.subject, self.tenant))
            except NotFound:  # expired while the stream was open
                data["batch"] = None
        event = "batch.progress" if status == BatchStatus.RUNNING.value else f"batch.{status}"
        return encode_event(entry_id, event, data)


@operation(
    "Follow a job's events",
    tags=("jobs",),
    query=EventsQuery,
    headers=EventsHeaders,
    replies=EVENT_REPLIES,
    errors=(400, 404, 503),
)
async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/jobs/{id}/events: the job's transitions as Server-Sent Events (replayed
    after Last-Event-ID), until it finishes."""
    app = request.app
    job_id, last_id = request.match_info["job_id"], _last_event_id(request)
    store = app[JOB_STORE]
    with app[EVENTS].listen(job_id) as events:
        job = await app[JOB_SERVICE].get(job_id, request[TENANT])
        feed = _JobFeed(job_id, store, app[STORAGE])
        return await _stream(request, feed, events, last_id, job.status.value)


@operation(
    "Follow a batch's events",
    tags=("batches",),
    query=EventsQuery,
    headers=EventsHeaders,
    replies=EVENT_REPLIES,
    errors=(400, 404, 503),
)
async def batch_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/batches/{id}/events: the batch's status and counts as Server-Sent Events
    (replayed after Last-Event-ID), until it is no longer running."""
    app = request.app
    batch_id, last_id = request.match_info["batch_id"], _last_event_id(request)
    service, tenant = app[BATCH_SERVICE], request[TENANT]
    with app[EVENTS].listen(batch_id) as events:
        batch = await service.get(batch_id, tenant)
        feed = _BatchFeed(batch_id, tenant, service)
        return await _stream(request, feed, events, last_id, batch.status.value)


@operation(
    "A job's stream URL, for clients that cannot send a key",
    tags=("jobs",),
    replies={200: StreamUrl},
    errors=(404, 503),
    body_required=False,
)
async def job_stream_url(request: web.Request) -> web.Response:
    """POST /v1/jobs/{id}/events/url: a signed URL that opens the job's event stream
    without a key for an hour (a browser's ``EventSource`` cannot send one). It opens
    that stream only."""
    job_id = request.match_info["job_id"]
    await request.app[JOB_SERVICE].get(job_id, request[TENANT])
    return _stream_url(request, f"/v1/jobs/{job_id}/events", job_id)


@operation(
    "A batch's stream URL, for clients that cannot send a key",
    tags=("batches",),
    replies={200: StreamUrl},
    errors=(404, 503),
    body_required=False,
)
async def batch_stream_url(request: web.Request) -> web.Response:
    """POST /v1/batches/{id}/events/url: a signed URL that opens the batch's event
    stream without a key for an hour. It opens that stream only."""
    batch_id = request.match_info["batch_id"]
    await request.app[BATCH_SERVICE].get(batch_id, request[TENANT])
    return _stream_url(request, f"/v1/batches/{batch_id}/events", batch_id)


def _stream_url(request: web.Request, path: str, subject: str) -> web.Response:
    expires = int(time.time()) + STREAM_TOKEN_TTL_S
    token = issue_token(request.app[STREAM_SECRET], request[TENANT], subject, expires)
    body = StreamUrl(object="stream_url", url=f"{path}?token={token}", expires_at=expires)
    return web.json_response(body.model_dump())


def _last_event_id(request: web.Request) -> str | None:
    header = request.headers.get("Last-Event-ID")
    if header:
        return parse_stream_id(header, param="Last-Event-ID")
    return parse_stream_id(request.query.get("last_event_id"), param="last_event_id")


async def _stream(
    request: web.Request,
    feed: _Feed,
    events: JobEventStream,
    last_id: str | None,
    status: str,
) -> web.StreamResponse:
    """Send the log after ``last_id``, then each new entry as it is announced, until
    the feed ends. ``status`` is the subject's current one (for an empty replay); 204
    when a resume finds the feed ended and nothing after ``last_id``."""
    store = request.app[JOB_STORE]
    if last_id is not None and feed.ends(status):
        if not await store.log_since(feed.subject, last_id, 1):
            return web.Response(status=204, headers={"x-request-id": request[REQUEST_ID]})
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.headers["x-request-id"] = request[REQUEST_ID]
    async with started_stream(request, response, f"event stream {feed.subject}"):
        try:
            await response.write(RETRY)
            while True:
                last_id, status = await _send_new(response, store, feed, last_id, status)
                if feed.ends(status):
                    break
                if await events.next_event(KEEPALIVE_S) is None:
                    await response.write(KEEPALIVE)
        except (RedisError, OSError) as exc:
            if isinstance(exc, ConnectionError):
                raise  # the client went away
            # Headers are sent, so no error body: end; the client resumes from its last id.
            log.warning("event stream %s ended early: %s", feed.subject, exc)
    return response


async def _send_new(
    response: web.StreamResponse, store: JobStore, feed: _Feed, last_id: str | None, status: str
) -> tuple[str | None, str]:
    """Write every log entry after ``last_id``; the last id and status sent."""
    while True:
        entries = await store.log_since(feed.subject, last_id, LOG_PAGE)
        for entry_id, fields in entries:  # one frame at a time: never a page in memory
            await response.write(await feed.frame(entry_id, fields))
            last_id, status = entry_id, fields.get("status", status)
        if len(entries) < LOG_PAGE:
            return last_id, status


def _seconds(at_ms: str | None) -> float | None:
    return int(at_ms) / 1000 if at_ms else None
