"""The job store against a real Redis: atomic, fenced transitions, events, TTLs, listing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import arq.constants
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub

from app.core.edit_params import EditParams
from app.core.jobs import (
    Attempt,
    CallOutcome,
    Job,
    JobError,
    JobInputs,
    JobSpec,
    JobStatus,
    StoredImage,
    new_job_id,
)
from app.dispatch import BatchWindow, arq_job_id, connect
from app.settings import Settings
from app.store.jobs import JobStore
from app.store.keys import Keys

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
)
BASE_TIME = 1_700_000_000.0


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, settings: Settings) -> JobStore:
    return JobStore(
        redis,
        Keys(settings.key_prefix),
        BatchWindow(redis, settings.queue_name),
        retention_s=settings.retention_s,
    )


def spec(tenant: str = "tenant-a", now: float = BASE_TIME) -> JobSpec:
    return JobSpec(
        id=new_job_id(now),
        tenant=tenant,
        created_at=now,
        request=EditParams(model="local/editor", prompt="grayscale"),
        inputs=JobInputs(
            images=(StoredImage(key="in/0", content_type="image/png", bytes=10, width=8, height=8),)
        ),
    )


def legacy_call(index: int) -> dict[str, Any]:
    """A call as versions before per-call fields stored it, in the record's array."""
    return {
        "run": 1,
        "output_index": index,
        "upstream": "local",
        "model": "local/editor",
        "status": 500,
        "error_code": "upstream_error",
        "duration_ms": index,
        "started_at": BASE_TIME + index,
    }


async def store_hash(redis: Redis, key: str) -> dict[str, str]:
    return await cast(Awaitable[dict[str, str]], redis.hgetall(key))


async def test_create_and_get(store: JobStore, redis: Redis, settings: Settings) -> None:
    created = await store.create(spec())
    assert (created.status, created.run, created.attempts) == (QUEUED, 1, ())
    assert await store.get(created.id) == created
    assert await store.get("job_000000000000000000000000") is None
    index = f"{settings.key_prefix}:tenant:tenant-a:jobs"
    assert await redis.zrange(index, 0, -1) == [created.id]
    assert 0 < await redis.ttl(store.keys.job(created.id)) <= settings.retention_s


async def test_queued_to_running(store: JobStore) -> None:
    job = await store.create(spec())
    result = await store.transition(
        job.id, RUNNING, expect_run=1, sources=[QUEUED], fields={"started_at": 12.5}
    )
    assert (result.outcome, result.applied, result.previous, result.run) == (
        "applied",
        True,
        QUEUED,
        1,
    )
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.run, stored.started_at) == (RUNNING, 1, 12.5)


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([RUNNING, SUCCEEDED], RUNNING),
        ([RUNNING, SUCCEEDED], QUEUED),
        ([RUNNING, SUCCEEDED], CANCELED),
        ([], SUCCEEDED),
        ([], FAILED),
        ([], QUEUED),
        ([CANCELED], RUNNING),
        ([RUNNING, FAILED], CANCELED),
    ],
)
async def test_refused_transitions(
    store: JobStore, redis: Redis, path: list[JobStatus], target: JobStatus
) -> None:
    job = await store.create(spec())
    for status in path:
        assert (await store.transition(job.id, status)).applied
    current = path[-1] if path else QUEUED
    result = await store.transition(job.id, target, fields={"x": "1"})
    assert (result.outcome, result.applied, result.previous, result.run) == (
        "refused",
        False,
        current,
        1,
    )
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (current, ())
    assert "x" not in await store_hash(redis, store.keys.job(job.id))


async def test_missing_job(store: JobStore) -> None:
    result = await store.transition("job_000000000000000000000000", RUNNING)
    assert (result.outcome, result.previous, result.run) == ("missing", None, 0)


async def test_stale_run_is_fenced_off(store: JobStore) -> None:
    job = await store.create(spec())
    assert (await store.transition(job.id, RUNNING, expect_run=1)).applied
    assert (await store.transition(job.id, FAILED, expect_run=1)).applied
    retried = await store.transition(job.id, QUEUED, sources=[FAILED, CANCELED], next_run=True)
    assert (retried.outcome, retried.previous, retried.run) == ("applied", FAILED, 2)

    late = await store.transition(job.id, RUNNING, expect_run=1, fields={"started_at": 1.0})
    assert (late.outcome, late.previous, late.run) == ("stale", QUEUED, 2)
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.run, stored.attempts, stored.started_at) == (QUEUED, 2, (), None)

    assert (await store.transition(job.id, RUNNING, expect_run=2)).applied


async def test_sources_narrow_the_table(store: JobStore) -> None:
    job = await store.create(spec())
    assert (await store.transition(job.id, RUNNING)).applied
    result = await store.transition(job.id, QUEUED, sources=[FAILED, CANCELED], next_run=True)
    assert (result.outcome, result.previous, result.run) == ("refused", RUNNING, 1)
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.run) == (RUNNING, 1)
    # Sources outside the table never widen it.
    assert not (await store.transition(job.id, SUCCEEDED, sources=[QUEUED])).applied
    requeued = await store.transition(job.id, QUEUED, next_run=True)
    assert (requeued.outcome, requeued.run) == ("applied", 2)


async def test_a_take_over_fences_the_earlier_attempt(store: JobStore) -> None:
    job = await store.create(spec())
    first = await store.transition(job.id, RUNNING, expect_run=1, next_attempt=True)
    assert (first.applied, first.attempt) == (True, 1)
    second = await store.transition(
        job.id, RUNNING, expect_run=1, sources=[QUEUED, RUNNING], next_attempt=True
    )
    assert (second.applied, second.previous, second.attempt) == (True, RUNNING, 2)
    stale = await store.transition(job.id, SUCCEEDED, expect_run=1, expect_attempt=1)
    assert stale.outcome == "stale"
    current = await store.transition(job.id, SUCCEEDED, expect_run=1, expect_attempt=2)
    assert current.applied
    late = await store.transition(job.id, FAILED, expect_run=1, expect_attempt=2)
    assert late.outcome == "refused"  # terminal stays terminal


async def test_fields_set_and_deleted(store: JobStore, redis: Redis) -> None:
    job = await store.create(spec())
    await store.transition(job.id, RUNNING, fields={"started_at": 100.25})
    error = JobError(type="upstream_error", code="upstream_timeout", message="slow")
    await store.transition(
        job.id,
        FAILED,
        fields={"error": error.model_dump_json(), "finished_at": 101.5, "started_at": None},
    )
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.error, stored.finished_at, stored.started_at) == (error, 101.5, None)
    assert "started_at" not in await store_hash(redis, store.keys.job(job.id))

    await store.transition(job.id, QUEUED, next_run=True, fields={"error": None})
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.finished_at) == (QUEUED, None, 101.5)


def call(job: Job, index: int, outcome: CallOutcome = "in_flight") -> Attempt:
    return Attempt(
        run=job.run,
        attempt=job.attempt,
        output_index=index,
        upstream="local",
        model="local/editor",
        outcome=outcome,
        started_at=BASE_TIME + index,
    )


async def claimed(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    result = await store.claim(job)
    assert result.applied
    return job.model_copy(update={"status": RUNNING, "attempt": result.attempt})


async def test_calls_are_recorded_as_they_start_and_end(store: JobStore) -> None:
    job = await claimed(store, (await store.create(spec())).id)
    first, second = call(job, 0), call(job, 1)
    assert await store.call_started(job.id, first) == 1
    assert await store.call_started(job.id, second) == 2
    stored = await store.get(job.id)
    first, second = (c.model_copy(update={"number": n}) for n, c in ((1, first), (2, second)))
    assert stored is not None and stored.attempts == (first, second)  # read with their numbers

    ended = second.model_copy(update={"outcome": "succeeded", "status": 200, "duration_ms": 5})
    assert await store.call_ended(job.id, 2, ended)
    stored = await store.get(job.id)
    assert stored is not None and stored.attempts == (first, ended)


async def test_a_canceled_jobs_call_is_recorded_only_when_asked(store: JobStore) -> None:
    job = await claimed(store, (await store.create(spec())).id)
    assert await store.call_started(job.id, call(job, 0)) == 1
    assert (await store.transition(job.id, JobStatus.CANCELED)).applied
    canceled = call(job, 0, "canceled").model_copy(update={"upstream_canceled": True})
    assert not await store.call_ended(job.id, 1, canceled)
    assert await store.call_ended(job.id, 1, canceled, once_canceled=True)
    stored = await store.get(job.id)
    assert stored is not None and stored.attempts[0].outcome == "canceled"
    assert stored.attempts[0].upstream_canceled is True


async def test_a_take_over_leaves_the_lost_workers_call_on_record_as_lost(
    store: JobStore,
) -> None:
    lost = await claimed(store, (await store.create(spec())).id)
    assert await store.call_started(lost.id, call(lost, 0)) == 1
    rescuer = await claimed(store, lost.id)  # the lease lapsed: running -> running
    assert await store.call_started(rescuer.id, call(rescuer, 0)) == 2
    # The lost worker comes back: its call's end is refused, as is any new call.
    ended = call(lost, 0, "succeeded").model_copy(update={"status": 200, "duration_ms": 9})
    assert not await store.call_ended(lost.id, 1, ended)
    assert await store.call_started(lost.id, call(lost, 1)) == 0
    stored = await store.get(lost.id)
    assert stored is not None
    assert [(c.attempt, c.outcome) for c in stored.attempts] == [(1, "lost"), (2, "in_flight")]

    assert (await store.fail(rescuer, JobError(type="t", code="c", message="m"))).applied
    stored = await store.get(lost.id)
    assert stored is not None
    assert [(c.attempt, c.outcome) for c in stored.attempts] == [(1, "lost"), (2, "lost")]


async def test_calls_of_every_run_are_read_in_the_order_they_started(
    store: JobStore, redis: Redis
) -> None:
    job = await store.create(spec())
    # A record from before calls had fields of their own: one array, every call ended.
    legacy = json.dumps([legacy_call(0)])
    await cast(Awaitable[int], redis.hset(store.keys.job(job.id), "attempts", legacy))
    first = await claimed(store, job.id)
    numbers = [await store.call_started(job.id, call(first, index)) for index in range(1, 11)]
    assert (await store.fail(first, JobError(type="t", code="c", message="m"))).applied
    assert (await store.transition(job.id, QUEUED, sources=[FAILED], next_run=True)).applied
    second = await claimed(store, job.id)
    numbers.append(await store.call_started(job.id, call(second, 11)))
    assert numbers == list(range(1, 12))
    stored = await store.get(job.id)
    assert stored is not None
    assert [(c.run, c.attempt, c.output_index, c.outcome) for c in stored.attempts] == [
        (1, 2, 0, "failed"),
        *((1, 1, index, "lost") for index in range(1, 11)),
        (2, 2, 11, "in_flight"),
    ]


async def next_message(pubsub: PubSub, timeout: float = 2.0) -> dict[str, Any] | None:
    """The next published payload on ``pubsub``, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            payload: dict[str, Any] = json.loads(message["data"])
            return payload
    return None


async def test_each_applied_transition_publishes_one_event(store: JobStore, redis: Redis) -> None:
    job = await store.create(spec())
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(store.keys.events_channel)
        assert (await store.transition(job.id, RUNNING)).applied
        assert not (await store.transition(job.id, RUNNING)).applied
        assert (await store.transition(job.id, RUNNING, expect_run=7)).outcome == "stale"
        assert (await store.transition(job.id, CANCELED)).applied
        assert (await store.transition(job.id, QUEUED, next_run=True)).applied
        events = [await next_message(pubsub) for _ in range(3)]
        assert events == [
            {"id": job.id, "status": "running", "run": 1},
            {"id": job.id, "status": "canceled", "run": 1},
            {"id": job.id, "status": "queued", "run": 2},
        ]
        assert await next_message(pubsub, timeout=0.2) is None


async def test_every_transition_restarts_retention(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    job = await store.create(spec())
    key = store.keys.job(job.id)
    for target in (RUNNING, SUCCEEDED):
        await redis.persist(key)
        assert (await store.transition(job.id, target)).applied
        assert 0 < await redis.ttl(key) <= settings.retention_s
    await redis.persist(key)
    assert not (await store.transition(job.id, RUNNING)).applied
    assert await redis.ttl(key) == -1  # a refused transition changes nothing


async def test_list_for_tenant(store: JobStore, redis: Redis, settings: Settings) -> None:
    specs = [spec(now=BASE_TIME + i) for i in range(5)]
    for index in (3, 0, 4, 1, 2):  # the index orders by id, not by insertion
        await store.create(specs[index])
    other = await store.create(spec(tenant="tenant-b", now=BASE_TIME + 10))
    ids = [s.id for s in specs]

    first = await store.list_for_tenant("tenant-a", status=None, limit=2, after=None)
    assert ([j.id for j in first.jobs], first.has_more, first.last_id) == (ids[:2:-1], True, ids[3])
    second = await store.list_for_tenant("tenant-a", status=None, limit=2, after=first.last_id)
    assert ([j.id for j in second.jobs], second.has_more) == ([ids[2], ids[1]], True)
    last = await store.list_for_tenant("tenant-a", status=None, limit=2, after=second.last_id)
    assert ([j.id for j in last.jobs], last.has_more, last.last_id) == ([ids[0]], False, ids[0])
    whole = await store.list_for_tenant("tenant-a", status=None, limit=5, after=None)
    assert ([j.id for j in whole.jobs], whole.has_more) == (ids[::-1], False)

    others = await store.list_for_tenant("tenant-b", status=None, limit=10, after=None)
    assert [j.id for j in others.jobs] == [other.id]
    nobody = await store.list_for_tenant("tenant-c", status=None, limit=10, after=None)
    assert (nobody.jobs, nobody.has_more, nobody.last_id) == ([], False, None)


async def test_list_with_status_filter(store: JobStore) -> None:
    specs = [spec(now=BASE_TIME + i) for i in range(6)]
    for s in specs:
        await store.create(s)
    for index in (0, 2, 5):
        await store.transition(specs[index].id, RUNNING)
    running = await store.list_for_tenant("tenant-a", status=RUNNING, limit=2, after=None)
    assert ([j.id for j in running.jobs], running.has_more) == ([specs[5].id, specs[2].id], True)
    assert all(j.status == RUNNING for j in running.jobs)
    rest = await store.list_for_tenant("tenant-a", status=RUNNING, limit=2, after=running.last_id)
    assert ([j.id for j in rest.jobs], rest.has_more) == ([specs[0].id], False)
    none = await store.list_for_tenant("tenant-a", status=SUCCEEDED, limit=2, after=None)
    assert (none.jobs, none.has_more) == ([], False)


async def test_expired_jobs_skipped_and_forgotten(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    specs = [spec(now=BASE_TIME + i) for i in range(4)]
    for s in specs:
        await store.create(s)
    await redis.delete(store.keys.job(specs[2].id), store.keys.job(specs[1].id))
    page = await store.list_for_tenant("tenant-a", status=None, limit=2, after=None)
    assert ([j.id for j in page.jobs], page.has_more) == ([specs[3].id, specs[0].id], False)
    index = f"{settings.key_prefix}:tenant:tenant-a:jobs"
    assert await redis.zrange(index, 0, -1) == [specs[0].id, specs[3].id]


async def test_concurrent_claims_apply_once(store: JobStore) -> None:
    job = await store.create(spec())
    results = await asyncio.gather(
        *(store.transition(job.id, RUNNING, sources=[QUEUED]) for _ in range(50))
    )
    assert sum(result.applied for result in results) == 1
    refused = [result for result in results if not result.applied]
    assert {(r.outcome, r.previous, r.run) for r in refused} == {("refused", RUNNING, 1)}
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.run) == (RUNNING, 1)


async def test_a_job_is_recorded_and_queued_in_one_step(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    queue = await connect(settings.redis_url, settings.queue_name)
    try:
        job_spec = spec()
        await store.create(
            job_spec, lambda pipe: queue.enqueue_on(pipe, job_spec.id, 1, job_spec.lane)
        )
        arq_id = arq_job_id(job_spec.id, 1)
        assert await redis.zscore(queue.queue_for(job_spec.lane), arq_id) is not None
        payload = await redis.get(arq.constants.job_key_prefix + arq_id)
        assert payload is not None and json.loads(payload)["a"] == [job_spec.id, 1]
    finally:
        await queue.aclose()


async def test_a_retry_queues_its_run_only_when_the_move_applies(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    queue = await connect(settings.redis_url, settings.queue_name)
    job_spec = spec()
    lane_queue = queue.queue_for(job_spec.lane)

    async def enqueue(pipe: Pipeline, job_key: str, token: str, run: int) -> None:
        await queue.enqueue_moved(
            pipe, job_key=job_key, token=token, job_id=job_spec.id, run=run, lane=job_spec.lane
        )

    try:
        await store.create(job_spec)
        refused = await store.transition(
            job_spec.id, QUEUED, sources=[FAILED, CANCELED], next_run=True, then=enqueue
        )
        assert not refused.applied
        assert await redis.zcard(lane_queue) == 0
        assert await redis.exists(arq.constants.job_key_prefix + arq_job_id(job_spec.id, 2)) == 0
        assert (await store.transition(job_spec.id, CANCELED)).applied
        moved = await store.transition(
            job_spec.id, QUEUED, sources=[FAILED, CANCELED], next_run=True, then=enqueue
        )
        assert moved.applied and moved.run == 2
        assert await redis.zrange(lane_queue, 0, -1) == [arq_job_id(job_spec.id, 2)]
        assert await redis.exists(arq.constants.job_key_prefix + arq_job_id(job_spec.id, 2)) == 1
    finally:
        await queue.aclose()
