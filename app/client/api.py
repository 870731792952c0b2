"""A typed Python client for the editq HTTP API.

``AsyncEditqClient`` speaks aiohttp; ``EditqClient`` offers the same methods,
blocking, for scripts::

    async with AsyncEditqClient("http://127.0.0.1:8080", "sk-…") as client:
        job = await client.submit(["photo.png"], "make it sepia", model="local/editor")
        job = await client.wait(job.id)
        paths = await client.download_outputs(job, "out")

A non-2xx answer raises ``EditqClientError`` (status, code, param from the error
body); an unreachable service raises its subclass ``EditqConnectionError``. The
response models and the errors live in ``app.client.models``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import json
import os
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from app.client.models import (
    BatchObject,
    EditqClientError,
    EditqConnectionError,
    ImageData,
    JobObject,
    JobPage,
    ServerSentEvent,
    SseDecoder,
)
from app.client.uploads import ImageInput, multipart_form

DEFAULT_TIMEOUT_S = 120.0
LONG_POLL_S = 60.0

T = TypeVar("T")
P = ParamSpec("P")


class AsyncEditqClient:
    """The editq API over aiohttp; use it as an async context manager (or ``close()``).

    ``timeout`` caps one request in seconds; long polls get their wait on top.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncEditqClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def submit(
        self,
        /,
        images: ImageInput | Sequence[ImageInput],
        prompt: str,
        *,
        model: str,
        mask: ImageInput | None = None,
        n: int = 1,
        **fields: Any,
    ) -> JobObject:
        """POST /v1/jobs as multipart (``image[]`` parts); ``fields`` are further edit
        fields (``size``, ``output_format``, ``metadata`` …; dicts and lists go as JSON)."""
        form = await multipart_form(
            {"model": model, "prompt": prompt, "n": n, **fields}, images, mask
        )
        return JobObject.model_validate(await self._json("POST", "/v1/jobs", data=form))

    async def get(self, job_id: str, *, wait: float | None = None) -> JobObject:
        """GET /v1/jobs/{id}; with ``wait`` (s) the answer comes once the job finishes."""
        return JobObject.model_validate(await self._json("GET", _path("jobs", job_id), wait=wait))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobObject:
        """The job once terminal, long-polling up to 60 s per request; TimeoutError if it
        is still unfinished after ``timeout`` seconds (None: wait for ever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - loop.time())
            job = await self.get(job_id, wait=max(left, 0.0))
            if job.terminal:
                return job
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")

    async def cancel(self, job_id: str) -> JobObject:
        """POST /v1/jobs/{id}/cancel; 409 once the job is terminal."""
        return JobObject.model_validate(await self._json("POST", _path("jobs", job_id, "cancel")))

    async def retry(self, job_id: str) -> JobObject:
        """POST /v1/jobs/{id}/retry: a failed or canceled job runs again under its id."""
        return JobObject.model_validate(await self._json("POST", _path("jobs", job_id, "retry")))

    async def list(
        self, status: str | None = None, limit: int = 20, after: str | None = None
    ) -> JobPage:
        """GET /v1/jobs: the caller's jobs, newest first, one page."""
        params = _query(status=status, limit=limit, after=after)
        return JobPage.model_validate(await self._json("GET", "/v1/jobs", params=params))

    async def events(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[ServerSentEvent, None]:
        """The job's Server-Sent Events (GET /v1/jobs/{id}/events) until the server ends
        the stream. To resume after a break, call again with the last event's ``id``."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        decoder = SseDecoder()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
        url = self.base_url + _path("jobs", job_id, "events")
        async with self._open("GET", url, headers=headers, timeout=timeout) as response:
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    yield event
        for event in decoder.end():
            yield event

    async def download(self, url: str) -> bytes:
        """The bytes at an output URL (presigned, so sent without the API key)."""
        api = url.startswith("/")
        async with self._open("GET", self.base_url + url if api else url, api=api) as response:
            return await response.read()

    async def download_outputs(
        self, job: JobObject, directory: str | os.PathLike[str], *, stem: str | None = None
    ) -> builtins.list[Path]:
        """Write a succeeded job's outputs to ``directory/{stem}-{index}.{ext}`` (``stem``
        is the job id unless given; the directory is created if missing); ValueError if
        the job has no outputs."""
        if job.result is None or not job.result.data:
            raise ValueError(f"job {job.id} has no outputs (status {job.status})")
        folder = Path(directory)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        blobs = await asyncio.gather(*(self._output(item) for item in job.result.data))
        paths = []
        for index, blob in enumerate(blobs):
            path = folder / f"{stem or job.id}-{index}.{job.result.output_format}"
            await asyncio.to_thread(path.write_bytes, blob)
            paths.append(path)
        return paths

    async def submit_batch(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        defaults: Mapping[str, Any],
        prompts: Sequence[str] | None = None,
        n: int | None = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchObject:
        """POST /v1/batches: one job per prompt (or ``n`` jobs of ``defaults``), each
        editing ``images`` with the edit fields in ``defaults`` (model, prompt, size …)."""
        if prompts is not None and n is not None:
            raise ValueError("give prompts or n, not both")
        fields = {
            "defaults": dict(defaults),
            "variants": None if prompts is None else [{"prompt": text} for text in prompts],
            "n": n,
            "webhook_url": webhook_url,
            "metadata": None if metadata is None else dict(metadata),
        }
        form = await multipart_form(fields, images)
        return BatchObject.model_validate(await self._json("POST", "/v1/batches", data=form))

    async def get_batch(self, batch_id: str, wait: float | None = None) -> BatchObject:
        """GET /v1/batches/{id}; with ``wait`` (s) the answer comes once the batch ends."""
        body = await self._json("GET", _path("batches", batch_id), wait=wait)
        return BatchObject.model_validate(body)

    async def batch_jobs(
        self, batch_id: str, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> JobPage:
        """GET /v1/batches/{id}/jobs: one page of the batch's jobs (each with
        ``batch_id`` and ``variant_index``)."""
        params = _query(status=status, limit=limit, after=after)
        body = await self._json("GET", _path("batches", batch_id, "jobs"), params=params)
        return JobPage.model_validate(body)

    async def batch_results(self, batch_id: str) -> builtins.list[dict[str, Any]]:
        """GET /v1/batches/{id}/results: one dict per variant, in order, each with
        ``index``, ``job_id``, ``status`` and ``outputs`` (URLs) or ``error``."""
        url = self.base_url + _path("batches", batch_id, "results")
        async with self._open("GET", url) as response:
            text = await response.text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def cancel_batch(self, batch_id: str) -> BatchObject:
        """POST /v1/batches/{id}/cancel: the batch's unfinished jobs are canceled."""
        body = await self._json("POST", _path("batches", batch_id, "cancel"))
        return BatchObject.model_validate(body)

    async def _output(self, item: ImageData) -> bytes:
        if item.b64_json is not None:
            return base64.b64decode(item.b64_json)
        if item.url is None:
            raise ValueError("an output has neither url nor b64_json")
        return await self.download(item.url)

    async def _json(
        self, method: str, path: str, *, wait: float | None = None, **kwargs: Any
    ) -> Any:
        timeout = self._timeout
        if wait:
            kwargs["params"] = {**kwargs.get("params", {}), "wait": f"{wait:g}"}
            timeout += wait
        total = aiohttp.ClientTimeout(total=timeout)
        async with self._open(method, self.base_url + path, timeout=total, **kwargs) as response:
            return await response.json(content_type=None)

    @asynccontextmanager
    async def _open(
        self, method: str, url: str, *, api: bool = True, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status; EditqClientError for any other, and
        EditqConnectionError when there is no answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {**(self._auth if api else {}), **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._session.request(method, url, headers=headers, **kwargs) as response:
                if response.status >= 300:
                    text = await response.text(errors="replace")
                    raise EditqClientError.from_body(response.status, text, response.reason)
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EditqConnectionError(_connection_message(url, exc)) from exc


def _blocking(
    method: Callable[Concatenate[AsyncEditqClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[EditqClient, P], T]:
    """``method`` of the async client as a blocking method of EditqClient."""

    @functools.wraps(method)
    def call(self: EditqClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._client, *args, **kwargs))

    return call


class EditqClient:
    """``AsyncEditqClient``'s methods, blocking: each call runs on a private event loop
    in a background thread. Use it from plain (or threaded) code, never from inside a
    running event loop (it would block that loop; it raises RuntimeError instead).
    Use it as a context manager, or call ``close()``.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = AsyncEditqClient(base_url, api_key, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="editq-client")
        self._thread.daemon = True
        self._thread.start()
        self._closed = False

    def __enter__(self) -> EditqClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and stop the background loop (idempotent)."""
        if self._closed:
            return
        self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    submit = _blocking(AsyncEditqClient.submit)
    get = _blocking(AsyncEditqClient.get)
    wait = _blocking(AsyncEditqClient.wait)
    cancel = _blocking(AsyncEditqClient.cancel)
    retry = _blocking(AsyncEditqClient.retry)
    list = _blocking(AsyncEditqClient.list)
    download = _blocking(AsyncEditqClient.download)
    download_outputs = _blocking(AsyncEditqClient.download_outputs)
    submit_batch = _blocking(AsyncEditqClient.submit_batch)
    get_batch = _blocking(AsyncEditqClient.get_batch)
    batch_jobs = _blocking(AsyncEditqClient.batch_jobs)
    batch_results = _blocking(AsyncEditqClient.batch_results)
    cancel_batch = _blocking(AsyncEditqClient.cancel_batch)

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[ServerSentEvent]:
        """Like ``AsyncEditqClient.events``, as a plain iterator."""
        stream = self._client.events(job_id, last_event_id=last_event_id)
        try:
            while (event := self._run(_next_or_none(stream))) is not None:
                yield event
        finally:
            if not self._closed:
                self._run(stream.aclose())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("EditqClient blocks; inside an event loop use AsyncEditqClient")
        if self._closed:
            coro.close()
            raise RuntimeError("this EditqClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def _next_or_none(stream: AsyncIterator[T]) -> T | None:
    return await anext(stream, None)


def _path(collection: str, item_id: str, *rest: str) -> str:
    return "/".join(("", "v1", collection, quote(item_id, safe=""), *rest))


def _query(**params: str | int | None) -> dict[str, str | int]:
    return {name: value for name, value in params.items() if value is not None}


def _connection_message(url: str, exc: BaseException) -> str:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno else str(exc.os_error)
        return f"cannot connect to {origin}: {reason}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {origin} in time"
    return f"request to {origin} failed: {exc or type(exc).__name__}"
