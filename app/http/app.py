"""The aiohttp application factory; resources live in one cleanup context, opened by
the factory the workers use too (``app.resources``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from aiohttp import web

from app.core.providers_config import ProvidersConfig
from app.crash_points import CrashPoints
from app.http.app_keys import (
    API_DOCUMENT,
    API_KEYS,
    BATCH_SERVICE,
    DOCS_PAGE,
    EVENTS,
    FAILED_LOGINS,
    FETCH_SESSION,
    FILE_SERVICE,
    IDEMPOTENCY,
    IMAGE_DECODER,
    JOB_SERVICE,
    JOB_STORE,
    METRICS,
    PROVIDERS,
    QUEUE,
    QUEUE_STATS,
    RATE_LIMITER,
    SETTINGS,
    STORAGE,
    STREAM_SECRET,
    SYNC_CALLS,
    WEBHOOKS,
)
from app.http.docs_page import render_docs_page
from app.http.middleware.cors import cors_headers, cors_middleware
from app.http.middleware.errors import (
    PUBLIC_PATHS,
    auth_middleware,
    errors_middleware,
    log_fields_middleware,
    rate_limit_headers,
    rate_limit_middleware,
)
from app.http.middleware.idempotency import idempotency_middleware
from app.http.middleware.ignored_params import ignored_params_header, ignored_params_middleware
from app.http.middleware.request_metrics import request_metrics_middleware
from app.http.openapi import build_document
from app.http.requests.decoding import ImageDecoder
from app.http.routes import add_routes
from app.net import guarded_session
from app.obs.metrics import Metrics
from app.resources import open_resources
from app.services.auth import ApiKeys
from app.services.batches import BatchService
from app.services.files import FileService
from app.services.jobs import JobService
from app.services.queue_stats import QueueStats
from app.settings import Settings
from app.store.idempotency import IdempotencyStore
from app.store.rate_limits import FailedLogins, RateLimiter
from app.store.stream_secret import shared_stream_secret
from app.store.sync_calls import SyncCallStore


def create_app(settings: Settings, providers: ProvidersConfig) -> web.Application:
    """The API application; connections open on start-up and close on clean-up."""
    app = web.Application(
        middlewares=[
            request_metrics_middleware,
            errors_middleware,
            cors_middleware,
            auth_middleware,
            log_fields_middleware,
            rate_limit_middleware,
            ignored_params_middleware,
            idempotency_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[PROVIDERS] = providers
    app[METRICS] = Metrics()
    app[API_KEYS] = ApiKeys(key.get_secret_value() for key in settings.api_keys)
    app.on_response_prepare.append(rate_limit_headers)
    app.on_response_prepare.append(ignored_params_header)
    app.on_response_prepare.append(cors_headers)
    app.cleanup_ctx.append(_resources)
    add_routes(app)
    app[API_DOCUMENT] = build_document(app, public_paths=PUBLIC_PATHS)
    app[DOCS_PAGE] = render_docs_page(app[API_DOCUMENT].spec)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with AsyncExitStack() as stack:
        shared = await stack.enter_async_context(
            open_resources(settings, app[METRICS], executor_name="images")
        )
        fetch_session = guarded_session(
            allow_private=settings.allow_private_urls, timeout_s=settings.remote_fetch_timeout_s
        )
        stack.push_async_callback(fetch_session.close)
        redis, keys, queue = shared.redis, shared.keys, shared.queue
        app[STORAGE] = shared.blobs
        app[WEBHOOKS] = shared.webhooks
        app[JOB_STORE] = shared.jobs
        app[IDEMPOTENCY] = IdempotencyStore(redis, keys, lease_s=settings.submit_lease_s)
        app[SYNC_CALLS] = SyncCallStore(redis, keys, window_s=settings.sync_retry_window_s)
        app[STREAM_SECRET] = await shared_stream_secret(redis, keys)
        app[RATE_LIMITER] = RateLimiter(redis, keys, per_minute=settings.rate_limit_per_minute)
        app[FAILED_LOGINS] = FailedLogins(redis, keys, per_minute=settings.auth_failures_per_minute)
        app[EVENTS] = shared.events
        app[QUEUE] = queue
        app[QUEUE_STATS] = QueueStats(redis, keys, queue, providers=app[PROVIDERS])
        app[IMAGE_DECODER] = ImageDecoder(
            shared.executor,
            max_image_pixels=settings.max_image_pixels,
            max_request_pixels=settings.max_request_pixels,
            process_pixels=settings.decode_budget_pixels,
            wait_s=settings.decode_wait_s,
        )
        app[FETCH_SESSION] = fetch_session
        crash_points = CrashPoints(settings.crash_at)
        app[JOB_SERVICE] = JobService(
            store=shared.jobs,
            storage=shared.blobs,
            queue=queue,
            events=shared.events,
            providers=app[PROVIDERS],
            allow_private_urls=settings.allow_private_urls,
            crash_points=crash_points,
        )
        app[FILE_SERVICE] = FileService(store=shared.files, storage=shared.blobs)
        app[BATCH_SERVICE] = BatchService(
            batches=shared.batches,
            jobs=shared.jobs,
            job_service=app[JOB_SERVICE],
            queue=queue,
            events=shared.events,
            window=settings.batch_window,
            providers=app[PROVIDERS],
            allow_private_urls=settings.allow_private_urls,
            crash_points=crash_points,
        )
        yield
