"""One worker process: an arq ``Worker`` per lane (interactive, bulk) over one context.

Each lane polls its own queue, so a bulk queue thousands deep never delays the
pickup of a single job. The lanes share the process's connections, upstream
adapters and background loops (``worker.process.resources``), which start before either
lane and stop after both.

Stopping drains: both lanes stop taking jobs, running jobs get
``worker_drain_s`` to finish, and whatever is still running then is handed back
for immediate pickup elsewhere (not after a lease). A lane whose poll loop dies
because Redis went away is restarted with backoff, so workers resume by
themselves when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker
from redis.exceptions import RedisError

from app.background import Backoff
from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from app.dispatch import lane_queue, open_pool
from app.settings import Settings
from worker.process.arq_settings import worker_settings
from worker.process.resources import shutdown, startup

log = logging.getLogger(__name__)
RESTART_MAX_S = 10.0


class LaneWorkers:
    """Both lanes' arq workers in this event loop; ``start``/``stop`` or ``run``."""

    def __init__(self, settings: Settings, providers: ProvidersConfig) -> None:
        self.settings = settings
        self.providers = providers
        self.ctx: dict[str, Any] = {"settings": settings, "providers": providers}
        self._workers: dict[Lane, Worker] = {}
        # Each lane's arq pool is ours: opened before the lane polls, closed after it
        # stopped. Left to arq, a lane stopped while its pool was still connecting
        # leaked that connection.
        self._pools: dict[Lane, ArqRedis] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def _new_worker(self, lane: Lane) -> Worker:
        worker = Worker(
            **worker_settings(self.settings, self.providers, lane),
            handle_signals=False,
            ctx=self.ctx,
            redis_pool=self._pools[lane],
        )
        # A picked job's in-progress key starts at one lease, which its task renews
        # (``LeaseKeeper.hold``), not at arq's job_timeout + 10 s: a worker killed after
        # picking a job but before leasing it must not strand that job for minutes.
        worker.in_progress_timeout_s = self.settings.job_lease_s
        self._workers[lane] = worker
        return worker

    async def start(self) -> None:
        """Build the shared context, then start polling both lanes."""
        await startup(self.ctx)
        for lane in Lane:
            self._pools[lane] = await open_pool(
                self.settings.redis_url, lane_queue(self.settings.queue_name, lane)
            )
        self._supervisors = [
            asyncio.create_task(self._supervise(lane), name=f"lane-{lane.value}") for lane in Lane
        ]

    async def _supervise(self, lane: Lane) -> None:
        backoff = Backoff(0.5, RESTART_MAX_S)
        while not self._stopping:
            worker = self._new_worker(lane)
            try:
                await worker.async_run()
                return
            except asyncio.CancelledError:
                if self._stopping:
                    return
                raise
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning(
                    "lane %s lost Redis (%s); restarting in %.1f s",
                    lane.value,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop taking jobs, let running ones finish for ``drain_s`` (default
        ``worker_drain_s``), hand the rest back, then release the context."""
        self._stopping = True
        grace = self.settings.worker_drain_s if drain_s is None else drain_s
        workers = list(self._workers.values())
        for worker in workers:
            worker.allow_pick_jobs = False
        running = [task for worker in workers for task in worker.tasks.values() if not task.done()]
        if running and grace > 0:
            log.info("draining %d running jobs for up to %.0f s", len(running), grace)
            await asyncio.wait(running, timeout=grace)
        for worker in workers:
            worker.handle_sig(signal.SIGTERM)  # cancels what is left: it is handed back
        for worker in workers:
            # arq's close() gathers its job tasks after cancelling them and gives up
            # (skipping the rest of its clean-up) if one ends cancelled: drain first.
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            with contextlib.suppress(RedisError, OSError):
                await worker.close()
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for pool in self._pools.values():
            with contextlib.suppress(RedisError, OSError):
                await pool.aclose()
        self._pools.clear()
        await shutdown(self.ctx)

    async def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
