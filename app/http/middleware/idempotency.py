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
  while its first request still runs: 409 ``idempotency_key_in_use``.
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

from app.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidRequest
from app.http.app_keys import IDEMPOTENCY, SETTINGS
from app.http.middleware.errors import TENANT
from app.http.requests.bodies import Form, body_deadline, read_body, read_form
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
    """Answer a retried submit (same ``Idempotency-Key``) without creating anything again."""
    raw_key = request.headers.get(KEY_HEADER)
    if raw_key is None or request.method != "POST" or request.path not in IDEMPOTENT_PATHS:
        return await handler(request)
    key = parse_key(raw_key)
    settings = request.app[SETTINGS]
    async with body_deadline(settings):
        body = await read_body(request, settings.max_body_bytes)
        request = await with_body(request, body)
        fingerprint = await request_fingerprint(request, body, settings)
    store = request.app[IDEMPOTENCY]
    found = await store.claim(request[TENANT], key, fingerprint)
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
    if stored.body is not None:
        response: web.StreamResponse = web.Response(
            status=stored.status, body=stored.body.encode(), headers=stored.headers
        )
    else:
        request[SYNC_JOB] = stored.job_id or ""
        response = await handler(request)
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
