"""What a worker process holds while it runs jobs, opened at start-up and closed at shutdown.

The shared connections and stores come from ``app.resources.open_resources`` (the
factory the API uses too); the worker adds its own parts (the upstream adapters and
their HTTP session, the shared gate, leases, the result cache, the webhook
dispatcher, the retention janitor, the metrics port) on the same ``AsyncExitStack``,
so everything opened is closed, in reverse order, even after a failed start-up.
"""

from __future__ import annotations

from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.core.providers_config import ProvidersConfig
from app.net import guarded_session
from app.obs.metrics import Metrics
from app.resources import open_resources
from app.services.files import FileService
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.jobs import JobStore
from app.store.webhooks import WebhookStore
from worker.capacity.gate import UpstreamGate
from worker.housekeeping.janitor import RetentionJanitor
from worker.housekeeping.stale_batches import StaleBatchSweeper
from worker.process.cancellations import CancellationWatcher
from worker.process.leases import LeaseKeeper
from worker.process.metrics_server import MetricsServer
from worker.providers.base import AsyncUpstream, Upstream
from worker.providers.registry import AnyUpstream, build_upstreams
from worker.runs.result_cache import ResultCache
from worker.webhooks.dispatcher import WebhookDispatcher

CONTEXT_KEY = "editq"
STACK_KEY = "editq-resources"
# A creation is discarded once its creator has been silent this many leases: a client
# retrying with the same key has had the time to take it over and finish it first.
STALE_CREATION_LEASES = 4


@dataclass(frozen=True)
class WorkerContext:
    """What the worker's tasks use, shared by every task the process runs."""

    settings: Settings
    providers: ProvidersConfig
    redis: Redis
    store: JobStore
    batches: BatchStore
    storage: ObjectStore
    webhooks: WebhookStore
    executor: Executor  # CPU work (Pillow) off the event loop
    cancellations: CancellationWatcher
    leases: LeaseKeeper
    gate: UpstreamGate
    cache: ResultCache
    upstreams: dict[str, AnyUpstream]
    webhook_http: aiohttp.ClientSession
    metrics: Metrics

    def upstream(self, name: str) -> Upstream:
        """The adapter of synchronous upstream ``name`` (TypeError for an async one)."""
        adapter = self.upstreams[name]
        if not isinstance(adapter, Upstream):
            raise TypeError(f"upstream {name} is asynchronous: it is submitted to and polled")
        return adapter

    def async_upstream(self, name: str) -> AsyncUpstream:
        """The adapter of asynchronous upstream ``name`` (TypeError for a sync one)."""
        adapter = self.upstreams[name]
        if not isinstance(adapter, AsyncUpstream):
            raise TypeError(f"upstream {name} is synchronous")
        return adapter


async def startup(ctx: dict[str, Any]) -> None:
    """Open everything and start the background loops (before any lane polls)."""
    settings: Settings = ctx["settings"]
    providers: ProvidersConfig = ctx["providers"]
    stack = AsyncExitStack()
    try:
        ctx[CONTEXT_KEY] = await _open(stack, settings, providers)
    except BaseException:
        await stack.aclose()
        raise
    ctx[STACK_KEY] = stack


async def _open(
    stack: AsyncExitStack, settings: Settings, providers: ProvidersConfig
) -> WorkerContext:
    metrics = Metrics()
    shared = await stack.enter_async_context(
        open_resources(settings, metrics, executor_name="pillow")
    )
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
    stack.push_async_callback(http.close)
    upstreams = build_upstreams(providers, http, shared.executor)
    for upstream in upstreams.values():
        stack.push_async_callback(upstream.close)
    webhook_http = guarded_session(
        allow_private=settings.allow_private_urls, timeout_s=settings.webhook_timeout_s
    )
    stack.push_async_callback(webhook_http.close)
    gate = UpstreamGate(
        shared.redis, shared.keys, settings.queue_name, lease_s=settings.job_lease_s
    )
    leases = LeaseKeeper(
        shared.queue,
        gate,
        lease_s=settings.job_lease_s,
        caps={upstream.name: upstream.max_concurrency for upstream in providers.upstreams},
    )
    leases.start()
    stack.push_async_callback(leases.stop)
    dispatcher = WebhookDispatcher(
        shared.webhooks, shared.queue, shared.events, lease_s=settings.webhook_claim_lease_s
    )
    dispatcher.start()
    stack.push_async_callback(dispatcher.stop)
    janitor = RetentionJanitor(
        shared.redis,
        shared.blobs,
        shared.keys,
        FileService(store=shared.files, storage=shared.blobs),
        interval_s=settings.janitor_interval_s,
    )
    janitor.start()
    stack.push_async_callback(janitor.stop)
    sweeper = StaleBatchSweeper(
        shared.batches,
        interval_s=settings.submit_lease_s,
        stale_after_s=STALE_CREATION_LEASES * settings.submit_lease_s,
    )
    sweeper.start()
    stack.push_async_callback(sweeper.stop)
    metrics_server = MetricsServer(
        metrics,
        gate,
        providers.upstreams,
        host=settings.worker_metrics_host,
        port=settings.worker_metrics_port,
    )
    await metrics_server.start()
    stack.push_async_callback(metrics_server.stop)
    return WorkerContext(
        settings=settings,
        providers=providers,
        redis=shared.redis,
        store=shared.jobs,
        batches=shared.batches,
        storage=shared.blobs,
        webhooks=shared.webhooks,
        executor=shared.executor,
        cancellations=CancellationWatcher(shared.events),
        leases=leases,
        gate=gate,
        cache=ResultCache(shared.redis, shared.keys),
        upstreams=upstreams,
        webhook_http=webhook_http,
        metrics=metrics,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop the loops and release everything (after both lanes stopped)."""
    ctx.pop(CONTEXT_KEY, None)
    stack: AsyncExitStack | None = ctx.pop(STACK_KEY, None)
    if stack is not None:
        await stack.aclose()
