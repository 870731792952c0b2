"""The connections and stores the API and the workers share, opened and closed in one place.

``open_resources`` is an async context manager over an ``AsyncExitStack``: every
client it opens (Redis, the arq pool, the S3 client and its thread pool, the image
executor, the event subscription) is closed when the block ends, in reverse order,
even when opening a later one failed. The API (``app.http.app``) and the worker
process (``worker.process.resources``) both build on it, so the two can never wire
the stores differently.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from app import dispatch
from app.blobs import ObjectStore
from app.dispatch import BatchWindow, EditQueue
from app.obs.metrics import Metrics
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.events import JobEventHub
from app.store.files import FileStore
from app.store.jobs import JobStore
from app.store.keys import Keys
from app.store.webhooks import WebhookStore


@dataclass(frozen=True)
class Resources:
    """What one process holds open for as long as it serves."""

    settings: Settings
    keys: Keys
    redis: Redis  # decodes responses
    queue: EditQueue  # arq's queues, through which jobs reach the workers
    jobs: JobStore
    batches: BatchStore
    webhooks: WebhookStore
    files: FileStore
    blobs: ObjectStore
    events: JobEventHub
    executor: ThreadPoolExecutor  # CPU work (Pillow) off the event loop


@asynccontextmanager
async def open_resources(
    settings: Settings, metrics: Metrics, *, executor_name: str
) -> AsyncIterator[Resources]:
    """Open everything, yield it, close it all (also when opening fails half-way)."""
    async with AsyncExitStack() as stack:
        redis = Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        stack.push_async_callback(redis.aclose)
        queue = await dispatch.connect(settings.redis_url, settings.queue_name)
        stack.push_async_callback(queue.aclose)
        blobs = ObjectStore(settings, on_error=metrics.s3_error)
        stack.callback(blobs.close)
        executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix=executor_name
        )
        stack.callback(executor.shutdown, wait=False, cancel_futures=True)
        keys = Keys(settings.key_prefix)
        window = BatchWindow(redis, settings.queue_name)
        events = JobEventHub(redis, keys.events_channel)
        await events.start()
        stack.push_async_callback(events.stop)
        yield Resources(
            settings=settings,
            keys=keys,
            redis=redis,
            queue=queue,
            jobs=JobStore(
                redis,
                keys,
                window,
                retention_s=settings.retention_s,
                on_transition=metrics.job_transition,
            ),
            batches=BatchStore(
                redis,
                keys,
                window,
                retention_s=settings.retention_s,
                lease_s=settings.submit_lease_s,
                on_transition=metrics.job_transition,
            ),
            webhooks=WebhookStore(
                redis,
                keys,
                retention_s=settings.retention_s,
                root_secret=(
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
                ),
            ),
            files=FileStore(redis, keys),
            blobs=blobs,
            events=events,
            executor=executor,
        )
