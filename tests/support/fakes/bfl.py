"""A fake of Black Forest Labs' API: a real aiohttp server that edits, slowly, on request.

::

    async with FakeBfl(processing_s=2) as bfl:          # 127.0.0.1, a free port
        bfl.moderate_next("Content Moderated")
        bfl.fail_next(429, retry_after="3")            # the next submission is refused
        ...                                             # base_url = bfl.base_url
        assert bfl.submissions == 1 and bfl.max_in_flight <= 4

As BFL's public API documents it (docs.bfl.ai, "Edit or create an image with FLUX
Kontext Pro" and "Get result"):

- ``POST /v1/{model}`` with header ``x-key`` and JSON ``{prompt, input_image,
  input_image_2 …, seed?, aspect_ratio?, output_format (png|jpeg), safety_tolerance?}``
  (an image is base64 or an http(s) URL the server fetches) answers
  ``{id, polling_url, cost, input_mp, output_mp}``; a missing or wrong key is 403, a
  malformed body 422 (FastAPI's ``{"detail": …}``).
- ``GET /v1/get_result?id=…`` (``x-key``) answers ``{id, status, result, progress,
  details}``: ``Pending`` while the task works (``processing_s``), then ``Ready`` with
  ``result.sample`` (a signed URL), or ``Content Moderated`` / ``Error`` as scripted
  (``Request Moderated`` comes at once: the input is refused before any work), or
  ``Task not found`` for an unknown id.
- ``GET /delivery/{id}/{signature}/sample.{ext}`` serves the edited image (the first
  input with its colours inverted) until ``result_ttl_s`` after it was ready, then 403
  as an expired signed URL does.

Faults: ``fail_next(status, retry_after=…)`` answers the next submissions with that
HTTP status instead (429 with ``Retry-After``, 5xx …); ``fail_polls_next`` does the same
to status requests; ``poll_latency_s`` slows them. Observations: ``submissions``
(accepted tasks), ``refused``, ``polls`` (``poll_times``, ``polls_in_flight``),
``downloads``, ``in_flight`` (accepted, result not yet downloaded nor failed),
``max_in_flight``, ``tasks``. Run ``python -m tests.support.fakes.bfl --port 9200`` to
serve one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image, ImageChops

from tests.support.fakes.server import (
    CountsInFlight,
    FakeServer,
    serve_until_interrupted,
    wait_until,
)

MAX_BODY_BYTES = 64 * 1024 * 1024
SUBMIT_PATH = "/v1/{model}"
RESULT_PATH = "/v1/get_result"
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
MODERATIONS = ("Request Moderated", "Content Moderated", "Error")


@dataclass
class FakeTask:
    """One accepted submission."""

    id: str
    model: str
    body: dict[str, Any]
    images: list[bytes]
    submitted_at: float
    ready_at: float
    outcome: str = "Ready"  # or a scripted Request Moderated, Content Moderated, Error
    signature: str = field(default_factory=lambda: os.urandom(8).hex())
    downloaded: bool = False
    settled: bool = False  # counted out of in_flight (downloaded or failed)


class FakeBfl(FakeServer, CountsInFlight):
    """The fake server; see the module docstring. Settings change at any time:
    ``api_key`` (None accepts any key), ``processing_s``, ``result_ttl_s``,
    ``poll_latency_s``. Its ``base_url`` is that of a ``kind = "bfl"`` upstream."""

    label = "the fake BFL API"
    max_body_bytes = MAX_BODY_BYTES
    shutdown_timeout_s = 2.0
    fetches_urls = True  # an input image may be a URL the API fetches

    def __init__(
        self,
        *,
        api_key: str | None = "bfl-key",
        processing_s: float = 0.5,
        result_ttl_s: float = 600.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.processing_s = processing_s
        self.result_ttl_s = result_ttl_s
        self.poll_latency_s = 0.0  # how long each status request takes to answer
        self.polls_in_flight = 0  # status requests not answered yet
        self.tasks: dict[str, FakeTask] = {}
        self.refused = 0
        self.polls = 0
        self.poll_times: list[float] = []  # monotonic time of each status request
        self.downloads = 0
        self._submit_faults: deque[tuple[int, str | None]] = deque()
        self._poll_faults: deque[tuple[int, str | None]] = deque()
        self._outcomes: deque[str] = deque()

    @property
    def submissions(self) -> int:
        """Accepted submissions (each one a paid task at BFL)."""
        return len(self.tasks)

    def fail_next(self, status: int, *, retry_after: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` submissions with HTTP ``status`` (not accepted)."""
        self._submit_faults.extend([(status, retry_after)] * times)

    def fail_polls_next(
        self, status: int, *, retry_after: str | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` status requests with HTTP ``status``."""
        self._poll_faults.extend([(status, retry_after)] * times)

    def moderate_next(self, outcome: str, times: int = 1) -> None:
        """The next ``times`` accepted tasks end as ``outcome`` (one of ``MODERATIONS``)
        instead of Ready."""
        if outcome not in MODERATIONS:
            raise ValueError(outcome)
        self._outcomes.extend([outcome] * times)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get(RESULT_PATH, self._result)
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get("/delivery/{id}/{signature}/{name}", self._delivery)

    async def wait_for_submissions(self, count: int, timeout_s: float = 10.0) -> None:
        """Return once ``count`` tasks were accepted; TimeoutError after ``timeout_s``."""
        await wait_until(lambda: self.submissions >= count, timeout_s, every_s=0.01)

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("x-key") == self.api_key

    async def _submit(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _detail(403, "Not authenticated - Invalid Authentication")
        if self._submit_faults:
            status, retry_after = self._submit_faults.popleft()
            self.refused += 1
            return _fault(status, retry_after)
        try:
            body = await request.json()
            images = await self._images(body)
        except ValueError as exc:
            return _detail(422, str(exc))
        now = time.monotonic()
        task = FakeTask(
            id=os.urandom(16).hex(),
            model=request.match_info["model"],
            body=body,
            images=images,
            submitted_at=now,
            ready_at=now + self.processing_s,
            outcome=self._outcomes.popleft() if self._outcomes else "Ready",
        )
        self.tasks[task.id] = task
        self._took_off()
        polling_url = f"{self.base_url}{RESULT_PATH}?id={task.id}"
        megapixels = _megapixels(images[0]) if images else 1.0
        return web.json_response(
            {
                "id": task.id,
                "polling_url": polling_url,
                "cost": 4.0,
                "input_mp": megapixels,
                "output_mp": megapixels,
            }
        )

    async def _images(self, body: object) -> list[bytes]:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ValueError("body.prompt: field required")
        if body.get("output_format", "png") not in OUTPUT_FORMATS:
            raise ValueError("body.output_format: must be png or jpeg")
        images = []
        for index in range(1, 11):
            name = "input_image" if index == 1 else f"input_image_{index}"
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"body.{name}: must be a string")
            images.append(await self._image(name, value))
        return images

    async def _image(self, name: str, value: str) -> bytes:
        if value.startswith(("http://", "https://")):
            assert self._http is not None
            async with self._http.get(value) as response:
                if response.status != 200:
                    raise ValueError(f"body.{name}: could not fetch the image URL")
                data = await response.read()
        else:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"body.{name}: not base64") from exc
        try:
            Image.open(io.BytesIO(data)).verify()
        except Exception as exc:
            raise ValueError(f"body.{name}: not an image") from exc
        return data

    async def _result(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _detail(403, "Not authenticated - Invalid Authentication")
        self.polls += 1
        self.poll_times.append(time.monotonic())
        if self.poll_latency_s:
            self.polls_in_flight += 1
            try:
                await asyncio.sleep(self.poll_latency_s)
            finally:
                self.polls_in_flight -= 1
        if self._poll_faults:
            status, retry_after = self._poll_faults.popleft()
            return _fault(status, retry_after)
        task_id = request.query.get("id", "")
        task = self.tasks.get(task_id)
        if task is None:
            return web.json_response({"id": task_id, "status": "Task not found", "result": None})
        now = time.monotonic()
        # A moderated request is refused before any work; moderated content once made.
        if now < task.ready_at and task.outcome != "Request Moderated":
            progress = (now - task.submitted_at) / max(self.processing_s, 1e-6)
            return web.json_response(
                {"id": task.id, "status": "Pending", "result": None, "progress": progress}
            )
        if task.outcome != "Ready":
            self._settle(task)
            details = {"moderation_reasons": ["Derivative Works Filter"]}
            return web.json_response(
                {"id": task.id, "status": task.outcome, "result": None, "details": details}
            )
        ext = task.body.get("output_format", "png")
        sample = f"{self.base_url}/delivery/{task.id}/{task.signature}/sample.{ext}"
        result = {"sample": sample, "prompt": task.body["prompt"], "seed": task.body.get("seed")}
        return web.json_response({"id": task.id, "status": "Ready", "result": result})

    async def _delivery(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None or request.match_info["signature"] != task.signature:
            return web.Response(status=404, text="NoSuchKey")
        if time.monotonic() > task.ready_at + self.result_ttl_s:
            return web.Response(status=403, text="Request has expired")
        if not task.images:
            return web.Response(status=404, text="NoSuchKey")
        ext = task.body.get("output_format", "png")
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, _inverted, task.images[0], OUTPUT_FORMATS[ext])
        self.downloads += 1
        task.downloaded = True
        self._settle(task)
        return web.Response(body=data, content_type=f"image/{ext}")

    def _settle(self, task: FakeTask) -> None:
        if not task.settled:
            task.settled = True
            self._landed()


def _inverted(data: bytes, pillow_format: str) -> bytes:
    """The image with its colours inverted, encoded as ``pillow_format``."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    ImageChops.invert(image).save(buffer, pillow_format)
    return buffer.getvalue()


def _megapixels(data: bytes) -> float:
    width, height = Image.open(io.BytesIO(data)).size
    return round(width * height / 1_000_000, 3)


def _detail(status: int, message: str) -> web.Response:
    return web.json_response({"detail": message}, status=status)


def _fault(status: int, retry_after: str | None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = json.dumps({"detail": f"scripted fault: HTTP {status}"})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve a fake Black Forest Labs API.")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--processing", type=float, default=2.0, help="seconds per task")
    arguments = parser.parse_args()
    fake = FakeBfl(api_key=None, processing_s=arguments.processing)
    serve_until_interrupted(fake, "fake BFL API on {fake.base_url}", port=arguments.port)
