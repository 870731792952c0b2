"""The stale-creation sweeper: discards what a dead creator left, never a live one's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.core.batches import BatchSpec
from app.core.jobs import JobInputs, StoredImage, new_batch_id, new_job_id
from app.dispatch import BatchWindow
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.keys import Keys
from worker.housekeeping.stale_batches import StaleBatchSweeper


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


def batch_spec() -> BatchSpec:
    return BatchSpec(
        id=new_batch_id(),
        tenant="tenant-a",
        created_at=time.time(),
        total=2,
        inputs=JobInputs(
            images=(StoredImage(key="in/0", content_type="image/png", bytes=9, width=8, height=8),)
        ),
    )


async def test_the_sweeper_discards_only_creations_whose_creator_went_silent(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix)
    store = BatchStore(
        redis, keys, BatchWindow(redis, settings.queue_name), retention_s=60, lease_s=0.2
    )
    sweeper = StaleBatchSweeper(store, interval_s=60, stale_after_s=0)
    live, dead = batch_spec(), batch_spec()
    assert await store.begin(dead, [new_job_id(), new_job_id()], "dead")
    await asyncio.sleep(0.3)  # the dead creator's lease lapses
    assert await store.begin(live, [new_job_id(), new_job_id()], "live")
    assert await sweeper.sweep() == 1
    assert await store.being_created(dead.id) is None
    assert await redis.exists(keys.batch(dead.id)) == 0
    assert await store.being_created(live.id) is not None
    assert await sweeper.sweep() == 0
