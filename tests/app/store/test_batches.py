"""Creating a batch against a real Redis: hidden until released, fenced, resumable,
and discardable when its creator died (issue 13, finding 5)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.core.batches import BatchSpec, variant_jobs
from app.core.edit_params import EditParams
from app.core.jobs import JobInputs, Lane, StoredImage, new_batch_id, new_job_id
from app.dispatch import BatchWindow, arq_job_id, lane_queue
from app.settings import Settings
from app.store.batches import BatchStore, CreationLost
from app.store.keys import Keys

TOTAL = 2500  # three write chunks


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
def store(redis: Redis, keys: Keys, settings: Settings) -> BatchStore:
    window = BatchWindow(redis, settings.queue_name)
    return BatchStore(redis, keys, window, retention_s=3600, lease_s=30)


def batch_spec(total: int = TOTAL) -> BatchSpec:
    now = time.time()
    return BatchSpec(
        id=new_batch_id(now),
        tenant="tenant-a",
        created_at=now,
        total=total,
        inputs=JobInputs(
            images=(StoredImage(key="in/0", content_type="image/png", bytes=9, width=8, height=8),)
        ),
        first_rank=40.0,
    )


def variants(total: int = TOTAL) -> list[EditParams]:
    return [EditParams(model="local/editor", prompt=f"v{index}") for index in range(total)]


async def test_a_batch_is_hidden_and_never_queued_until_released(
    store: BatchStore, redis: Redis, keys: Keys, settings: Settings
) -> None:
    spec = batch_spec()
    ids = [new_job_id() for _ in range(TOTAL)]
    jobs = variant_jobs(spec, ids, variants())
    assert await store.begin(spec, ids, "t1")
    assert not await store.begin(spec, ids, "t2")  # one creator at a time
    for start in range(0, TOTAL, 1000):
        await store.write_jobs(spec, jobs[start : start + 1000], "t1")
    queue = lane_queue(settings.queue_name, Lane.BULK)
    assert await store.get(spec.id) is None
    assert await redis.zcard(keys.tenant_batches("tenant-a")) == 0
    assert await redis.zcard(queue) == 0
    creating = await store.being_created(spec.id)
    assert creating is not None and creating.job_ids == tuple(ids)
    assert creating.spec == spec
    await store.release(spec, ids, "t1", window=10)
    batch = await store.get(spec.id)
    assert batch is not None and batch.status == "running"
    assert batch.counts["queued"] == TOTAL
    assert await redis.zrange(queue, 0, -1) == [arq_job_id(job_id, 1) for job_id in ids[:10]]
    assert await store.pending(spec.id) == TOTAL - 10
    assert await store.being_created(spec.id) is None
    assert await redis.zcard(keys.batches_being_created) == 0
    with pytest.raises(CreationLost):  # released once, never twice
        await store.release(spec, ids, "t1", window=10)
    assert await redis.zcard(queue) == 10


async def test_variant_jobs_are_the_same_each_time_they_are_built() -> None:
    spec = batch_spec(3)
    ids = [new_job_id() for _ in range(3)]
    first, again = variant_jobs(spec, ids, variants(3)), variant_jobs(spec, ids, variants(3))
    assert first == again
    assert [job.rank for job in first] == [40.0, 41.0, 42.0]
    assert [job.variant_index for job in first] == [0, 1, 2]


async def test_a_creation_taken_over_fences_out_its_first_creator(
    store: BatchStore, redis: Redis, keys: Keys
) -> None:
    spec = batch_spec(10)
    ids = [new_job_id() for _ in range(10)]
    jobs = variant_jobs(spec, ids, variants(10))
    assert await store.begin(spec, ids, "dead")
    await store.write_jobs(spec, jobs[:5], "dead")
    assert not await store.take_over(spec.id, "retry")  # the lease still runs
    await redis.delete(keys.batch_creator(spec.id))  # ... until it lapses
    assert await store.take_over(spec.id, "retry")
    with pytest.raises(CreationLost):
        await store.write_jobs(spec, jobs[5:], "dead")
    with pytest.raises(CreationLost):
        await store.release(spec, ids, "dead", window=2)
    await store.write_jobs(spec, jobs, "retry")  # the first half again, then the rest
    await store.release(spec, ids, "retry", window=2)
    batch = await store.get(spec.id)
    assert batch is not None and batch.counts["queued"] == 10


async def test_a_stale_creation_is_discarded_and_its_inputs_handed_to_the_janitor(
    store: BatchStore, redis: Redis, keys: Keys
) -> None:
    spec = batch_spec(1500)
    ids = [new_job_id() for _ in range(1500)]
    jobs = variant_jobs(spec, ids, variants(1500))
    assert await store.begin(spec, ids, "dead")
    await store.write_jobs(spec, jobs[:1000], "dead")
    assert await store.stale_creations(int(time.time() * 1000) + 1) == [spec.id]
    assert not await store.discard(spec.id, "sweeper")  # not held: nothing deleted
    await redis.delete(keys.batch_creator(spec.id))
    assert await store.take_over(spec.id, "sweeper")
    assert await store.discard(spec.id, "sweeper")
    left = [key async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000)]
    assert left == [keys.retention]
    assert await redis.zscore(keys.retention, spec.id) is not None
    assert await store.stale_creations(int(time.time() * 1000) + 1) == []
