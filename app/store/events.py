"""Job transition events, fanned out inside one process from one Redis subscription.

Every transition is published by the job store's Lua script on one channel. Each
API process holds a single subscription and wakes the local waiters of that job,
so a thousand long-polls cost one Redis connection, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.background import Supervised

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobEvent:
    """One transition: the job id, its new status and run."""

    job_id: str
    status: str
    run: int


class JobEventHub:
    """Subscribes to the events channel and delivers each event to the job's listeners."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._listeners: dict[str, set[asyncio.Queue[JobEvent]]] = defaultdict(set)
        self._observers: list[Callable[[JobEvent], None]] = []
        self._subscribed = asyncio.Event()
        self._loop = Supervised(
            "job-event-hub", self._listen, every_s=None, errors=(RedisError, OSError)
        )

    async def start(self) -> None:
        """Begin listening; returns once the subscription is in place."""
        self._loop.start()
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)

    async def stop(self) -> None:
        """Stop listening."""
        await self._loop.stop()

    def observe(self, observer: Callable[[JobEvent], None]) -> None:
        """Call ``observer`` with every event of every job (it must not block)."""
        self._observers.append(observer)

    @contextlib.contextmanager
    def listen(self, job_id: str) -> Iterator[JobEventStream]:
        """A queue receiving every later event of ``job_id`` while the block runs.

        Register before reading the job's state, so no transition can slip between.
        """
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._listeners[job_id].add(queue)
        try:
            yield JobEventStream(queue)
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[job_id]

    async def _listen(self) -> None:
        """One subscription, until Redis drops it (then ``Supervised`` reconnects)."""
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self._channel)
            self._subscribed.set()
            self._loop.healthy()
            async for message in pubsub.listen():
                self._dispatch(message.get("data"))

    def _dispatch(self, data: object) -> None:
        if not isinstance(data, str | bytes):
            return
        try:
            raw = json.loads(data)
            event = JobEvent(job_id=raw["id"], status=raw["status"], run=int(raw["run"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed job event %r", data)
            return
        for observer in self._observers:
            observer(event)
        for queue in self._listeners.get(event.job_id, ()):
            queue.put_nowait(event)


class JobEventStream:
    """The events of one job as they arrive; ``next_event`` waits up to a timeout."""

    def __init__(self, queue: asyncio.Queue[JobEvent]) -> None:
        self._queue = queue

    async def next_event(self, timeout: float) -> JobEvent | None:
        """The next event, or None when ``timeout`` seconds pass first."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0))
        except TimeoutError:
            return None

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        while True:
            yield await self._queue.get()
