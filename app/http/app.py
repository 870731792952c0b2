"""The aiohttp application factory; resources live in one cleanup context."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from app.dispatch import EditQueue, deserialize, lane_queue, serialize
from app.http.app_keys import (
    API_DOCUMENT,
    API_KEYS,
    BATCH_SERVICE,
    DOCS_PAGE,
    EVENTS,
    FETCH_SESSION,
    IDEMPOTENCY,
    IMAGE_EXECUTOR,
    JOB_SERVICE,
    JOB_STORE,
    METRICS,
    PROVIDERS,
    QUEUE,
    QUEUE_STATS,
    RATE_LIMITER,
    SETTINGS,
    STORAGE,
    WEBHOOKS,
)
from app.http.docs_page import render_docs_page
from app.http.middleware.errors import (
    PUBLIC_PATHS,
    auth_middleware,
    errors_middleware,
    log_fields_middleware,
    rate_limit_headers,
    rate_limit_middleware,
)
from app.http.middleware.idempotency import idempotency_middleware
from app.http.openapi import build_document
from app.http.routes import add_routes
from app.net import guarded_session
from app.obs.metrics import Metrics
from app.services.auth import ApiKeys
from app.services.batches import BatchService
from app.services.jobs import JobService
from app.services.queue_stats import QueueStats
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.events import JobEventHub
from app.store.idempotency import IdempotencyStore
from app.store.jobs import JobStore
from app.store.rate_limits import RateLimiter
from app.store.webhooks import WebhookStore


def create_app(settings: Settings, providers: ProvidersConfig) -> web.Application:
    """The API application; connections open on start-up and close on clean-up."""
    app = web.Application(
        middlewares=[
            errors_middleware,
            auth_middleware,
            log_fields_middleware,
            rate_limit_middleware,
            idempotency_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[PROVIDERS] = providers
    app[METRICS] = Metrics()
    app[API_KEYS] = ApiKeys(key.get_secret_value() for key in settings.api_keys)
    app.on_response_prepare.append(rate_limit_headers)
    app.cleanup_ctx.append(_resources)
    add_routes(app)
    app[API_DOCUMENT] = build_document(app, public_paths=PUBLIC_PATHS)
    app[DOCS_PAGE] = render_docs_page(app[API_DOCUMENT].spec)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    arq_pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
    metrics = app[METRICS]
    storage = ObjectStore(settings, on_error=metrics.s3_error)
    bulk_queue = lane_queue(settings.queue_name, Lane.BULK)
    store = JobStore(
        redis,
        prefix=settings.key_prefix,
        retention_s=settings.retention_s,
        bulk_queue=bulk_queue,
        on_transition=metrics.job_transition,
    )
    events = JobEventHub(redis, store.events_channel)
    executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="images")
    queue = EditQueue(arq_pool, settings.queue_name)
    fetch_session = guarded_session(
        allow_private=settings.allow_private_urls, timeout_s=settings.remote_fetch_timeout_s
    )
    app[STORAGE] = storage
    app[WEBHOOKS] = WebhookStore(
        redis, prefix=settings.key_prefix, retention_s=settings.retention_s
    )
    app[JOB_STORE] = store
    app[IDEMPOTENCY] = IdempotencyStore(redis, prefix=settings.key_prefix)
    app[RATE_LIMITER] = RateLimiter(
        redis, prefix=settings.key_prefix, per_minute=settings.rate_limit_per_minute
    )
    app[EVENTS] = events
    app[QUEUE] = queue
    app[QUEUE_STATS] = QueueStats(
        redis, queue, prefix=settings.key_prefix, providers=app[PROVIDERS]
    )
    app[IMAGE_EXECUTOR] = executor
    app[FETCH_SESSION] = fetch_session
    app[JOB_SERVICE] = JobService(
        store=store,
        storage=storage,
        queue=queue,
        events=events,
        providers=app[PROVIDERS],
        allow_private_urls=settings.allow_private_urls,
    )
    app[BATCH_SERVICE] = BatchService(
        batches=BatchStore(
            redis,
            prefix=settings.key_prefix,
            retention_s=settings.retention_s,
            bulk_queue=bulk_queue,
            on_transition=metrics.job_transition,
        ),
        jobs=store,
        job_service=app[JOB_SERVICE],
        queue=queue,
        events=events,
        window=settings.batch_window,
        providers=app[PROVIDERS],
        allow_private_urls=settings.allow_private_urls,
    )
    await events.start()
    try:
        yield
    finally:
        await events.stop()
        await arq_pool.aclose()
        await redis.aclose()
        storage.close()
        await fetch_session.close()
        executor.shutdown(wait=False, cancel_futures=True)
