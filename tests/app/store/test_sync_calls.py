"""The jobs of synchronous edits by request fingerprint, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.settings import Settings
from app.store.keys import Keys
from app.store.sync_calls import SyncCallStore


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_a_remembered_job_is_found_by_tenant_and_fingerprint(
    redis: Redis, settings: Settings
) -> None:
    store = SyncCallStore(redis, Keys(settings.key_prefix), window_s=60)
    await store.remember("tenant-a", "f1", "job_1")
    assert await store.find("tenant-a", "f1") == "job_1"
    assert await store.find("tenant-a", "f2") is None
    assert await store.find("tenant-b", "f1") is None
    await store.remember("tenant-a", "f1", "job_2")  # the latest call's job
    assert await store.find("tenant-a", "f1") == "job_2"


async def test_a_job_is_found_only_within_the_window(redis: Redis, settings: Settings) -> None:
    store = SyncCallStore(redis, Keys(settings.key_prefix), window_s=0.05)
    await store.remember("tenant-a", "f1", "job_1")
    ttl_ms = await redis.pttl(Keys(settings.key_prefix).sync_call("tenant-a", "f1"))
    assert 0 < ttl_ms <= 50
    await asyncio.sleep(0.1)
    assert await store.find("tenant-a", "f1") is None
