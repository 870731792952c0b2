"""A whole editq service for tests: the API on a real socket and an in-process worker,
against a real Redis and an S3 server over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from app.cli.embedded import free_port
from app.core.providers_config import ProvidersConfig
from app.http.app import create_app
from app.http.server import ApiRunner
from app.settings import Settings
from tests.support.images import png
from worker.process.lanes import LaneWorkers

TERMINAL = ("succeeded", "failed", "canceled")


class RunningService:
    """The API (``base_url``) and, when started, one worker; ``client`` speaks HTTP to it."""

    def __init__(
        self, settings: Settings, providers: ProvidersConfig, *, worker: bool = True
    ) -> None:
        self.settings = settings
        self.providers = providers
        self._with_worker = worker
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._worker: LaneWorkers | None = None
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def start(self, *, worker: bool = True) -> RunningService:
        """Serve the API, then start the worker unless told not to. A start that fails
        stops what it started (and closes the client) before raising: a half-started
        service would leak into the tests that follow."""
        try:
            self._runner = ApiRunner(create_app(self.settings, self.providers))
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            if worker:
                await self.start_worker()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aenter__(self) -> RunningService:
        """``async with RunningService(...)``: started (with its worker unless built with
        ``worker=False``) for the block, stopped after it."""
        return await self.start(worker=self._with_worker)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start_worker(self) -> None:
        """Start a worker (both lanes) in this event loop."""
        worker = LaneWorkers(self.settings, self.providers)
        await worker.start()
        self._worker = worker

    async def stop_worker(self, drain_s: float = 0) -> None:
        """Stop the worker; jobs still running after ``drain_s`` are handed back."""
        if self._worker is not None:
            await self._worker.stop(drain_s)
            self._worker = None

    async def stop(self) -> None:
        """Stop everything and close the client."""
        await self.stop_worker()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.client.close()

    def url(self, path: str) -> str:
        """Absolute URL of an API path."""
        return self.base_url + path

    @staticmethod
    def auth(key: str = "key-a") -> dict[str, str]:
        """The Authorization header for ``key``."""
        return {"Authorization": f"Bearer {key}"}

    async def submit(
        self,
        *,
        key: str = "key-a",
        images: list[bytes] | None = None,
        mask: bytes | None = None,
        field: str = "image[]",
        **fields: Any,
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        """POST /v1/jobs as multipart; returns status, JSON body and the response."""
        form = aiohttp.FormData()
        fields.setdefault("model", "local/editor")
        fields.setdefault("prompt", "make it grayscale")
        for name, value in fields.items():
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            form.add_field(name, text)
        for index, data in enumerate(images if images is not None else [png()]):
            form.add_field(field, data, filename=f"in-{index}.png", content_type="image/png")
        if mask is not None:
            form.add_field("mask", mask, filename="mask.png", content_type="image/png")
        async with self.client.post(
            self.url("/v1/jobs"), data=form, headers=self.auth(key)
        ) as response:
            return response.status, await response.json(), response

    async def get(self, path: str, key: str = "key-a") -> tuple[int, dict[str, Any]]:
        """GET an API path; status and JSON body."""
        async with self.client.get(self.url(path), headers=self.auth(key)) as response:
            return response.status, await response.json()

    async def post(
        self, path: str, key: str = "key-a", body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        """POST JSON (or nothing) to an API path; status and JSON body."""
        async with self.client.post(self.url(path), headers=self.auth(key), json=body) as response:
            return response.status, await response.json()

    async def wait(self, job_id: str, key: str = "key-a", timeout: float = 30) -> dict[str, Any]:
        """The job once terminal (long-polls); AssertionError if it is not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = await self.get(f"/v1/jobs/{job_id}?wait=5", key)
            assert status == 200, job
            if job["status"] in TERMINAL:
                return job
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")

    async def wait_for_status(
        self, job_id: str, wanted: str, key: str = "key-a", timeout: float = 10
    ) -> dict[str, Any]:
        """Poll until the job has status ``wanted``."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, job = await self.get(f"/v1/jobs/{job_id}", key)
            if job.get("status") == wanted:
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never became {wanted}: {job}")

    async def download(self, url: str) -> bytes:
        """Fetch a presigned output URL over HTTP (no API key)."""
        async with self.client.get(url) as response:
            assert response.status == 200, await response.text()
            return await response.read()
