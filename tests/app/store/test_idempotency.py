"""The idempotency store against a real Redis: one claim per key, owner-only changes, TTLs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest
from redis.asyncio import Redis

from app.settings import Settings
from app.store.idempotency import (
    Claim,
    ExistingRecord,
    IdempotencyStore,
    StoredResponse,
)
from app.store.keys import Keys

ACCEPTED = StoredResponse(
    status=202, headers={"Location": "/v1/jobs/job_1"}, body='{"id": "job_1"}', job_id=None
)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, settings: Settings) -> IdempotencyStore:
    return IdempotencyStore(redis, Keys(settings.key_prefix), lease_s=5, done_ttl_s=60)


async def claimed(store: IdempotencyStore, key: str = "k", fingerprint: str = "f1") -> Claim:
    claim = await store.claim("tenant", key, fingerprint)
    assert isinstance(claim, Claim)
    return claim


def test_the_key_is_hashed_and_scoped_to_the_tenant() -> None:
    key = Keys("P").idempotency("tenant-a", "my key")
    assert key.startswith("P:idem:tenant-a:") and "my key" not in key
    assert Keys("P").idempotency("tenant-b", "my key") != key


async def test_one_claim_per_key_and_the_rest_see_it_in_progress(
    store: IdempotencyStore, redis: Redis
) -> None:
    results = await asyncio.gather(*(store.claim("tenant", "k", "f1") for _ in range(10)))
    claims = [result for result in results if isinstance(result, Claim)]
    assert len(claims) == 1
    others = [result for result in results if isinstance(result, ExistingRecord)]
    assert others == [ExistingRecord(fingerprint="f1", response=None)] * 9
    assert claims[0].resumed is None
    # The record outlives its lease (it names what the request reserved); the lease
    # itself is a field in Redis time.
    assert 5000 < await redis.pttl(claims[0].record_key) <= 60_000
    lease = int(await cast(Awaitable[str], redis.hget(claims[0].record_key, "lease")))
    seconds, micros = await redis.time()
    assert 0 < lease - (seconds * 1000 + micros // 1000) <= 5000


async def test_a_finished_record_is_returned_for_24h(store: IdempotencyStore, redis: Redis) -> None:
    claim = await claimed(store)
    assert await store.finish(claim, ACCEPTED)
    assert await store.claim("tenant", "k", "other") == ExistingRecord("f1", ACCEPTED)
    assert 5000 < await redis.pttl(claim.record_key) <= 60_000
    sync = StoredResponse(status=200, headers={}, body=None, job_id="job_2")
    sync_claim = await claimed(store, key="sync")
    assert await store.finish(sync_claim, sync)
    assert await store.claim("tenant", "sync", "f1") == ExistingRecord("f1", sync)


async def test_release_frees_the_key(store: IdempotencyStore) -> None:
    claim = await claimed(store)
    await store.release(claim)
    again = await claimed(store, fingerprint="f2")
    assert again.token != claim.token


async def lapse(redis: Redis, claim: Claim) -> None:
    """Make the claim's lease lapse, as when its API process died."""
    await cast(Awaitable[int], redis.hset(claim.record_key, "lease", "0"))


async def test_only_the_owner_renews_reserves_finishes_or_releases(
    store: IdempotencyStore, redis: Redis
) -> None:
    claim = await claimed(store)
    intruder = Claim(claim.record_key, "not-the-token", "f9")
    assert not await store.renew(intruder)
    assert not await store.reserve(intruder, "job_x")
    assert not await store.finish(intruder, ACCEPTED)
    await store.release(intruder)
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", None)
    await lapse(redis, claim)
    assert await store.renew(claim)  # a late renewal by a live owner keeps its claim
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", None)
    assert await store.finish(claim, ACCEPTED)
    assert not await store.renew(claim)  # done: nothing left to renew
    await store.release(claim)  # done records stay
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", ACCEPTED)


async def test_a_lapsed_claim_is_taken_over_with_what_it_reserved(
    store: IdempotencyStore, redis: Redis
) -> None:
    dead = await claimed(store)
    assert await store.reserve(dead, "batch_0123")
    await lapse(redis, dead)
    # another body: the record, naming what its holder reserved
    assert await store.claim("tenant", "k", "f2") == ExistingRecord("f1", None, "batch_0123")
    retry = await claimed(store)
    assert retry.resumed == "batch_0123" and retry.token != dead.token
    # The dead request, if it was only slow, can no longer act on the key.
    assert not await store.renew(dead)
    assert not await store.reserve(dead, "batch_other")
    assert not await store.finish(dead, ACCEPTED)
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", None, "batch_0123")
    assert await store.finish(retry, ACCEPTED)
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", ACCEPTED)


async def test_a_released_claim_keeps_what_it_reserved_for_the_next_retry(
    store: IdempotencyStore,
) -> None:
    failed = await claimed(store)
    assert await store.reserve(failed, "job_0123")
    await store.release(failed)  # say, a 503 after the job was (maybe) written
    retry = await claimed(store)
    assert retry.resumed == "job_0123"
    assert await store.claim("tenant", "k", "f1") == ExistingRecord("f1", None, "job_0123")


async def test_a_lapsed_claim_that_reserved_nothing_runs_afresh(
    store: IdempotencyStore, redis: Redis
) -> None:
    dead = await claimed(store)
    await lapse(redis, dead)
    retry = await claimed(store)
    assert retry.resumed is None


async def test_an_expired_record_frees_the_key(store: IdempotencyStore, redis: Redis) -> None:
    claim = await claimed(store)
    await redis.pexpire(claim.record_key, 1)
    await asyncio.sleep(0.01)
    await claimed(store, fingerprint="f2")
    assert not await store.finish(claim, ACCEPTED)  # the new claim is not the old one's
