"""What a worker process holds while it runs jobs, built at start-up, closed at shutdown."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from app.dispatch import deserialize, lane_queue, serialize
from app.net import guarded_session
from app.obs.metrics import Metrics
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.events import JobEventHub
from app.store.jobs import JobStore
from app.store.webhooks import WebhookStore
from worker.capacity.gate import UpstreamGate
from worker.housekeeping.janitor import RetentionJanitor
from worker.process.cancellations import CancellationWatcher
from worker.process.leases import LeaseKeeper
from worker.process.metrics_server import MetricsServer
from worker.providers.base import Upstream
from worker.providers.registry import build_upstreams
from worker.runs.result_cache import ResultCache
from worker.webhooks.dispatcher import WebhookDispatcher

CONTEXT_KEY = "editq"


@dataclass
class WorkerContext:
    """The worker's resources, shared by every task it runs."""

    settings: Settings
    providers: ProvidersConfig
    redis: Redis
    arq: ArqRedis
    store: JobStore
    storage: ObjectStore
    events: JobEventHub
    cancellations: CancellationWatcher
    leases: LeaseKeeper
    gate: UpstreamGate
    cache: ResultCache
    webhooks: WebhookStore
    batches: BatchStore
    dispatcher: WebhookDispatcher
    janitor: RetentionJanitor
    webhook_http: aiohttp.ClientSession
    http: aiohttp.ClientSession
    upstreams: dict[str, Upstream]
    executor: ThreadPoolExecutor
    metrics: Metrics
    metrics_server: MetricsServer

    def upstream(self, name: str) -> Upstream:
        """The adapter of upstream ``name``."""
        return self.upstreams[name]


async def startup(ctx: dict[str, Any]) -> None:
    """Connect to everything and start the background loops (before any lane polls)."""
    settings: Settings = ctx["settings"]
    providers: ProvidersConfig = ctx["providers"]
    metrics = Metrics()
    redis = Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    arq = await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
    store = JobStore(
        redis,
        prefix=settings.key_prefix,
        retention_s=settings.retention_s,
        bulk_queue=lane_queue(settings.queue_name, Lane.BULK),
        on_transition=metrics.job_transition,
    )
    events = JobEventHub(redis, store.events_channel)
    cancellations = CancellationWatcher(events)
    await events.start()
    executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="pillow")
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
    gate = UpstreamGate(redis, prefix=settings.key_prefix, lease_s=settings.job_lease_s)
    leases = LeaseKeeper(
        arq,
        gate,
        lease_s=settings.job_lease_s,
        caps={upstream.name: upstream.max_concurrency for upstream in providers.upstreams},
    )
    leases.start()
    webhooks = WebhookStore(redis, prefix=settings.key_prefix, retention_s=settings.retention_s)
    dispatcher = WebhookDispatcher(
        webhooks,
        arq,
        events,
        queue_name=settings.queue_name,
        lease_s=settings.webhook_claim_lease_s,
    )
    dispatcher.start()
    webhook_http = guarded_session(
        allow_private=settings.allow_private_urls, timeout_s=settings.webhook_timeout_s
    )
    metrics_server = MetricsServer(
        metrics,
        gate,
        providers.upstreams,
        host=settings.worker_metrics_host,
        port=settings.worker_metrics_port,
    )
    await metrics_server.start()
    storage = ObjectStore(settings)
    janitor = RetentionJanitor(
        redis, storage, prefix=settings.key_prefix, interval_s=settings.janitor_interval_s
    )
    janitor.start()
    ctx[CONTEXT_KEY] = WorkerContext(
        settings=settings,
        providers=providers,
        redis=redis,
        arq=arq,
        store=store,
        storage=ObjectStore(settings, on_error=metrics.s3_error),
        events=events,
        cancellations=cancellations,
        leases=leases,
        gate=gate,
        cache=ResultCache(redis, settings.key_prefix),
        webhooks=webhooks,
        batches=BatchStore(
            redis,
            prefix=settings.key_prefix,
            retention_s=settings.retention_s,
            bulk_queue=lane_queue(settings.queue_name, Lane.BULK),
        ),
        dispatcher=dispatcher,
        janitor=janitor,
        webhook_http=webhook_http,
        http=http,
        upstreams=build_upstreams(providers, http, executor),
        executor=executor,
        metrics=metrics,
        metrics_server=metrics_server,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop the loops and release every connection (after both lanes stopped)."""
    context: WorkerContext | None = ctx.pop(CONTEXT_KEY, None)
    if context is None:
        return
    await context.metrics_server.stop()
    await context.leases.stop()
    await context.dispatcher.stop()
    await context.janitor.stop()
    await context.events.stop()
    await context.webhook_http.close()
    for upstream in context.upstreams.values():
        await upstream.close()
    await context.http.close()
    context.storage.close()
    context.executor.shutdown(wait=False, cancel_futures=True)
    await context.arq.aclose()
    await context.redis.aclose()
