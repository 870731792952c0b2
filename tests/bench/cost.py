"""Cost per job: Redis commands per job lifecycle (submit, pick up, run, succeed),
counted with MONITOR on the stack's private redis-server, against a bare arq job
(enqueue and run a no-op) counted the same way on a redis-server of its own.

Both workers poll every 0.5 s (arq's default) while counting, and what either does
while idle (polls, health checks, lease and reaper loops) is measured first and
subtracted per command, so the figures are per job, not per second. Commands a Lua
script makes are counted apart from the ones clients send (EVALSHA counts as sent).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func
from redis.asyncio import Redis

from app.cli.embedded import EmbeddedRedis
from tests.bench.client import BenchClient, edit_body
from tests.bench.figures import Row
from tests.bench.stack import BenchStack
from tests.support.images import png

JOBS = 200
IDLE_S = 3.0
POLL_DELAY_S = 0.5


class CommandCounter:
    """Counts the commands a redis-server runs (via MONITOR) between ``start`` and ``stop``,
    by ``(origin, name)`` where origin is "client" or "lua"."""

    def __init__(self, url: str) -> None:
        self._redis = Redis.from_url(url)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Begin counting (returns once MONITOR is on)."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        self.seconds = time.monotonic()

    async def _run(self) -> None:
        async with self._redis.monitor() as monitor:
            self._ready.set()
            while True:
                info = await monitor.next_command()
                name = str(info["command"]).split(" ", 1)[0].upper()
                origin = "lua" if info["client_type"] == "lua" else "client"
                self.counts[(origin, name)] += 1

    async def stop(self) -> Counter[tuple[str, str]]:
        """Stop counting; the counts (MONITOR's own and INFO are left out)."""
        await asyncio.sleep(0.2)  # let MONITOR's stream catch up
        self.seconds = time.monotonic() - self.seconds
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()
        for name in ("MONITOR", "INFO", "PING"):
            self.counts.pop(("client", name), None)
        return self.counts


async def count_commands(url: str, work: Callable[[], Awaitable[None]]) -> Counter[tuple[str, str]]:
    """Commands ``work`` causes: counted while it runs, less the idle rate over that time."""
    idle = CommandCounter(url)
    await idle.start()
    await asyncio.sleep(IDLE_S)
    idle_counts = await idle.stop()
    busy = CommandCounter(url)
    await busy.start()
    await work()
    busy_counts = await busy.stop()
    scale = busy.seconds / idle.seconds
    net: Counter[tuple[str, str]] = Counter()
    for key, count in busy_counts.items():
        net[key] = max(0, round(count - idle_counts.get(key, 0) * scale))
    return net


async def editq_commands() -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """Net commands for ``JOBS`` editq jobs (submit → succeeded) and for one read of each."""
    environment = {"EDITQ_WORKER_POLL_DELAY_S": str(POLL_DELAY_S)}
    async with (
        BenchStack(workers=1, environment=environment) as stack,
        BenchClient(stack.api_url, connections=16) as client,
    ):
        body = edit_body(png(64, 64), "cost")
        await client.wait_job(await client.submit(body))  # warm-up (scripts loaded)
        job_ids: list[str] = []

        async def lifecycle() -> None:
            base = len(stack.upstream.requests)
            for _ in range(JOBS // 20):
                job_ids.extend(await asyncio.gather(*(client.submit(body) for _ in range(20))))
            await stack.upstream.wait_for_requests(base + JOBS, timeout_s=60)
            await stack.upstream.wait_idle(timeout_s=30)
            await asyncio.sleep(1.0)  # the worker stores outputs and records the success

        async def reads() -> None:
            for job_id in job_ids:
                assert (await client.get(f"/v1/jobs/{job_id}"))["status"] == "succeeded"

        return (
            await count_commands(stack.redis_url, lifecycle),
            await count_commands(stack.redis_url, reads),
        )


async def _noop(ctx: dict[str, Any]) -> None:
    return None


async def arq_commands() -> Counter[tuple[str, str]]:
    """Net commands for ``JOBS`` bare arq jobs: enqueue a no-op and run it, defaults."""
    server = EmbeddedRedis()
    server.start()
    try:
        settings = RedisSettings.from_dsn(server.url)
        pool = await create_pool(settings)
        worker = Worker(
            functions=[func(_noop, name="noop")],
            redis_settings=settings,
            handle_signals=False,
            poll_delay=POLL_DELAY_S,
        )
        running = asyncio.create_task(worker.async_run())

        async def lifecycle() -> None:
            for _ in range(JOBS):
                await pool.enqueue_job("noop")
            async with asyncio.timeout(60):
                while worker.jobs_complete < JOBS:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)

        counts = await count_commands(server.url, lifecycle)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await pool.aclose()
        return counts
    finally:
        server.stop()


def per_job(counts: Counter[tuple[str, str]], origin: str) -> float:
    """Commands of ``origin`` per job."""
    return sum(n for (kind, _), n in counts.items() if kind == origin) / JOBS


def breakdown(counts: Counter[tuple[str, str]], origin: str, top: int = 12) -> str:
    """The most frequent commands of ``origin``, per job."""
    named = Counter({name: n for (kind, name), n in counts.items() if kind == origin})
    return ", ".join(f"{name} {n / JOBS:.1f}" for name, n in named.most_common(top))


async def measure_cost() -> tuple[list[Row], str]:
    """Rows for Redis commands per job, editq against bare arq; a note with the breakdown."""
    editq, reads = await editq_commands()
    bare = await arq_commands()
    sent, scripted, floor = per_job(editq, "client"), per_job(editq, "lua"), per_job(bare, "client")
    rows = [
        Row(
            "cost",
            "Redis commands sent per job (submit → succeeded)",
            sent,
            "cmds",
            "<= 25",
            sent <= 25,
            floor=floor,
        ),
        Row(
            "cost",
            "… plus commands run inside editq's Lua scripts",
            scripted,
            "cmds",
            "—",
            None,
        ),
    ]
    note = (
        f"cost: {JOBS} jobs, MONITOR counts less the idle rate (both workers poll every "
        f"{POLL_DELAY_S:g} s while counting); floor = a bare arq job (enqueue + run a no-op, "
        f"arq defaults otherwise), {floor:.1f} sent — not the issue's ~6-7: arq runs 4 "
        f"MULTI/EXEC transactions per job. editq per job, sent: "
        f"{breakdown(editq, 'client', 20)}; inside scripts: {breakdown(editq, 'lua')}. A "
        f"client's read of the finished job costs {per_job(reads, 'client'):.1f} more. arq per "
        f"job: {breakdown(bare, 'client')}."
    )
    return rows, note
