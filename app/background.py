"""Background loops and retries, written once: start, stop, log and back off.

``Backoff`` is the one exponential schedule (a first delay doubling up to a cap).
``retry_until`` runs an operation again on the errors it names until a deadline.
``Supervised`` runs a process's background loop (the lease renewal, the webhook
dispatcher, the retention janitor, the event subscription): each ``step`` runs
after ``every_s`` (or again at once when ``every_s`` is None and the step returns),
a step that raises one of ``errors`` is logged and retried after the backoff, any
other error ends the loop loudly (it is logged with its traceback), and ``stop``
cancels and awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Backoff:
    """Delays of ``first`` seconds, doubling up to ``cap``; ``reset`` starts over."""

    def __init__(self, first: float, cap: float) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to the cap)."""
        delay = self._next
        self._next = min(delay * 2, self._cap)
        return delay

    def peek(self) -> float:
        """The delay ``next`` would return, without moving on."""
        return self._next

    def reset(self) -> None:
        """Start again from the first delay."""
        self._next = self._first


async def retry_until(
    operation: Callable[[], Awaitable[T]],
    *,
    until: float,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    backoff: Backoff | None = None,
) -> T:
    """Run ``operation``, retrying with backoff (0.25 s doubling to 5 s unless given)
    while it raises one of ``retry_on``, until loop time ``until``; after that the
    last error is raised."""
    loop = asyncio.get_running_loop()
    delays = backoff or Backoff(0.25, 5.0)
    while True:
        try:
            return await operation()
        except retry_on as exc:
            delay = delays.next()
            if loop.time() + delay > until:
                raise
            log.warning("%s failed (%s); retrying in %.2f s", what, exc, delay)
            await asyncio.sleep(delay)


class Supervised:
    """One named background loop; see the module docstring."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        every_s: float | None,
        errors: tuple[type[BaseException], ...],
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._every_s = every_s
        self._errors = errors
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self._task is not None and not self._task.done()

    def healthy(self) -> None:
        """Tell the loop a long-running step is working again (its next failure is
        retried after the first delay, not the last one)."""
        self._backoff.reset()

    def start(self) -> None:
        """Begin the loop (a second start while it runs is a no-op)."""
        if not self.running:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has stopped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            if self._every_s is not None:
                await asyncio.sleep(self._every_s)
            try:
                await self._step()
            except self._errors as exc:
                delay = self._backoff.next()
                log.warning("%s failed (%s); again in %.2f s", self.name, exc, delay)
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s stopped by an unexpected error", self.name)
                raise
            else:
                self._backoff.reset()
