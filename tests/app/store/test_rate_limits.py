"""The per-key request counter: windows, headers, sharing, and failing open."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.cli.embedded import free_port
from app.store.keys import Keys
from app.store.rate_limits import WINDOW_S, RateLimiter, RateWindow


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"editq-test-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize(
    ("count", "remaining", "exceeded"), [(1, 2, False), (3, 0, False), (4, 0, True), (9, 0, True)]
)
def test_a_window_says_what_is_left(count: int, remaining: int, exceeded: bool) -> None:
    window = RateWindow(limit=3, count=count, reset_s=12.5)
    assert window.remaining == remaining
    assert window.exceeded is exceeded
    assert window.headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": str(remaining),
        "x-ratelimit-reset-requests": "13s",  # whole seconds, rounded up
    }


async def test_requests_are_counted_per_key_within_one_window(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix), per_minute=3)
    try:
        windows = [await limiter.hit("tenant-a") for _ in range(5)]
        other = await limiter.hit("tenant-b")
    finally:
        await redis.delete(f"{prefix}:ratelimit:tenant-a", f"{prefix}:ratelimit:tenant-b")
    assert [w.count for w in windows if w] == [1, 2, 3, 4, 5]
    assert [w.exceeded for w in windows if w] == [False, False, False, True, True]
    assert other is not None and other.count == 1
    resets = [w.reset_s for w in windows if w]
    assert 0 < resets[-1] <= resets[0] <= WINDOW_S  # over-limit requests never stretch it


async def test_two_limiters_share_one_count(redis: Redis, prefix: str) -> None:
    first = RateLimiter(redis, Keys(prefix), per_minute=2)
    second = RateLimiter(redis, Keys(prefix), per_minute=2)
    try:
        await first.hit("tenant")
        await second.hit("tenant")
        window = await first.hit("tenant")
    finally:
        await redis.delete(f"{prefix}:ratelimit:tenant")
    assert window is not None and window.exceeded


async def test_a_window_closes_after_its_time(redis: Redis, prefix: str) -> None:
    limiter = RateLimiter(redis, Keys(prefix), per_minute=1)
    key = f"{prefix}:ratelimit:tenant"
    try:
        await limiter.hit("tenant")
        await redis.pexpire(key, 1)  # the minute is over
        await asyncio.sleep(0.05)
        window = await limiter.hit("tenant")
        ttl_ms = await redis.pttl(key)
    finally:
        await redis.delete(key)
    assert window is not None and window.count == 1 and not window.exceeded
    assert 0 < ttl_ms <= WINDOW_S * 1000


async def test_a_counter_that_lost_its_expiry_gets_one_again(redis: Redis, prefix: str) -> None:
    key = f"{prefix}:ratelimit:tenant"
    await redis.set(key, 7)
    try:
        window = await RateLimiter(redis, Keys(prefix), per_minute=10).hit("tenant")
        ttl_ms = await redis.pttl(key)
    finally:
        await redis.delete(key)
    assert window is not None and window.count == 8
    assert 0 < ttl_ms <= WINDOW_S * 1000


async def test_unreachable_redis_lets_requests_through_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limiter = RateLimiter(dead, Keys("editq-test-dead"), per_minute=1)
    with caplog.at_level(logging.INFO, logger="app.store.rate_limits"):
        windows = [await limiter.hit("tenant") for _ in range(3)]
    await dead.aclose()
    assert windows == [None, None, None]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
