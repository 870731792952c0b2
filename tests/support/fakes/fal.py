"""A fake of fal's queue API: a real aiohttp server whose requests queue, run and expire.

::

    async with FakeFal(api_key="k", queue_s=0.2, processing_s=0.5) as fal:
        fal.fail_next("submit", FalAnswer.error(429, "slow down", retry_after="3"))
        fal.end_next(Outcome.moderated())
        ...                       # POST fal.base_url + "/fal-ai/flux-pro/kontext"
        assert fal.submissions == 1 and fal.max_in_flight <= 4

As fal documents it (docs.fal.ai, "Queue"):

- ``POST /{owner}/{app}[/{path}]`` with ``Authorization: Key <key>`` and the model's JSON
  input queues a request: ``{request_id, response_url, status_url, cancel_url,
  queue_position}``; those URLs use only ``{owner}/{app}``.
- ``GET .../requests/{id}/status``: 202 ``{"status": "IN_QUEUE", "queue_position"}`` for
  ``queue_s`` seconds, 202 ``IN_PROGRESS`` for ``processing_s`` more, then 200
  ``COMPLETED`` (with ``error`` and ``error_type`` when the request failed).
- ``GET .../requests/{id}``: the result ``{images: [{url, content_type, width, height}],
  has_nsfw_concepts: [bool], seed, prompt}``, or the error the model answered; 400 while
  the request is not finished.
- ``PUT .../requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED`` (queued or running),
  400 ``ALREADY_COMPLETED``, 404 ``NOT_FOUND``; a cancelled request completes with
  ``error_type`` ``client_cancelled``.

Errors come in fal's two shapes: ``{"detail": "text", "error_type"}`` (with
``X-Fal-Error-Type``) and a model's ``{"detail": [{"loc", "msg", "type"}]}``;
moderation is 422 ``content_policy_violation``.

The model input takes ``prompt`` and ``image_url`` (one) or ``image_urls`` (a list), an
optional ``mask_url`` and ``output_format`` (png, jpeg, webp). Image URLs are data URIs
or http(s) URLs the fake fetches, as fal does; ``serve`` hosts an input like a presigned
object-store URL. The edit is ``upstream_edits.render_edit``'s: the first image's colours
inverted where the mask is transparent. Result images are served from a second port (a
CDN origin, as fal.media is) and expire ``result_ttl_s`` after the request completed.

Run ``python -m tests.support.fakes.fal --port 9200 --processing 2`` to serve one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from tests.support.fakes.server import FakeServer, serve_until_interrupted
from tests.support.fakes.upstream_edits import FORMATS, EditSpec, render_edit
from tests.support.fakes.upstream_requests import BadRequest

Endpoint = Literal["submit", "status", "result", "cancel"]


@dataclass(frozen=True)
class FalAnswer:
    """A fixed HTTP answer in fal's shapes; build it with the class methods."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(
        cls,
        status: int,
        detail: str,
        *,
        error_type: str | None = None,
        retry_after: str | float | None = None,
    ) -> FalAnswer:
        """A platform error ``{"detail": text, "error_type"}`` (``Retry-After`` if given)."""
        document: dict[str, Any] = {"detail": detail}
        headers: list[tuple[str, str]] = []
        if error_type is not None:
            document["error_type"] = error_type
            headers.append(("X-Fal-Error-Type", error_type))
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        return cls(status, json.dumps(document).encode(), tuple(headers))

    @classmethod
    def model_error(
        cls, status: int, error_type: str, msg: str, *, loc: tuple[str, ...] = ("body",)
    ) -> FalAnswer:
        """A model's typed error ``{"detail": [{"loc", "msg", "type"}]}``."""
        item = {"loc": list(loc), "msg": msg, "type": error_type}
        return cls(status, json.dumps({"detail": [item]}).encode())

    @classmethod
    def raw(cls, status: int, body: str) -> FalAnswer:
        """Exactly this body (an HTML error page, broken JSON)."""
        return cls(status, body.encode())

    def response(self) -> web.Response:
        content_type = "application/json" if self.body[:1] in (b"{", b"[") else "text/html"
        headers = CIMultiDict(self.headers)
        headers["Content-Type"] = content_type
        return web.Response(status=self.status, body=self.body, headers=headers)


@dataclass(frozen=True)
class Outcome:
    """How an accepted request ends: edited (``None`` answer), flagged by the safety
    checker (a black image, ``has_nsfw_concepts: [true]``), or with an error answer."""

    answer: FalAnswer | None = None
    nsfw: bool = False

    @classmethod
    def moderated(cls, field_name: str = "prompt") -> Outcome:
        """fal's content checker refused the input: 422 ``content_policy_violation``."""
        item = {
            "loc": ["body", field_name],
            "msg": "The content was flagged by a content checker.",
            "type": "content_policy_violation",
            "url": "https://docs.fal.ai/errors#content_policy_violation",
            "categories": ["sexual"],
        }
        return cls(FalAnswer(422, json.dumps({"detail": [item]}).encode()))

    @classmethod
    def flagged(cls) -> Outcome:
        """The edit ran but the safety checker flagged the output."""
        return cls(nsfw=True)

    @classmethod
    def failing(cls, status: int, detail: str, error_type: str) -> Outcome:
        """The runner failed (``runner_server_error`` 500, ``request_timeout`` 504 ...)."""
        return cls(FalAnswer.error(status, detail, error_type=error_type))


@dataclass
class QueuedRequest:
    """One accepted request and what became of it."""

    request_id: str
    app: str
    path: str
    input: dict[str, Any]
    headers: CIMultiDict[str]
    submitted_at: float
    queue_s: float
    processing_s: float
    outcome: Outcome
    cancelled_at: float | None = None
    result: FalAnswer | None = None
    completed_at: float | None = None
    polls: int = 0

    @property
    def started_at(self) -> float:
        return self.submitted_at + self.queue_s

    @property
    def finishes_at(self) -> float:
        """When it leaves the queue's care: finished, or cancelled."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        return self.started_at + self.processing_s

    def state(self, now: float) -> str:
        if now >= self.finishes_at:
            return "COMPLETED"
        return "IN_QUEUE" if now < self.started_at else "IN_PROGRESS"


@dataclass
class _File:
    data: bytes
    content_type: str
    expires_at: float | None
    downloads: list[CIMultiDict[str]] = field(default_factory=list)


class FakeFal(FakeServer):
    """fal's queue API on real sockets; see the module docstring.

    Settings (change at any time): ``api_key`` (None accepts any), ``queue_s``,
    ``processing_s``, ``result_ttl_s`` (None: results never expire), ``inline_results``
    (answer data URIs, as ``sync_mode`` does). Scripts: ``fail_next`` (an answer instead
    of the endpoint's own), ``end_next`` (how the next accepted requests end).
    Observations: ``requests`` (every submit body and headers, refused ones too),
    ``queued`` (accepted, by id), ``submissions``, ``in_flight``, ``max_in_flight``,
    ``status_polls``, ``cancels``, ``file_downloads``. Its ``base_url`` is where the queue
    API listens (``queue.fal.run``'s stand-in); ``start(port=…)`` sets that port, the CDN
    origin takes a free one.
    """

    label = "the fake fal queue"
    shutdown_timeout_s = 1.0
    extra_sites = 1  # the CDN origin
    fetches_urls = True  # image URLs in the input are fetched, as fal does

    def __init__(
        self, *, api_key: str | None = None, queue_s: float = 0.0, processing_s: float = 0.0
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.queue_s = queue_s
        self.processing_s = processing_s
        self.result_ttl_s: float | None = None
        self.inline_results = False
        self.requests: list[tuple[str, CIMultiDict[str], Any]] = []
        self.queued: dict[str, QueuedRequest] = {}
        self.status_polls = 0
        self.cancels: list[str] = []
        self._faults: dict[Endpoint, deque[FalAnswer]] = {
            name: deque() for name in ("submit", "status", "result", "cancel")
        }
        self._outcomes: deque[Outcome] = deque()
        self._files: dict[str, _File] = {}

    # --- lifecycle ---------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/files/{file_id}", self._file)
        app.router.add_get("/{owner}/{app}/requests/{request_id}/status", self._status)
        app.router.add_put("/{owner}/{app}/requests/{request_id}/cancel", self._cancel)
        app.router.add_get("/{owner}/{app}/requests/{request_id}", self._result)
        app.router.add_post("/{model:.+}", self._submit)

    @property
    def cdn_url(self) -> str:
        """Where result images and ``serve``d inputs are (another origin, as fal.media is)."""
        if len(self._ports) < 2:
            raise RuntimeError(f"{self.label} is not started")
        return self._origin_of(self._ports[1])

    # --- scripting and observations ----------------------------------------------------

    def fail_next(self, endpoint: Endpoint, *answers: FalAnswer) -> None:
        """Answer the next requests to ``endpoint`` with ``answers``, one each, in order."""
        self._faults[endpoint].extend(answers)

    def end_next(self, *outcomes: Outcome) -> None:
        """End the next accepted requests as ``outcomes`` say, one each, in order."""
        self._outcomes.extend(outcomes)

    def serve(self, data: bytes, content_type: str = "image/png") -> str:
        """Host ``data`` on the CDN origin (an input by URL) and return its URL."""
        return self._store(data, content_type, expires_at=None)

    @property
    def submissions(self) -> int:
        """Requests accepted into the queue (refused submissions not counted)."""
        return len(self.queued)

    @property
    def in_flight(self) -> int:
        """Accepted requests not finished or cancelled yet."""
        now = time.monotonic()
        return sum(1 for request in self.queued.values() if request.state(now) != "COMPLETED")

    @property
    def max_in_flight(self) -> int:
        """The most requests ever queued or running at once."""
        events: list[tuple[float, int]] = []
        for request in self.queued.values():
            events += [(request.submitted_at, 1), (request.finishes_at, -1)]
        most = current = 0
        for _, change in sorted(events):  # an end sorts before a start at the same time
            current += change
            most = max(most, current)
        return most

    def file_downloads(self) -> list[CIMultiDict[str]]:
        """The headers of every download of a result image, in order."""
        return [headers for file in self._files.values() for headers in file.downloads]

    # --- handlers ------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        body: Any = None
        try:
            body = await request.json()
        except ValueError:
            pass
        self.requests.append((request.path, CIMultiDict(request.headers), body))
        refused = self._refusal(request, "submit")
        if refused is not None:
            return refused.response()
        if not isinstance(body, dict):
            return FalAnswer.model_error(
                422, "json_invalid", "body is not a JSON object"
            ).response()
        owner, _, rest = request.match_info["model"].partition("/")
        app, _, path = rest.partition("/")
        if not owner or not app:
            return FalAnswer.error(404, "Application not found").response()
        queued = QueuedRequest(
            request_id=str(uuid.uuid4()),
            app=f"{owner}/{app}",
            path=path,
            input=body,
            headers=CIMultiDict(request.headers),
            submitted_at=time.monotonic(),
            queue_s=self.queue_s,
            processing_s=self.processing_s,
            outcome=self._outcomes.popleft() if self._outcomes else Outcome(),
        )
        self.queued[queued.request_id] = queued
        urls = self._urls(request, queued)
        return web.json_response(
            {**urls, "queue_position": self._position(queued, queued.submitted_at)}
        )

    async def _status(self, request: web.Request) -> web.Response:
        self.status_polls += 1
        refused = self._refusal(request, "status")
        if refused is not None:
            return refused.response()
        queued = self._find(request)
        if queued is None:
            return FalAnswer.error(404, "Request not found").response()
        queued.polls += 1
        now = time.monotonic()
        state = queued.state(now)
        urls = self._urls(request, queued)
        document: dict[str, Any] = {"status": state, "request_id": queued.request_id, **urls}
        if state == "IN_QUEUE":
            document["queue_position"] = self._position(queued, now)
            return web.json_response(document, status=202)
        if state == "IN_PROGRESS":
            document["logs"] = None
            return web.json_response(document, status=202)
        result = await self._finish(queued)
        document["metrics"] = {"inference_time": queued.processing_s}
        if result.status >= 300:
            error = json.loads(result.body) if result.body[:1] in (b"{", b"[") else {}
            detail = error.get("detail") if isinstance(error, dict) else None
            document["error"] = detail if isinstance(detail, str) else json.dumps(detail)
            document["error_type"] = error.get("error_type") or "model_error"
        return web.json_response(document, status=200)

    async def _result(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, "result")
        if refused is not None:
            return refused.response()
        queued = self._find(request)
        if queued is None:
            return FalAnswer.error(404, "Request not found").response()
        if queued.state(time.monotonic()) != "COMPLETED":
            return FalAnswer.error(400, "Request is still in progress").response()
        return (await self._finish(queued)).response()

    async def _cancel(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, "cancel")
        if refused is not None:
            return refused.response()
        queued = self._find(request)
        if queued is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        now = time.monotonic()
        if queued.state(now) == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        queued.cancelled_at = now
        self.cancels.append(queued.request_id)
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def _file(self, request: web.Request) -> web.Response:
        stored = self._files.get(request.match_info["file_id"])
        if stored is None or (
            stored.expires_at is not None and time.monotonic() > stored.expires_at
        ):
            return web.Response(status=404, text="Not Found")
        stored.downloads.append(CIMultiDict(request.headers))
        return web.Response(body=stored.data, content_type=stored.content_type)

    # --- the queue's work ----------------------------------------------------------------

    def _refusal(self, request: web.Request, endpoint: Endpoint) -> FalAnswer | None:
        """The key check, then the endpoint's scripted fault, if any."""
        if (
            self.api_key is not None
            and request.headers.get("Authorization") != f"Key {self.api_key}"
        ):
            return FalAnswer.error(401, "No user found for Key ID and Secret")
        faults = self._faults[endpoint]
        return faults.popleft() if faults else None

    def _find(self, request: web.Request) -> QueuedRequest | None:
        queued = self.queued.get(request.match_info["request_id"])
        app = f"{request.match_info['owner']}/{request.match_info['app']}"
        return queued if queued is not None and queued.app == app else None

    def _urls(self, request: web.Request, queued: QueuedRequest) -> dict[str, str]:
        base = f"{request.url.origin()}/{queued.app}/requests/{queued.request_id}"
        return {
            "request_id": queued.request_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _position(self, queued: QueuedRequest, now: float) -> int:
        """How many requests submitted earlier are still waiting in the queue."""
        return sum(
            1
            for other in self.queued.values()
            if other.submitted_at < queued.submitted_at and other.state(now) == "IN_QUEUE"
        )

    async def _finish(self, queued: QueuedRequest) -> FalAnswer:
        """The request's stored answer, made on first need (the edit runs then)."""
        if queued.result is None:
            queued.completed_at = queued.finishes_at
            queued.result = await self._run(queued)
        return queued.result

    async def _run(self, queued: QueuedRequest) -> FalAnswer:
        if queued.cancelled_at is not None:
            return FalAnswer.error(499, "Request was cancelled", error_type="client_cancelled")
        if queued.outcome.answer is not None:
            return queued.outcome.answer
        try:
            spec = await self._spec(queued.input)
            image, size = await asyncio.get_running_loop().run_in_executor(None, render_edit, spec)
        except BadRequest as exc:
            return FalAnswer.model_error(
                422, "value_error", exc.message, loc=("body", exc.param or "")
            )
        content_type = FORMATS[spec.output_format][1]
        if queued.outcome.nsfw:  # fal's safety checker blacks the image out
            image = _black(size, spec.output_format)
        expires_at = None
        if self.result_ttl_s is not None:
            expires_at = (queued.completed_at or time.monotonic()) + self.result_ttl_s
        if self.inline_results:
            url = f"data:{content_type};base64,{base64.b64encode(image).decode()}"
        else:
            url = self._store(image, content_type, expires_at)
        document = {
            "images": [
                {"url": url, "content_type": content_type, "width": size[0], "height": size[1]}
            ],
            "has_nsfw_concepts": [queued.outcome.nsfw],
            "seed": 42,
            "prompt": spec.prompt,
        }
        return FalAnswer(200, json.dumps(document).encode())

    async def _spec(self, model_input: Mapping[str, Any]) -> EditSpec:
        """The edit an input asks for; BadRequest (a 422) when fal would refuse it."""
        prompt = model_input.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("Field required", param="prompt")
        if "image_urls" in model_input:
            urls = model_input["image_urls"]
            if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
                raise BadRequest("Input should be a non-empty list of URLs", param="image_urls")
        elif isinstance(model_input.get("image_url"), str):
            urls = [model_input["image_url"]]
        else:
            raise BadRequest("Field required", param="image_url")
        output_format = model_input.get("output_format", "png")
        if output_format not in FORMATS:
            raise BadRequest(f"Input should be one of {sorted(FORMATS)}", param="output_format")
        images = tuple([await self._fetch(url, "image_url") for url in urls])
        mask_url = model_input.get("mask_url")
        mask = await self._fetch(mask_url, "mask_url") if isinstance(mask_url, str) else None
        return EditSpec(prompt, images, mask, 1, None, output_format, None, "auto")

    async def _fetch(self, url: str, param: str) -> bytes:
        """An input image: a data URI's bytes, or the body at an http(s) URL."""
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadRequest("Invalid data URI", param=param) from exc
        if self._http is None or not url.startswith(("http://", "https://")):
            raise BadRequest(f"Unsupported URL {url[:80]!r}", param=param)
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as response:
                if response.status != 200:
                    raise BadRequest(
                        f"Failed to download the file: HTTP {response.status}", param=param
                    )
                return await response.read()
        except aiohttp.ClientError as exc:
            raise BadRequest(f"Failed to download the file: {exc}", param=param) from exc

    def _store(self, data: bytes, content_type: str, expires_at: float | None) -> str:
        file_id = uuid.uuid4().hex
        self._files[file_id] = _File(data, content_type, expires_at)
        return f"{self.cdn_url}/files/{file_id}"


def _black(size: tuple[int, int], output_format: str) -> bytes:
    """A black image of ``size``, encoded as ``output_format``."""
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, FORMATS[output_format][0])
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    """Serve a fake fal queue until interrupted (``--port`` is the API's; the CDN's is free)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fakes.fal")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--queue", type=float, default=0.0, help="seconds IN_QUEUE")
    parser.add_argument("--processing", type=float, default=0.0, help="seconds IN_PROGRESS")
    parser.add_argument("--api-key", default=None, help="require Authorization: Key <this>")
    args = parser.parse_args(argv)
    fake = FakeFal(api_key=args.api_key, queue_s=args.queue, processing_s=args.processing)
    banner = "fake fal queue: POST {fake.base_url}/<owner>/<app>"
    serve_until_interrupted(fake, banner, port=args.port)


if __name__ == "__main__":
    main()
