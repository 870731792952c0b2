"""A fake OpenAI-compatible image-edit upstream: a real aiohttp server with injectable faults.

::

    async with FakeUpstream() as upstream:          # listens on 127.0.0.1, a free port
        upstream.latency_s = 0.2
        upstream.fail_next(Fault.status(429, retry_after="2"), Fault.hang(10))
        ...                                          # call upstream.base_url + "/images/edits"
        assert upstream.max_in_flight <= 4

``POST /v1/images/edits`` takes multipart (``image`` or repeated ``image[]``, 1-16
files; optional ``mask``; ``model``, ``prompt``, ``n``, ``size``, ``quality``,
``background``, ``output_format``, ``output_compression``, ``user``,
``response_format``) or JSON with ``images: [{"image_url": "data:image/png;base64,..."}]``
and ``mask: {"image_url"}`` (Requesty's shape). orq's ``POST /v2/router/images/edits``
takes the same bodies and answers the same way, but with a ``url`` unless
``response_format`` is ``b64_json``.

It really edits: the first image's colours are inverted (only where the mask is
transparent, when there is one), it is resized to ``size`` (``WxH``) and encoded as
``output_format`` (png by default). The answer is ``{"created", "data": [{"b64_json"}]
* n, "usage", "size", "quality", "output_format"}``; with ``respond_with_url`` (or
``response_format=url``) each item is ``{"url"}`` and the bytes are served at
``GET /files/{id}``.

With ``stream=true`` the answer is OpenAI's edit event stream instead
(``text/event-stream``): ``partial_images`` ``image_edit.partial_image`` events (or
``partials_sent`` of them, when set), each carrying the first input image unedited,
then one ``image_edit.completed`` event with the edited image and the usage.

Each edit request, in order:

1. is recorded (with its ``path``) in ``requests`` and ``calls_started`` and counted in
   ``in_flight``;
2. is refused with 401 if ``api_key`` is set and the bearer token differs, and with
   a 400 (413 when too large) JSON error if it is malformed; neither consumes a fault;
3. takes its fault: the next one of the ``fail_next`` script, else ``fail_always``;
4. waits ``latency_s``, then answers as its fault says, or succeeds.

Waits end early when the server stops (the answer is then 503). Run
``python -m tests.support.fakes.upstream --port 9100 --latency 2`` to serve one by hand.
Faults are in ``upstream_faults``, request reading in ``upstream_requests``, the
edit itself in ``upstream_edits``; this module holds the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from collections import deque
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from tests.support.fakes.server import (
    CountsInFlight,
    FakeServer,
    serve_until_interrupted,
    wait_until,
)
from tests.support.fakes.upstream_edits import (
    FORMATS,
    EditSpec,
    check_edit_request,
    estimated_usage,
    render_edit,
)
from tests.support.fakes.upstream_faults import Fault, FaultKind
from tests.support.fakes.upstream_requests import (
    MAX_BODY_BYTES,
    BadRequest,
    RecordedRequest,
    Upload,
    read_edit_request,
)

__all__ = ["FakeUpstream", "Fault", "FaultKind", "RecordedRequest", "Upload", "estimated_usage"]

OPENAI_EDITS_PATH = "/v1/images/edits"
ORQ_EDITS_PATH = "/v2/router/images/edits"


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own HTTP errors (404, 405, 413 ...) in the OpenAI error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = BadRequest(exc.reason, status=exc.status).response()
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response


class FakeUpstream(FakeServer, CountsInFlight):
    """A fake OpenAI-compatible edit upstream on a real socket; see the module docstring.

    Settings, changeable at any time: ``api_key`` (None accepts any request),
    ``latency_s``, ``respond_with_url``, ``usage`` ("auto" computes it with
    ``estimated_usage``, None leaves it out, a dict is sent as is), ``fail_always``,
    ``partials_sent`` (None streams as many partial images as asked).
    Observations: ``requests``, ``calls_started``, ``in_flight``, ``max_in_flight``.
    """

    label = "the fake upstream"
    max_body_bytes = MAX_BODY_BYTES
    shutdown_timeout_s = 5.0
    middlewares = (_json_errors,)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        latency_s: float = 0.0,
        respond_with_url: bool = False,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.latency_s = latency_s
        self.respond_with_url = respond_with_url
        self.usage: dict[str, Any] | Literal["auto"] | None = "auto"
        self.fail_always: Fault | None = None
        self.partials_sent: int | None = None
        self.requests: list[RecordedRequest] = []
        self.calls_started: list[float] = []
        self._script: deque[Fault] = deque()
        self._files: dict[str, tuple[bytes, str]] = {}

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post(OPENAI_EDITS_PATH, self._handle_edit)
        app.router.add_post(ORQ_EDITS_PATH, self._handle_edit)
        app.router.add_get("/files/{file_id}", self._handle_file)

    @property
    def base_url(self) -> str:
        """The OpenAI (and Requesty) base URL, e.g. ``http://127.0.0.1:41234/v1``; the
        ``origin`` is orq's."""
        return f"{self.origin}/v1"

    @property
    def pending_faults(self) -> int:
        """How many scripted faults are not consumed yet."""
        return len(self._script)

    def fail_next(self, *faults: Fault) -> None:
        """Script faults for the next requests, one each, in order (after earlier ones)."""
        self._script.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests, served files and all faults; settings stay."""
        self.requests.clear()
        self.calls_started.clear()
        self.max_in_flight = self.in_flight
        self._script.clear()
        self._files.clear()
        self.fail_always = None

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        """Return once ``count`` edit requests have arrived; TimeoutError after ``timeout_s``."""
        await wait_until(lambda: len(self.requests) >= count, timeout_s)

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Return once no edit request is in flight; TimeoutError after ``timeout_s``."""
        await wait_until(lambda: not self.in_flight, timeout_s)

    async def _handle_edit(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(
            received_at=time.monotonic(), headers=CIMultiDict(request.headers), path=request.path
        )
        self.calls_started.append(record.received_at)
        self.requests.append(record)
        with self._counted():
            response = await self._answer(request, record)
        record.status = response.status
        record.answered_at = time.monotonic()
        return response

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        try:
            self._check_key(record)
            await read_edit_request(request, record)
            spec = check_edit_request(record)
        except BadRequest as exc:
            record.error = exc.message
            return exc.response()
        fault = self._script.popleft() if self._script else self.fail_always
        if not await self._pause(self.latency_s):
            return _stopping_response()
        if fault is None:
            return await self._succeed(request, record, spec)
        if fault.kind is FaultKind.ANSWER:
            return web.Response(
                status=fault.http_status,
                body=fault.body,
                headers={hdrs.CONTENT_TYPE: fault.content_type, **dict(fault.headers)},
            )
        if fault.kind is FaultKind.DISCONNECT and request.transport is not None:
            request.transport.close()
        if not await self._pause(fault.seconds if fault.kind is FaultKind.HANG else None):
            return _stopping_response()
        return await self._succeed(request, record, spec)

    def _check_key(self, record: RecordedRequest) -> None:
        if self.api_key is not None and record.authorization != f"Bearer {self.api_key}":
            raise BadRequest("incorrect API key provided", status=401)

    def _answers_with_url(self, record: RecordedRequest) -> bool:
        response_format = record.fields.get("response_format")
        if response_format is not None:
            return response_format == "url"
        return self.respond_with_url or record.path == ORQ_EDITS_PATH

    async def _succeed(
        self, request: web.Request, record: RecordedRequest, spec: EditSpec
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        try:
            image, size = await loop.run_in_executor(None, render_edit, spec)
        except BadRequest as exc:
            return exc.response()
        if spec.stream:
            return await self._stream(request, spec, image, size)
        _, content_type = FORMATS[spec.output_format]
        if self._answers_with_url(record):
            file_id = os.urandom(8).hex()
            self._files[file_id] = (image, content_type)
            item = {"url": f"{request.url.origin()}/files/{file_id}"}
        else:
            item = {"b64_json": base64.b64encode(image).decode()}
        answer: dict[str, Any] = {
            "created": int(time.time()),
            "data": [item] * spec.n,
            "size": f"{size[0]}x{size[1]}",
            "quality": spec.quality,
            "output_format": spec.output_format,
        }
        if self.usage == "auto":
            answer["usage"] = estimated_usage(spec, size)
        elif self.usage is not None:
            answer["usage"] = self.usage
        return web.json_response(answer)

    async def _stream(
        self, request: web.Request, spec: EditSpec, image: bytes, size: tuple[int, int]
    ) -> web.StreamResponse:
        """OpenAI's edit event stream: the partial images, then the completed image."""
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/event-stream"})
        await response.prepare(request)
        common = {
            "created_at": int(time.time()),
            "size": f"{size[0]}x{size[1]}",
            "quality": spec.quality,
            "background": spec.background,
            "output_format": spec.output_format,
        }
        count = spec.partial_images if self.partials_sent is None else self.partials_sent
        preview = base64.b64encode(spec.images[0]).decode()
        for index in range(count):
            partial = {"partial_image_index": index, "b64_json": preview, **common}
            await response.write(_sse("image_edit.partial_image", partial))
        completed: dict[str, Any] = {"b64_json": base64.b64encode(image).decode(), **common}
        if self.usage == "auto":
            completed["usage"] = estimated_usage(spec, size)
        elif self.usage is not None:
            completed["usage"] = self.usage
        await response.write(_sse("image_edit.completed", completed))
        await response.write_eof()
        return response

    async def _handle_file(self, request: web.Request) -> web.Response:
        stored = self._files.get(request.match_info["file_id"])
        if stored is None:
            return BadRequest("no such file", status=404).response()
        image, content_type = stored
        return web.Response(body=image, content_type=content_type)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    """One event of OpenAI's edit stream (``type`` repeats the event name)."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()


def _stopping_response() -> web.Response:
    return BadRequest("the fake upstream is stopping", status=503).response()


def main(argv: list[str] | None = None) -> None:
    """Serve a fake upstream until interrupted.

    ``python -m tests.support.fakes.upstream --port 9100``
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fakes.upstream",
        description=__doc__.splitlines()[0] if __doc__ else "",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--url", action="store_true", help="answer with url, not b64_json")
    parser.add_argument("--fail-status", type=int, default=None, help="answer every edit with this")
    args = parser.parse_args(argv)
    fake = FakeUpstream(api_key=args.api_key, latency_s=args.latency, respond_with_url=args.url)
    if args.fail_status is not None:
        fake.fail_always = Fault.status(args.fail_status)
    banner = "fake upstream: POST {fake.base_url}/images/edits"
    serve_until_interrupted(fake, banner, port=args.port, host=args.host)


if __name__ == "__main__":
    main()
