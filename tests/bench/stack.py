"""A whole editq deployment on this machine for benchmarks: a private redis-server,
moto, the API and the workers each in their own process, the fake upstream in the
benchmark's process (so its timestamps and the clients' share one clock)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import aiohttp

from app.cli.embedded import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, EmbeddedRedis, free_port
from tests.support.fakes.upstream import FakeUpstream

API_KEY = "bench-key"
MODEL = "fake/gpt-image-1"
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
    """Start with ``async with BenchStack(workers=1) as stack``; ``stack.upstream`` is the fake.

    ``environment`` adds or overrides ``EDITQ_*`` variables of every process (the
    per-key rate limit is lifted by default: a benchmark is one key sending a lot).
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        upstream_cap: int = 1000,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.upstream_cap = upstream_cap
        self.upstream = FakeUpstream()
        self.redis = EmbeddedRedis()
        self.s3_port = free_port()
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        # Only the first worker gets the port; later ones log that it is taken.
        self.worker_metrics_port = free_port()
        self.worker_metrics_url = f"http://127.0.0.1:{self.worker_metrics_port}/metrics"
        self.tag = uuid.uuid4().hex[:8]
        self.pids: dict[str, int] = {}
        self._overrides = dict(environment or {})
        self._processes: list[asyncio.subprocess.Process] = []
        self._scratch = tempfile.TemporaryDirectory(prefix="editq-bench-")
        self.scratch = Path(self._scratch.name)

    @property
    def redis_url(self) -> str:
        """The private redis-server's URL."""
        return self.redis.url

    @property
    def s3_endpoint(self) -> str:
        """moto's endpoint."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def queue_name(self) -> str:
        """The interactive lane's arq queue (the bulk lane's is this plus ``:bulk``)."""
        return f"editq-bench-{self.tag}:queue"

    @property
    def bucket(self) -> str:
        """The S3 bucket of inputs and outputs."""
        return f"bench-{self.tag}"

    def environment(self) -> dict[str, str]:
        """The variables every process of the stack shares."""
        providers = self.scratch / "providers.toml"
        providers.write_text(
            PROVIDERS.format(base_url=self.upstream.base_url, cap=self.upstream_cap)
        )
        return {
            **os.environ,
            "EDITQ_REDIS_URL": self.redis_url,
            "EDITQ_KEY_PREFIX": f"editq-bench-{self.tag}",
            "EDITQ_QUEUE_NAME": self.queue_name,
            "EDITQ_S3_ENDPOINT_URL": self.s3_endpoint,
            "EDITQ_S3_BUCKET": self.bucket,
            "EDITQ_S3_ACCESS_KEY_ID": DEV_S3_ACCESS_KEY,
            "EDITQ_S3_SECRET_ACCESS_KEY": DEV_S3_SECRET_KEY,
            "EDITQ_API_KEYS": API_KEY,
            "EDITQ_PROVIDERS_FILE": str(providers),
            "EDITQ_LOG_LEVEL": "WARNING",
            "EDITQ_RATE_LIMIT_PER_MINUTE": str(10**9),
            "EDITQ_WORKER_DRAIN_S": "0",  # a stopping stack hands running jobs back at once
            "EDITQ_WORKER_METRICS_HOST": "127.0.0.1",
            "EDITQ_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            **self._overrides,
        }

    async def __aenter__(self) -> BenchStack:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.redis.start()
        await self.upstream.start()
        env = self.environment()
        await self.spawn(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
        )
        await wait_http(f"{self.s3_endpoint}/", 20)
        await self._create_bucket(env)
        editq = str(Path(sys.executable).with_name("editq"))
        await self.spawn("api", [editq, "api", "--port", str(self.api_port)])
        for index in range(self.workers):
            await self.spawn(f"worker-{index}", [sys.executable, "-m", "worker"])
        await wait_http(f"{self.api_url}/readyz", 30)
        if self.workers:
            await wait_http(self.worker_metrics_url, 30)
        await asyncio.sleep(0.5)  # let the workers' lanes start polling

    async def _create_bucket(self, env: dict[str, str]) -> None:
        from app.blobs import ObjectStore
        from app.settings import Settings

        settings = Settings(
            s3_endpoint_url=env["EDITQ_S3_ENDPOINT_URL"],
            s3_bucket=env["EDITQ_S3_BUCKET"],
            s3_access_key_id=DEV_S3_ACCESS_KEY,
            s3_secret_access_key=DEV_S3_SECRET_KEY,
        )
        storage = ObjectStore(settings)
        await storage.ensure_bucket()
        storage.close()

    async def spawn(self, name: str, command: list[str]) -> int:
        """Start ``command`` with the stack's environment (stopped with the stack); its pid,
        also kept in ``pids[name]``. Its output goes to ``<scratch>/<name>.log``."""
        with (self.scratch / f"{name}.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command, env=self.environment(), stdout=log, stderr=log
            )
        self._processes.append(process)
        self.pids[name] = process.pid
        return process.pid

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines a spawned process wrote (for error messages)."""
        path = self.scratch / f"{name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

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
        self.redis.stop()
        self._scratch.cleanup()


async def wait_http(url: str, timeout_s: float) -> None:
    """Return once ``url`` answers below 500; RuntimeError after ``timeout_s``."""
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
