"""How the benchmarks talk to the API: JSON submits built once, long-polls, batches,
and where a job's upstream call shows up on the fake."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from types import TracebackType
from typing import Any

import aiohttp
from PIL import Image

from tests.bench.stack import API_KEY, MODEL
from tests.support.fakes.upstream import FakeUpstream, RecordedRequest
from tests.support.images import data_url, encode


def noisy_png(side: int, seed: int = 8) -> bytes:
    """A PNG of random pixels (it does not compress, like a photo's noise)."""
    rng = random.Random(seed)
    return encode(Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)), "PNG")


def png_of_bytes(size: int) -> bytes:
    """A noisy square PNG of about ``size`` bytes (within a few percent)."""
    return noisy_png(round(math.sqrt(size / 3)))


def edit_body(image: bytes, prompt: str, **fields: Any) -> bytes:
    """A JSON ``POST /v1/jobs`` body with ``image`` as a data URL, encoded once."""
    document = {"model": MODEL, "prompt": prompt, "images": [{"image_url": data_url(image)}]}
    return json.dumps({**document, **fields}).encode()


class BenchClient:
    """An API client of the bench key with up to ``connections`` connections open."""

    def __init__(self, api_url: str, *, connections: int = 100) -> None:
        self.api_url = api_url
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {API_KEY}"},
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def post_json(self, path: str, body: bytes) -> dict[str, Any]:
        """POST a JSON body; the answer, AssertionError unless it is a 2xx."""
        headers = {"Content-Type": "application/json"}
        async with self._session.post(self.api_url + path, data=body, headers=headers) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status < 300, answer
            return answer

    async def submit(self, body: bytes) -> str:
        """Submit a job (``edit_body``); its id."""
        job = await self.post_json("/v1/jobs", body)
        return str(job["id"])

    async def get(self, path: str) -> dict[str, Any]:
        """GET an API path; AssertionError unless 200."""
        async with self._session.get(self.api_url + path) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status == 200, answer
            return answer

    async def wait_job(self, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
        """The job once terminal (long-polls); TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                job = await self.get(f"/v1/jobs/{job_id}?wait=30")
                if job["status"] in ("succeeded", "failed", "canceled"):
                    return job

    async def wait_batch(self, batch_id: str, timeout_s: float = 120) -> dict[str, Any]:
        """The batch once it no longer runs (long-polls); TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                batch = await self.get(f"/v1/batches/{batch_id}?wait=30")
                if batch["status"] != "running":
                    return batch


class CallFinder:
    """Finds the fake's record of the call made for a prompt, scanning new records once."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self._upstream = upstream
        self._scanned = 0
        self._by_prompt: dict[str, RecordedRequest] = {}
        self._unread: list[RecordedRequest] = []

    async def wait_for(self, prompt: str, timeout_s: float = 30) -> RecordedRequest:
        """The first call whose prompt is ``prompt``; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._scan()
            found = self._by_prompt.get(prompt)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no upstream call for {prompt!r} in {timeout_s} s")
            await asyncio.sleep(0.002)

    def _scan(self) -> None:
        requests = self._upstream.requests
        self._unread.extend(requests[self._scanned :])
        self._scanned = len(requests)
        waiting = []
        for record in self._unread:
            # The prompt is known once the fake has read the body.
            if record.prompt is None and record.status is None and record.error is None:
                waiting.append(record)
            elif record.prompt is not None:
                self._by_prompt.setdefault(record.prompt, record)
        self._unread = waiting
