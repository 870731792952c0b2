"""``Idempotency-Key`` on the submit endpoints: a retried request creates nothing new.

Stripe's semantics, per API key (tenant), on ``POST /v1/jobs``, ``/v1/batches``,
``/v1/images/edits`` and ``/v2/router/images/edits``:

- The first request with a key claims it and runs. If it created something its answer
  is kept for 24 h: a 2xx of the asynchronous endpoints as sent (status, body,
  ``Location``); for the synchronous edits, which accept a job and then wait for it,
  the job id, whatever the answer was.
- The same key with the same request (a SHA-256 of method, path, content type and
  body) gets that answer again with ``Idempotent-Replayed: true`` and creates
  nothing: the stored response, or for a synchronous edit the job's answer now
  (waiting again while it runs), since inline images are too big to keep and
  presigned URLs expire.
- The same key with another request: 422 ``idempotency_key_reused``. The same key
  while its first request still runs: 409 ``idempotency_key_in_use``; for a
  synchronous edit the retry instead waits on the first request's job (once it
  exists), answering as that request will.
- A synchronous edit without a key that the client marks as its retry
  (``x-stainless-retry-count`` >= 1, as the OpenAI SDKs do) waits on the job the same
  request (same tenant and fingerprint) accepted within ``sync_retry_window_s``
  (``app.store.sync_calls``), so a retry after the client's own timeout pays nothing.
  A request not marked as a retry is a new call and gets a new job.
- The first request reserves the id it creates before writing anything
  (``RESERVATION``). If its API process dies, the key's lease lapses
  (``EDITQ_SUBMIT_LEASE_S``) and a retry takes it over and is handed that id: the
  service then finishes or returns that job or batch, never a second one.
- An answer that created nothing frees the key: a 4xx (fix the request and retry
  with the same key) or a 5xx before anything was accepted. An error after the
  request reserved its id hands the key straight to the next retry, which finishes
  that id.

The body is read once, size-limited, and given to the handler in a copy of the
request. A multipart body is fingerprinted part by part (names, filenames, types,
bytes), not as raw bytes, because clients draw a new random boundary on every retry;
it is parsed once (``read_form``), and the handler takes its fields and images from
the same parts. All of it runs under the body deadline and yields to the event loop
every few MB, since a body in memory never makes a read wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from app.core.sync_wait import retry_count
from app.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidRequest, NotFound
from app.http.app_keys import IDEMPOTENCY, JOB_SERVICE, SETTINGS, SYNC_CALLS
from app.http.middleware.errors import TENANT
from app.http.requests.bodies import Form, body_deadline, read_body, read_form
from app.http.requests.sync_deadline import sync_deadline
from app.net import YIELD_BYTES
from app.settings import Settings
from app.store.idempotency import Claim, ExistingRecord, IdempotencyStore, StoredResponse

log = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
JOB_ID_HEADER = "x-job-id"
MAX_KEY_CHARS = 255
SYNC_PATHS = frozenset({"/v1/images/edits", "/v2/router/images/edits"})
IDEMPOTENT_PATHS = frozenset({"/v1/jobs", "/v1/batches"}) | SYNC_PATHS
KEPT_HEADERS = ("Content-Type", "Location", JOB_ID_HEADER)
CHUNK = 256 * 1024
RETRY_COUNT_HEADER = "x-stainless-retry-count"
# How often a retry re-reads the record of its key's running first request until
# that request's job exists (the time it takes to store the inputs).
IN_FLIGHT_POLL_S = 0.1


class KeyReservation:
    """The ``Reservation`` of a request holding an ``Idempotency-Key`` claim."""

    def __init__(self, store: IdempotencyStore, claim: Claim) -> None:
        self._store = store
        self._claim = claim

    @property
    def resumed(self) -> str | None:
        """The id the key's previous holder reserved before it died, or None."""
        return self._claim.resumed

    async def reserve(self, resource_id: str) -> None:
        """Record ``resource_id`` on the claim; IdempotencyKeyInUse if it was lost."""
        if not await self._store.reserve(self._claim, resource_id):
            raise IdempotencyKeyInUse(
                f"another request with this {KEY_HEADER} took it over; retry later",
                param=KEY_HEADER,
            )


RESERVATION = web.RequestKey("idempotency_reservation", KeyReservation)
"""Set on a request that holds its ``Idempotency-Key``: handlers pass it to the service."""

SYNC_JOB = web.RequestKey("sync_job", str)
"""The job a synchronous edit answers from: set by the middleware on a retry (answer
from it, accept nothing) and by the handler as soon as it accepted one."""

SYNC_FINGERPRINT = web.RequestKey("sync_fingerprint", str)
"""The fingerprint of a synchronous edit sent without a key: its job is recorded
under it (``remember_sync_job``) for the client's retries to find."""


def parse_key(raw: str) -> str:
    """``raw`` if it is 1-255 printable ASCII characters; InvalidRequest otherwise."""
    if not 0 < len(raw) <= MAX_KEY_CHARS or not all(" " <= char <= "~" for char in raw):
        raise InvalidRequest(
            f"{KEY_HEADER} must be 1-{MAX_KEY_CHARS} printable ASCII characters",
            param=KEY_HEADER,
            code="invalid_idempotency_key",
        )
    return raw


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a retried submit (same ``Idempotency-Key``) without creating anything again;
    attach a synchronous edit's retry to the job of the call it repeats."""
    raw_key = request.headers.get(KEY_HEADER)
    if request.method != "POST" or request.path not in IDEMPOTENT_PATHS:
        return await handler(request)
    if raw_key is None:
        if request.path in SYNC_PATHS:
            return await _sync_without_key(request, handler)
        return await handler(request)
    key = parse_key(raw_key)
    request, fingerprint = await _read_fingerprinted(request)
    store = request.app[IDEMPOTENCY]
    found: Claim | ExistingRecord | str = await store.claim(request[TENANT], key, fingerprint)
    if isinstance(found, ExistingRecord) and _sync_in_flight(request, found, fingerprint):
        found = await _until_job_exists(request, store, key, found)
    if isinstance(found, str):
        return await _join(request, handler, found)
    if isinstance(found, ExistingRecord):
        return await _answer_again(request, handler, found, fingerprint)
    request[RESERVATION] = KeyReservation(store, found)
    try:
        async with _renewing(store, found):
            response = await handler(request)
    except BaseException:  # an error answer, or the client gone: keep only a job made
        await _settle(store, found, kept_response(request, None))
        raise
    await _settle(store, found, kept_response(request, response))
    return response


async def _read_fingerprinted(request: web.Request) -> tuple[web.Request, str]:
    """A copy of ``request`` with its body read, and the body's fingerprint; fixes a
    synchronous edit's deadline, which runs from the end of the client's upload."""
    settings = request.app[SETTINGS]
    async with body_deadline(settings):
        body = await read_body(request, settings.max_body_bytes)
        request = await with_body(request, body)
        if request.path in SYNC_PATHS:
            sync_deadline(request)
        fingerprint = await request_fingerprint(request, body, settings)
    return request, fingerprint


async def _sync_without_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A synchronous edit without a key: a client's retry (``x-stainless-retry-count``
    >= 1) waits on the job the same request accepted within the window, if there is
    one; any other request is a new call, whose job its retries will find."""
    request, fingerprint = await _read_fingerprinted(request)
    if retry_count(request.headers.get(RETRY_COUNT_HEADER)) >= 1:
        job_id = await request.app[SYNC_CALLS].find(request[TENANT], fingerprint)
        if job_id is not None and await _job_exists(request, job_id):
            return await _join(request, handler, job_id)
    request[SYNC_FINGERPRINT] = fingerprint
    return await handler(request)


async def remember_sync_job(request: web.Request, job_id: str) -> None:
    """Called by a synchronous edit as soon as it accepted ``job_id``: the request's
    retries answer from it (``SYNC_JOB``), and without a key find it by fingerprint.
    Redis failing here changes no answer: the retries then make a job of their own."""
    request[SYNC_JOB] = job_id
    fingerprint = request.get(SYNC_FINGERPRINT)
    if fingerprint is None:
        return
    try:
        await request.app[SYNC_CALLS].remember(request[TENANT], fingerprint, job_id)
    except (RedisError, ConnectionError) as exc:
        log.warning("could not record a synchronous edit's job for its retries: %s", exc)


def _sync_in_flight(request: web.Request, record: ExistingRecord, fingerprint: str) -> bool:
    """A synchronous edit whose key's first request, the same request, still runs."""
    return (
        request.path in SYNC_PATHS and record.response is None and record.fingerprint == fingerprint
    )


async def _until_job_exists(
    request: web.Request, store: IdempotencyStore, key: str, record: ExistingRecord
) -> Claim | ExistingRecord | str:
    """Wait until the job the key's running first request reserved exists (its id),
    the key is taken over or answered (the claim or record), or the request's deadline
    passes (the record: the key is still in use)."""
    deadline = sync_deadline(request)
    while True:
        if record.resource is not None and await _job_exists(request, record.resource):
            return record.resource
        if deadline.remaining_s() <= 0:
            return record
        await asyncio.sleep(min(IN_FLIGHT_POLL_S, deadline.remaining_s()))
        found = await store.claim(request[TENANT], key, record.fingerprint)
        if isinstance(found, Claim) or not _sync_in_flight(request, found, record.fingerprint):
            return found
        record = found


async def _job_exists(request: web.Request, job_id: str) -> bool:
    """Whether ``job_id`` is a job of the request's tenant."""
    try:
        await request.app[JOB_SERVICE].get(job_id, request[TENANT])
    except NotFound:
        return False
    return True


async def _join(request: web.Request, handler: Handler, job_id: str) -> web.StreamResponse:
    """Answer a synchronous edit from ``job_id``, accepted by the call it repeats."""
    request[SYNC_JOB] = job_id
    response = await handler(request)
    response.headers[REPLAYED_HEADER] = "true"
    return response


async def _answer_again(
    request: web.Request, handler: Handler, record: ExistingRecord, fingerprint: str
) -> web.StreamResponse:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"this {KEY_HEADER} was used with a different request; use a new key",
            param=KEY_HEADER,
        )
    stored = record.response
    if stored is None:
        raise IdempotencyKeyInUse(
            f"a request with this {KEY_HEADER} is still being processed; retry later",
            param=KEY_HEADER,
        )
    if stored.body is None:
        return await _join(request, handler, stored.job_id or "")
    response = web.Response(status=stored.status, body=stored.body.encode(), headers=stored.headers)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def kept_response(
    request: web.Request, response: web.StreamResponse | None
) -> StoredResponse | None:
    """What to keep for the key's retries, or None when the request created nothing:
    a synchronous edit's job, else a 2xx JSON ``response`` as sent."""
    if request.path in SYNC_PATHS:
        job_id = request.get(SYNC_JOB)
        if job_id is None:
            return None
        status = 500 if response is None else response.status
        return StoredResponse(status=status, headers={}, body=None, job_id=job_id)
    if not isinstance(response, web.Response) or not 200 <= response.status < 300:
        return None
    if not isinstance(response.body, bytes):
        return None
    try:
        body = response.body.decode()
    except UnicodeDecodeError:
        return None
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    job_id = response.headers.get(JOB_ID_HEADER)
    return StoredResponse(status=response.status, headers=headers, body=body, job_id=job_id)


async def _settle(store: IdempotencyStore, claim: Claim, kept: StoredResponse | None) -> None:
    """Keep ``kept`` for the key's retries, or free the key when it is None. Redis
    failing here changes no answer: the claim then expires on its own."""
    try:
        if kept is None:
            await store.release(claim)
        elif not await store.finish(claim, kept):
            log.warning("an idempotency claim was taken over before its request finished")
    except (RedisError, ConnectionError) as exc:
        log.warning("could not settle an idempotency claim: %s", exc)


@contextlib.asynccontextmanager
async def _renewing(store: IdempotencyStore, claim: Claim) -> AsyncIterator[None]:
    """Renew ``claim`` in the background while the block runs."""
    renewing = asyncio.create_task(_renew_until_cancelled(store, claim))
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing


async def _renew_until_cancelled(store: IdempotencyStore, claim: Claim) -> None:
    while True:
        await asyncio.sleep(store.lease_s / 3)
        try:
            if not await store.renew(claim):
                return
        except (RedisError, ConnectionError) as exc:
            log.warning("could not renew an idempotency claim: %s", exc)


async def with_body(request: web.Request, body: bytes) -> web.Request:
    """A copy of ``request`` whose body stream yields ``body``, read off the wire already."""
    copy = request.clone()
    # aiohttp offers no public way to replace a request's body stream; request.content,
    # read() and multipart() all read this one attribute.
    copy._payload = await body_stream(body)
    return copy


async def body_stream(body: bytes) -> StreamReader:
    """A finished stream yielding ``body``; on its own protocol, never the connection's.
    Filling it gives the event loop a turn every ``YIELD_BYTES``."""
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), limit=max(len(body), CHUNK), loop=loop)
    # Fed in pieces as the wire would: at each part's end the multipart reader pushes
    # back what it read past it, and the stream then copies the rest of that piece;
    # with the body as one piece, that was the rest of the body, at every part.
    for start in range(0, len(body), CHUNK):
        stream.feed_data(body[start : start + CHUNK])
        if (start + CHUNK) % YIELD_BYTES == 0:
            await asyncio.sleep(0)
    stream.feed_eof()
    return stream


async def request_fingerprint(request: web.Request, body: bytes, settings: Settings) -> str:
    """SHA-256 of method, path, content type and body; a multipart body part by part,
    parsed by ``read_form`` (and kept on ``request`` for the handler), or as its raw
    bytes when its framing cannot be parsed. Raises what ``read_form`` raises."""
    digest = hashlib.sha256()
    for item in (request.method, request.path_qs, request.content_type):
        _add(digest, item.encode())
    if request.content_type == "multipart/form-data":
        form = await read_form(request, settings)
        if form.refusal is None:
            _add(digest, b"parts")
            _add(digest, await _parts_digest(form))
            return digest.hexdigest()
    _add(digest, b"body")
    digest.update(len(body).to_bytes(8, "big"))
    await _update(digest, body)
    return digest.hexdigest()


async def _parts_digest(form: Form) -> bytes:
    """Digest of each part's name, filename, content type and bytes, in order."""
    digest = hashlib.sha256()
    for part in form.parts:
        for item in (part.name, part.filename, part.content_type):
            _add(digest, item.encode())
        _add(digest, await _sha256(part.data))
    return digest.digest()


async def _sha256(data: bytes) -> bytes:
    digest = hashlib.sha256()
    await _update(digest, data)
    return digest.digest()


async def _update(digest: hashlib._Hash, data: bytes) -> None:
    """``digest.update(data)``, giving the event loop a turn every ``YIELD_BYTES`` bytes."""
    view = memoryview(data)
    for start in range(0, len(data), YIELD_BYTES):
        digest.update(view[start : start + YIELD_BYTES])
        await asyncio.sleep(0)


def _add(digest: hashlib._Hash, item: bytes) -> None:
    digest.update(len(item).to_bytes(8, "big"))
    digest.update(item)
