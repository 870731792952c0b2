"""The upstream gate against a real Redis: slots, waiters and their wake-up, leases,
rate and cool-down, and atomic admission under concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.settings import Settings
from app.store.keys import Keys
from worker.capacity.gate import SlotGrant, UpstreamGate

FAR_FUTURE_MS = 4_000_000_000_000


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def gate(redis: Redis, settings: Settings) -> UpstreamGate:
    return UpstreamGate(redis, Keys(settings.key_prefix), settings.queue_name, lease_s=30)


def waiting_key(settings: Settings, upstream: str) -> str:
    return f"{settings.key_prefix}:upstream:{upstream}:waiting"


def now_ms() -> float:
    return time.time() * 1000


async def take(gate: UpstreamGate, holder: str, cap: int, need: int = 1) -> SlotGrant:
    """Admit ``holder`` on upstream "up", which must succeed."""
    grants = await gate.admit({"up": (need, cap)}, holder=holder, ticket="", ticket_score=0)
    assert grants is not None
    return grants[0]


async def queue_waiter(
    gate: UpstreamGate, redis: Redis, queue: str, arq_id: str, cap: int, score: float
) -> None:
    """Have ``arq_id`` refused on "up" and parked far in the future of ``queue``."""
    await redis.zadd(queue, {arq_id: FAR_FUTURE_MS})
    refused = await gate.admit(
        {"up": (1, cap)}, holder=arq_id, ticket=f"interactive|{arq_id}", ticket_score=score
    )
    assert refused is None


def assert_woken(score: float | None) -> None:
    assert score is not None
    assert abs(score - now_ms()) < 2000


async def test_admit_grants_up_to_cap_and_refuses_beyond(gate: UpstreamGate) -> None:
    for i in range(5):
        grants = await gate.admit(
            {"up": (1, 5)}, holder=f"job-{i}", ticket=f"interactive|job-{i}", ticket_score=i
        )
        assert grants == [SlotGrant("up", gate.slots_key("up"), (f"job-{i}:1:1",))]
        assert await gate.held("up") == i + 1

    sixth = await gate.admit(
        {"up": (1, 5)}, holder="job-5", ticket="interactive|job-5", ticket_score=5
    )

    assert sixth is None
    assert await gate.held("up") == 5
    assert await gate.waiting("up") == 1


async def test_admit_takes_need_slots_at_once(gate: UpstreamGate) -> None:
    grant = await take(gate, "three", cap=5, need=3)

    assert grant.tokens == ("three:1:1", "three:1:2", "three:1:3")
    assert await gate.held("up") == 3
    assert await gate.admit({"up": (3, 5)}, holder="more", ticket="", ticket_score=0) is None
    assert await gate.held("up") == 3
    await take(gate, "two", cap=5, need=2)
    assert await gate.held("up") == 5


async def test_multi_upstream_admit_is_all_or_nothing(gate: UpstreamGate) -> None:
    await gate.admit({"omega": (1, 1)}, holder="first", ticket="", ticket_score=0)

    refused = await gate.admit(
        {"alpha": (1, 3), "omega": (1, 1)},
        holder="second",
        ticket="interactive|second",
        ticket_score=1,
    )

    assert refused is None
    assert await gate.held("alpha") == 0
    assert await gate.held("omega") == 1
    assert await gate.waiting("omega") == 1
    assert await gate.waiting("alpha") == 0


async def test_multi_upstream_admit_takes_every_upstream(gate: UpstreamGate) -> None:
    grants = await gate.admit(
        {"omega": (1, 2), "alpha": (2, 3)}, holder="job", ticket="", ticket_score=0
    )

    assert grants == [
        SlotGrant("alpha", gate.slots_key("alpha"), ("job:1:1", "job:1:2")),
        SlotGrant("omega", gate.slots_key("omega"), ("job:2:1",)),
    ]
    assert await gate.held("alpha") == 2
    assert await gate.held("omega") == 1


async def test_a_refused_ticket_waits_once(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    await take(gate, "holder", cap=1)

    for score in (100, 200):
        refused = await gate.admit(
            {"up": (1, 1)}, holder="waiter", ticket="interactive|waiter", ticket_score=score
        )
        assert refused is None

    assert await gate.waiting("up") == 1
    assert await redis.zscore(waiting_key(settings, "up"), "interactive|waiter") == 100


async def test_an_empty_ticket_is_not_queued(gate: UpstreamGate) -> None:
    await take(gate, "holder", cap=1)

    assert await gate.admit({"up": (1, 1)}, holder="x", ticket="", ticket_score=0) is None
    assert await gate.waiting("up") == 0


async def test_an_admitted_waiter_leaves_the_waiting_set(gate: UpstreamGate) -> None:
    await take(gate, "holder", cap=1)
    assert (
        await gate.admit({"up": (1, 1)}, holder="w", ticket="interactive|w", ticket_score=1) is None
    )

    admitted = await gate.admit({"up": (1, 2)}, holder="w", ticket="interactive|w", ticket_score=1)

    assert admitted is not None
    assert await gate.waiting("up") == 0


async def test_release_frees_slots_and_moves_the_waiter_to_the_front(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    queue = settings.queue_name
    grant = await take(gate, "job-a", cap=1)
    await queue_waiter(gate, redis, queue, "job-b", cap=1, score=1000)

    woken = await gate.release(grant, 1)

    assert woken == 1
    assert await gate.held("up") == 0
    assert await gate.waiting("up") == 0
    assert_woken(await redis.zscore(queue, "job-b"))


async def test_waking_does_not_add_a_job_absent_from_its_queue(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    queue = settings.queue_name
    grant = await take(gate, "job-a", cap=1)
    await gate.admit({"up": (1, 1)}, holder="gone", ticket="interactive|gone", ticket_score=1)

    assert await gate.release(grant, 1) == 1
    assert await redis.zscore(queue, "gone") is None
    assert await gate.waiting("up") == 0


async def test_release_wakes_only_as_many_waiters_as_free_slots_oldest_first(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    queue = settings.queue_name
    first = await take(gate, "job-a", cap=2)
    second = await take(gate, "job-b", cap=2)
    for arq_id, score in (("late", 300), ("early", 100), ("middle", 200)):
        await queue_waiter(gate, redis, queue, arq_id, cap=2, score=score)

    assert await gate.release(first, 2) == 1
    assert_woken(await redis.zscore(queue, "early"))
    assert await redis.zscore(queue, "middle") == FAR_FUTURE_MS
    assert await redis.zscore(queue, "late") == FAR_FUTURE_MS
    assert await gate.waiting("up") == 2

    assert await gate.release(second, 2) == 2
    assert_woken(await redis.zscore(queue, "middle"))
    assert_woken(await redis.zscore(queue, "late"))
    assert await gate.waiting("up") == 0


async def test_releasing_several_tokens_wakes_several_waiters(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    queue = settings.queue_name
    grant = await take(gate, "big", cap=3, need=3)
    for i in range(4):
        await queue_waiter(gate, redis, queue, f"w{i}", cap=3, score=i)

    assert await gate.release(grant, 3) == 3
    assert await gate.waiting("up") == 1
    assert await redis.zscore(queue, "w3") == FAR_FUTURE_MS


async def test_reap_frees_expired_tokens_and_wakes_waiters(
    redis: Redis, settings: Settings
) -> None:
    gate = UpstreamGate(redis, Keys(settings.key_prefix), settings.queue_name, lease_s=0.2)
    queue = settings.queue_name
    await take(gate, "dead-worker-job", cap=1)
    await queue_waiter(gate, redis, queue, "waiter", cap=1, score=1)
    assert await gate.reap("up", 1) == 0  # the lease is still live

    await asyncio.sleep(0.3)

    assert await gate.held("up") == 0
    assert await redis.zcard(gate.slots_key("up")) == 1
    assert await gate.reap("up", 1) == 1
    assert await redis.zcard(gate.slots_key("up")) == 0
    assert await gate.waiting("up") == 0
    assert_woken(await redis.zscore(queue, "waiter"))


async def test_admit_drops_expired_tokens_itself(redis: Redis, settings: Settings) -> None:
    gate = UpstreamGate(redis, Keys(settings.key_prefix), settings.queue_name, lease_s=0.2)
    await take(gate, "dead-worker-job", cap=1)

    await asyncio.sleep(0.3)

    await take(gate, "next", cap=1)
    assert await redis.zrange(gate.slots_key("up"), 0, -1) == ["next:1:1"]


async def test_renew_keeps_tokens_alive_past_their_first_expiry(
    redis: Redis, settings: Settings
) -> None:
    gate = UpstreamGate(redis, Keys(settings.key_prefix), settings.queue_name, lease_s=0.3)
    renewed = await take(gate, "renewed", cap=2)
    await take(gate, "lapsed", cap=2)

    await asyncio.sleep(0.2)
    await gate.renew([renewed])
    await asyncio.sleep(0.2)  # past the first expiry (0.3 s), before the renewed one (0.5 s)

    assert await gate.held("up") == 1
    await gate.reap("up", 2)
    assert await redis.zrange(gate.slots_key("up"), 0, -1) == ["renewed:1:1"]


async def test_renew_does_not_bring_back_released_tokens(gate: UpstreamGate) -> None:
    grant = await take(gate, "job", cap=1)
    await gate.release(grant, 1)

    await gate.renew([grant])
    await gate.renew([])

    assert await gate.held("up") == 0


async def test_permit_without_rate_or_cool_down_is_immediate(gate: UpstreamGate) -> None:
    assert [await gate.permit("up", None) for _ in range(5)] == [0.0] * 5


async def test_cool_down_holds_calls_and_is_never_shortened(gate: UpstreamGate) -> None:
    await gate.cool_down("up", 2)
    assert await gate.permit("up", None) == pytest.approx(2.0, abs=0.2)

    await gate.cool_down("up", 0.5)
    assert await gate.permit("up", None) == pytest.approx(2.0, abs=0.2)

    await gate.cool_down("up", 4)
    assert await gate.permit("up", None) == pytest.approx(4.0, abs=0.2)
    assert await gate.permit("other", None) == 0.0


async def test_rate_allows_a_burst_of_two_intervals_then_spaces_calls(
    gate: UpstreamGate,
) -> None:
    waits = [await gate.permit("up", 20) for _ in range(4)]

    assert waits == pytest.approx([0.0, 0.0, 0.0, 3.0], abs=0.2)


async def test_rate_is_shared_across_workers(redis: Redis, settings: Settings) -> None:
    other_redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        mine = UpstreamGate(redis, Keys(settings.key_prefix), settings.queue_name, lease_s=30)
        theirs = UpstreamGate(
            other_redis, Keys(settings.key_prefix), settings.queue_name, lease_s=30
        )

        waits = [await mine.permit("up", 20) for _ in range(3)]
        waits += [await theirs.permit("up", 20), await mine.permit("up", 20)]
    finally:
        await other_redis.aclose()

    assert waits == pytest.approx([0.0, 0.0, 0.0, 3.0, 6.0], abs=0.2)


async def test_concurrent_admits_never_exceed_the_cap(gate: UpstreamGate) -> None:
    results = await asyncio.gather(
        *(
            gate.admit(
                {"up": (1, 5)}, holder=f"job-{i}", ticket=f"interactive|job-{i}", ticket_score=i
            )
            for i in range(30)
        )
    )

    assert sum(result is not None for result in results) == 5
    assert await gate.held("up") == 5
    assert await gate.waiting("up") == 25


async def test_a_refused_admit_parks_the_job_and_a_release_wakes_it(
    gate: UpstreamGate, redis: Redis, settings: Settings
) -> None:
    queue = settings.queue_name
    grant = await take(gate, "job-a", cap=1)
    await redis.zadd(queue, {"job-b": 1000})
    refused = await gate.admit(
        {"up": (1, 1)}, holder="job-b", ticket="interactive|job-b", ticket_score=1000, park_s=300
    )
    assert refused is None
    parked = await redis.zscore(queue, "job-b")
    assert parked is not None
    assert parked > time.time() * 1000 + 250_000  # out of the ready range for ~300 s
    assert await gate.release(grant, 1) == 1
    assert_woken(await redis.zscore(queue, "job-b"))


async def test_grants_for_names_the_tokens_admit_took(gate: UpstreamGate, redis: Redis) -> None:
    admitted = await gate.admit(
        {"up": (2, 5), "other": (1, 5)}, holder="job:1", ticket="", ticket_score=0
    )
    assert admitted is not None
    assert gate.grants_for({"up": 2, "other": 1}, "job:1") == admitted
    for grant in admitted:
        assert await redis.zcard(grant.key) == len(grant.tokens)


async def test_hold_extends_held_slots_and_takes_lapsed_ones_again(
    gate: UpstreamGate, redis: Redis
) -> None:
    grant = await take(gate, "job:1", cap=5, need=2)
    await redis.zrem(grant.key, grant.tokens[0])  # lapsed and reaped while the job waited
    await gate.hold([grant], for_s=60)
    scores = [await redis.zscore(grant.key, token) for token in grant.tokens]
    assert all(score is not None and score > now_ms() + 50_000 for score in scores)
    assert await gate.held("up") == 2
