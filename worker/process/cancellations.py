"""Stopping a running job the moment a client cancels it.

The worker follows the job events (``app.store.events``); when a job it is running
turns ``canceled``, the asyncio task running it is cancelled, which abandons the
upstream call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from app.store.events import JobEvent, JobEventHub

log = logging.getLogger(__name__)


class CancellationWatcher:
    """Maps job ids to the tasks running them and cancels those the clients cancel."""

    def __init__(self, events: JobEventHub) -> None:
        self._running: dict[str, asyncio.Task[object]] = {}
        self._canceled: set[str] = set()
        events.observe(self._on_event)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[None]:
        """Cancel the current task if ``job_id`` is canceled while the block runs."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("watch() needs a running task")
        self._running[job_id] = task
        try:
            yield
        finally:
            self._running.pop(job_id, None)

    def was_canceled(self, job_id: str) -> bool:
        """True if a client's cancel stopped this job here (consumes the mark)."""
        if job_id in self._canceled:
            self._canceled.discard(job_id)
            return True
        return False

    def _on_event(self, event: JobEvent) -> None:
        task = self._running.get(event.job_id)
        if event.status == "canceled" and task is not None and not task.done():
            log.info("job %s canceled by its client; abandoning it", event.job_id)
            self._canceled.add(event.job_id)
            task.cancel()
