"""The typed registry of what the aiohttp application holds (set up in ``app.http.app``)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from app.blobs import ObjectStore
from app.core.providers_config import ProvidersConfig
from app.dispatch import EditQueue
from app.http.openapi import ApiDocument
from app.http.requests.decoding import ImageDecoder
from app.obs.metrics import Metrics
from app.services.auth import ApiKeys
from app.services.batches import BatchService
from app.services.files import FileService
from app.services.jobs import JobService
from app.services.queue_stats import QueueStats
from app.settings import Settings
from app.store.events import JobEventHub
from app.store.idempotency import IdempotencyStore
from app.store.jobs import JobStore
from app.store.rate_limits import FailedLogins, RateLimiter
from app.store.sync_calls import SyncCallStore
from app.store.webhooks import WebhookStore

SETTINGS = web.AppKey("settings", Settings)
PROVIDERS = web.AppKey("providers", ProvidersConfig)
API_KEYS = web.AppKey("api_keys", ApiKeys)
JOB_STORE = web.AppKey("job_store", JobStore)
STORAGE = web.AppKey("storage", ObjectStore)
QUEUE = web.AppKey("queue", EditQueue)
QUEUE_STATS = web.AppKey("queue_stats", QueueStats)
METRICS = web.AppKey("metrics", Metrics)
EVENTS = web.AppKey("events", JobEventHub)
IMAGE_DECODER = web.AppKey("image_decoder", ImageDecoder)
FETCH_SESSION = web.AppKey("fetch_session", aiohttp.ClientSession)
WEBHOOKS = web.AppKey("webhooks", WebhookStore)
JOB_SERVICE = web.AppKey("job_service", JobService)
BATCH_SERVICE = web.AppKey("batch_service", BatchService)
FILE_SERVICE = web.AppKey("file_service", FileService)
API_DOCUMENT = web.AppKey("api_document", ApiDocument)
DOCS_PAGE = web.AppKey("docs_page", str)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)
SYNC_CALLS = web.AppKey("sync_calls", SyncCallStore)
STREAM_SECRET = web.AppKey("stream_secret", bytes)  # signs stream URLs (app.core.stream_tokens)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
FAILED_LOGINS = web.AppKey("failed_logins", FailedLogins)
