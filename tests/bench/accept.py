"""Accept: jobs accepted per second by one API process, 32 clients each sending JSON
submits with a 64 KB PNG back to back, against the floor (``tests.bench.floor``)
taking the same requests in a process of its own, on the same Redis and S3.

No worker runs, so the API and the floor have the machine to themselves. The two
are measured in alternating rounds, so a change in the machine's load hits both.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from app.cli.embedded import free_port
from tests.bench.client import edit_body, png_of_bytes
from tests.bench.figures import Row, ms
from tests.bench.proc import cpu_seconds
from tests.bench.stack import API_KEY, BenchStack, wait_http

CLIENTS = 32
IMAGE_BYTES = 64 * 1024


@dataclass
class Load:
    """Requests completed inside the measuring windows and each one's latency (s)."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return len(self.latencies) / self.seconds

    def cpu_ms_per_job(self, process: str) -> float:
        """CPU milliseconds ``process`` used per request (warm-up included, so a little high)."""
        return self.cpu_s.get(process, 0.0) * 1000 / max(1, len(self.latencies))


async def hammer(url: str, body: bytes, load: Load, *, clients: int, seconds: float) -> None:
    """``clients`` loops posting ``body`` to ``url`` for ``seconds`` (after a 1 s warm-up);
    adds what finished inside the window to ``load``."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.monotonic() + 1.0
        end = start + seconds

        async def client() -> None:
            while (began := time.monotonic()) < end:
                async with session.post(url, data=body) as response:
                    await response.read()
                    assert response.status == 202, response.status
                done = time.monotonic()
                if began >= start and done <= end:
                    load.latencies.append(done - began)

        await asyncio.gather(*(client() for _ in range(clients)))
    load.seconds += seconds


async def measure_accept(rounds: int = 2, seconds: float = 8.0) -> list[Row]:
    """Rows for accept throughput and p99, editq against the floor."""
    body = edit_body(png_of_bytes(IMAGE_BYTES), "accept benchmark")
    editq, floor = Load(), Load()
    async with BenchStack(workers=0) as stack:
        floor_port = free_port()
        await stack.spawn(
            "floor",
            [
                sys.executable,
                "-m",
                "tests.bench.floor",
                f"--port={floor_port}",
                f"--redis-url={stack.redis_url}",
                f"--s3-endpoint={stack.s3_endpoint}",
                f"--bucket={stack.bucket}",
                "--queue=floor:queue",
            ],
        )
        floor_url = f"http://127.0.0.1:{floor_port}"
        await wait_http(f"{floor_url}/healthz", 20)
        watched = {"moto": stack.pids["moto"], "clients": os.getpid()}
        for _ in range(rounds):
            for server, url, load in (("floor", floor_url, floor), ("api", stack.api_url, editq)):
                pids = {**watched, "server": stack.pids[server]}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                await hammer(f"{url}/v1/jobs", body, load, clients=CLIENTS, seconds=seconds)
                for name, pid in pids.items():
                    used = cpu_seconds(pid) - before[name]
                    load.cpu_s[name] = load.cpu_s.get(name, 0.0) + used
    return _rows(editq, floor, len(body))


def _rows(editq: Load, floor: Load, body_bytes: int) -> list[Row]:
    p99, floor_p99 = ms(editq.latencies, 99), ms(floor.latencies, 99)
    setup = f"{CLIENTS} clients, JSON body {body_bytes / 1024:.0f} KB (64 KB PNG as a data URL)"
    cpu = ", ".join(
        f"{name} {editq.cpu_ms_per_job(name):.1f} vs {floor.cpu_ms_per_job(name):.1f}"
        for name in ("server", "moto", "clients")
    )
    return [
        Row(
            "accept",
            "jobs accepted per second, 1 API process",
            editq.rate,
            "jobs/s",
            ">= 0.8x floor",
            editq.rate >= 0.8 * floor.rate,
            floor=floor.rate,
            note=f"{setup}; {len(editq.latencies)} editq and {len(floor.latencies)} floor "
            f"requests in {editq.seconds:.0f} s each; editq p50 {ms(editq.latencies, 50):.0f} ms, "
            f"floor p50 {ms(floor.latencies, 50):.0f} ms. CPU ms per job, editq vs floor: "
            f"{cpu} (server: the API or the floor process; 2 CPUs are shared by all).",
        ),
        Row(
            "accept",
            f"p99 latency at {CLIENTS} concurrent clients",
            p99,
            "ms",
            "<= 25 ms",
            p99 <= 25,
            floor=floor_p99,
        ),
    ]
