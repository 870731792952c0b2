"""One worker process: an arq ``Worker`` per lane (interactive, bulk) over one context.

Each lane polls its own queue, so a bulk queue thousands deep never delays the
pickup of a single job. The lanes share the process's connections, upstream
adapters and background loops (``worker.context``), which start before either
lane and stop after both.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from arq.worker import Worker

from app.providers_config import ProvidersConfig
from app.settings import Settings
from worker.context import shutdown, startup
from worker.settings import worker_settings


class LaneWorkers:
    """Both lanes' arq workers in this event loop; ``start``/``stop`` or ``run``."""

    def __init__(self, settings: Settings, providers: ProvidersConfig) -> None:
        self.ctx: dict[str, Any] = {"settings": settings, "providers": providers}
        self._workers = [
            Worker(
                **worker_settings(settings, providers, bulk=bulk),
                handle_signals=False,
                ctx=self.ctx,
            )
            for bulk in (False, True)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Build the shared context, then start polling both lanes."""
        await startup(self.ctx)
        self._tasks = [asyncio.create_task(worker.async_run()) for worker in self._workers]

    async def stop(self) -> None:
        """Stop both lanes (running jobs are handed back at once), then the context."""
        for worker in self._workers:
            worker.handle_sig(signal.SIGTERM)
        for worker in self._workers:
            # arq's close() gathers its job tasks after cancelling them and gives up
            # (skipping the rest of its clean-up) if one ends cancelled: drain first.
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            await worker.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await shutdown(self.ctx)

    async def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.stop()
