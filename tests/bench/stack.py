"""A whole editq deployment on this machine for benchmarks: moto, the API and the
workers each in their own process, the fake upstream in the benchmark's process."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import aiohttp

from app.embedded import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, free_port
from tests.fakes.upstream import FakeUpstream

API_KEY = "bench-key"
PROVIDERS = """
[[upstreams]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
max_concurrency = {cap}
timeout_s = 300

[[models]]
id = "fake/gpt-image-1"
upstream = "fake"
upstream_model = "gpt-image-1"
"""


class BenchStack:
    """Start with ``async with BenchStack(workers=1) as stack``; ``stack.upstream`` is the fake."""

    def __init__(
        self,
        *,
        workers: int = 1,
        redis_url: str = "redis://127.0.0.1:6379/0",
        upstream_cap: int = 1000,
    ) -> None:
        self.workers = workers
        self.redis_url = redis_url
        self.upstream_cap = upstream_cap
        self.upstream = FakeUpstream()
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._processes: list[asyncio.subprocess.Process] = []
        self._scratch = tempfile.TemporaryDirectory(prefix="editq-bench-")
        self.tag = uuid.uuid4().hex[:8]

    def environment(self, s3_port: int) -> dict[str, str]:
        """The EDITQ_* variables every process of the stack shares."""
        providers = Path(self._scratch.name) / "providers.toml"
        providers.write_text(
            PROVIDERS.format(base_url=self.upstream.base_url, cap=self.upstream_cap)
        )
        return {
            **os.environ,
            "EDITQ_REDIS_URL": self.redis_url,
            "EDITQ_KEY_PREFIX": f"editq-bench-{self.tag}",
            "EDITQ_QUEUE_NAME": f"editq-bench-{self.tag}:queue",
            "EDITQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "EDITQ_S3_BUCKET": f"bench-{self.tag}",
            "EDITQ_S3_ACCESS_KEY_ID": DEV_S3_ACCESS_KEY,
            "EDITQ_S3_SECRET_ACCESS_KEY": DEV_S3_SECRET_KEY,
            "EDITQ_API_KEYS": API_KEY,
            "EDITQ_PROVIDERS_FILE": str(providers),
            "EDITQ_LOG_LEVEL": "WARNING",
        }

    async def __aenter__(self) -> BenchStack:
        await self.upstream.start()
        s3_port = free_port()
        env = self.environment(s3_port)
        await self._spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], env
        )
        await _wait_http(f"http://127.0.0.1:{s3_port}/", 20)
        await self._create_bucket(env)
        editq = str(Path(sys.executable).with_name("editq"))
        await self._spawn([editq, "api", "--port", str(self.api_port)], env)
        for _ in range(self.workers):
            await self._spawn([sys.executable, "-m", "worker"], env)
        await _wait_http(f"{self.api_url}/readyz", 30)
        await asyncio.sleep(1.0)  # let the workers connect and start polling
        return self

    async def _create_bucket(self, env: dict[str, str]) -> None:
        from app.settings import Settings
        from app.storage import ObjectStore

        settings = Settings(
            s3_endpoint_url=env["EDITQ_S3_ENDPOINT_URL"],
            s3_bucket=env["EDITQ_S3_BUCKET"],
            s3_access_key_id=DEV_S3_ACCESS_KEY,
            s3_secret_access_key=DEV_S3_SECRET_KEY,
        )
        storage = ObjectStore(settings)
        await storage.ensure_bucket()
        storage.close()

    async def _spawn(self, command: list[str], env: dict[str, str]) -> None:
        self._processes.append(
            await asyncio.create_subprocess_exec(
                *command,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in reversed(self._processes):
            if process.returncode is None:
                process.terminate()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self.upstream.stop()
        self._scratch.cleanup()


async def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")
