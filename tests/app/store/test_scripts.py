"""Each Lua script and each of its branches, against the real Redis.

The scripts that report on a transition (batch progress, the webhook outbox, the
batch window) act only when the subject carries the transition's token; here each
is run alone on hand-made records, so every branch is seen on its own, and then
the whole MULTI is run through ``JobStore.transition``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.core.batches import BatchSpec
from app.core.edit_params import EditParams
from app.core.jobs import JobInputs, JobSpec, JobStatus, Lane, StoredImage, new_batch_id, new_job_id
from app.dispatch import BatchWindow, lane_queue
from app.settings import Settings
from app.store import scripts
from app.store.batches import BatchStore
from app.store.jobs import JobStore, TransitionMisuse
from app.store.keys import Keys

RETENTION_S = 3600
CHANNEL = "unused-channel"


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


def script(redis: Redis, name: str) -> AsyncScript:
    return scripts.register(redis, name)


async def hash_of(redis: Redis, key: str) -> dict[str, str]:
    return await cast(Awaitable[dict[str, str]], redis.hgetall(key))


def now_ms() -> int:
    return int(time.time() * 1000)


async def hset(redis: Redis, key: str, mapping: dict[str, Any]) -> None:
    await cast(Awaitable[int], redis.hset(key, mapping=mapping))


async def lrange(redis: Redis, key: str) -> list[str]:
    return await cast(Awaitable[list[str]], redis.lrange(key, 0, -1))


async def llen(redis: Redis, key: str) -> int:
    return await cast(Awaitable[int], redis.llen(key))


async def rpush(redis: Redis, key: str, *values: str) -> None:
    await cast(Awaitable[int], redis.rpush(key, *values))


# --- move_job.lua ---------------------------------------------------------------------


async def move(
    redis: Redis,
    keys: Keys,
    job_id: str,
    *,
    token: str = "t1",
    sources: str = "queued",
    target: str = "running",
    expect_run: int | str = "",
    next_run: bool = False,
    expect_attempt: int | str = "",
    next_attempt: bool = False,
    batch: str = "",
    fields: tuple[str, ...] = (),
) -> list[Any]:
    args = [
        token,
        sources,
        target,
        expect_run,
        "1" if next_run else "0",
        expect_attempt,
        "1" if next_attempt else "0",
        RETENTION_S,
        now_ms(),
        job_id,
        CHANNEL,
        batch,
        *fields,
    ]
    keys_ = [keys.job(job_id), keys.log(job_id), keys.retention]
    return list(await script(redis, "move_job")(keys=keys_, args=args))


async def make_job(redis: Redis, keys: Keys, job_id: str, **fields: str | int) -> None:
    record: dict[str, str | int] = {"status": "queued", "run": 1, "tenant": "t", **fields}
    await hset(redis, keys.job(job_id), record)


async def test_move_job_missing(redis: Redis, keys: Keys) -> None:
    assert await move(redis, keys, "job_none") == [0, "", 0, 0]


async def test_move_job_refuses_a_status_not_among_the_sources(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", status="succeeded")
    assert await move(redis, keys, "job_a", sources="queued running") == [-2, "succeeded", 1, 0]
    assert (await hash_of(redis, keys.job("job_a")))["status"] == "succeeded"


async def test_move_job_fences_on_run_and_attempt(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", run=2, attempt=3)
    assert (await move(redis, keys, "job_a", expect_run=1))[0] == -1
    assert (await move(redis, keys, "job_a", expect_run=2, expect_attempt=2))[0] == -1
    assert await move(redis, keys, "job_a", expect_run=2, expect_attempt=3) == [1, "queued", 2, 3]


async def test_move_job_refuses_the_wrong_batch(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", batch="batch_x")
    assert (await move(redis, keys, "job_a"))[0] == -3
    assert (await move(redis, keys, "job_a", batch="batch_y"))[0] == -3
    await make_job(redis, keys, "job_b")
    assert (await move(redis, keys, "job_b", batch="batch_x"))[0] == -3
    assert (await move(redis, keys, "job_a", batch="batch_x"))[0] == 1


async def test_move_job_applies_marks_logs_and_indexes(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", gone="x")
    reply = await move(
        redis,
        keys,
        "job_a",
        token="tok",
        next_attempt=True,
        fields=("started_at", "12.5", "gone", ""),
    )
    assert reply == [1, "queued", 1, 1]
    record = await hash_of(redis, keys.job("job_a"))
    assert (record["status"], record["tx"], record["tx_from"]) == ("running", "tok", "queued")
    assert record["started_at"] == "12.5" and "gone" not in record
    [(_, entry)] = await redis.xrange(keys.log("job_a"))
    assert entry["status"] == "running" and entry["run"] == "1"
    assert await redis.zscore(keys.retention, "job_a") is not None
    assert 0 < await redis.ttl(keys.job("job_a")) <= RETENTION_S


async def test_move_job_starts_a_new_run(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", status="failed")
    assert await move(redis, keys, "job_a", sources="failed", target="queued", next_run=True) == [
        1,
        "failed",
        2,
        0,
    ]


# --- record_call.lua -------------------------------------------------------------------


async def record_call(
    redis: Redis, keys: Keys, job_id: str, run: int, attempt: int, number: int | str, call: str
) -> int:
    reply = await script(redis, "record_call")(
        keys=[keys.job(job_id)], args=[run, attempt, number, call]
    )
    return int(reply)


async def test_record_call_numbers_new_calls_and_updates_one(redis: Redis, keys: Keys) -> None:
    await make_job(redis, keys, "job_a", status="running", run=2, attempt=3)
    assert await record_call(redis, keys, "job_a", 2, 3, "", '{"n":1}') == 1
    assert await record_call(redis, keys, "job_a", 2, 3, "", '{"n":2}') == 2
    assert await record_call(redis, keys, "job_a", 2, 3, 1, '{"n":1,"end":1}') == 1
    record = await hash_of(redis, keys.job("job_a"))
    assert (record["calls"], record["call:1"], record["call:2"]) == (
        "2",
        '{"n":1,"end":1}',
        '{"n":2}',
    )


@pytest.mark.parametrize(
    ("status", "run", "attempt"),
    [("running", 1, 3), ("running", 2, 2), ("queued", 2, 3), ("canceled", 2, 3)],
)
async def test_record_call_is_fenced_on_status_run_and_attempt(
    redis: Redis, keys: Keys, status: str, run: int, attempt: int
) -> None:
    await make_job(redis, keys, "job_a", status="running", run=2, attempt=3)
    assert await record_call(redis, keys, "job_a", 2, 3, "", '{"n":1}') == 1
    await hset(redis, keys.job("job_a"), {"status": status})
    assert await record_call(redis, keys, "job_a", run, attempt, "", '{"n":2}') == 0
    assert await record_call(redis, keys, "job_a", run, attempt, 1, '{"n":1,"end":1}') == 0
    record = await hash_of(redis, keys.job("job_a"))
    assert (record["calls"], record["call:1"], "call:2" in record) == ("1", '{"n":1}', False)


async def test_record_call_of_a_missing_job_writes_nothing(redis: Redis, keys: Keys) -> None:
    assert await record_call(redis, keys, "job_none", 1, 1, "", '{"n":1}') == 0
    assert await hash_of(redis, keys.job("job_none")) == {}


# --- batch_progress.lua ---------------------------------------------------------------


async def progress(redis: Redis, keys: Keys, job_id: str, batch_id: str, token: str) -> str:
    reply = await script(redis, "batch_progress")(
        keys=[keys.job(job_id), keys.batch(batch_id), keys.log(batch_id), keys.retention],
        args=[token, RETENTION_S, now_ms(), batch_id, CHANNEL],
    )
    return str(reply)


async def make_batch(redis: Redis, keys: Keys, batch_id: str, total: int, **fields: Any) -> None:
    record = {"status": "running", "total": total, "n_queued": total, "tenant": "t", **fields}
    await hset(redis, keys.batch(batch_id), record)


async def moved(
    redis: Redis, keys: Keys, job_id: str, source: str, target: str, token: str, **extra: str
) -> None:
    """A job as move_job.lua leaves it after ``source -> target`` under ``token``."""
    await hset(
        redis,
        keys.job(job_id),
        {"status": target, "tx": token, "tx_from": source, "run": 1, **extra},
    )


async def counts(redis: Redis, keys: Keys, batch_id: str) -> dict[str, int]:
    record = await hash_of(redis, keys.batch(batch_id))
    return {k[2:]: int(v) for k, v in record.items() if k.startswith("n_") and int(v)}


async def test_progress_ignores_another_transition(redis: Redis, keys: Keys) -> None:
    await make_batch(redis, keys, "batch_b", 2)
    await moved(redis, keys, "job_a", "queued", "running", "someone-else")
    assert await progress(redis, keys, "job_a", "batch_b", "mine") == ""
    assert await counts(redis, keys, "batch_b") == {"queued": 2}
    assert await redis.xlen(keys.log("batch_b")) == 0


async def test_progress_ignores_a_missing_batch(redis: Redis, keys: Keys) -> None:
    await moved(redis, keys, "job_a", "queued", "running", "tok")
    assert await progress(redis, keys, "job_a", "batch_gone", "tok") == ""
    assert not await redis.exists(keys.batch("batch_gone"))


async def test_progress_moves_the_counts_and_logs_them(redis: Redis, keys: Keys) -> None:
    await make_batch(redis, keys, "batch_b", 2)
    await moved(redis, keys, "job_a", "queued", "running", "tok")
    assert await progress(redis, keys, "job_a", "batch_b", "tok") == "running"
    assert await counts(redis, keys, "batch_b") == {"queued": 1, "running": 1}
    [(_, entry)] = await redis.xrange(keys.log("batch_b"))
    assert entry["status"] == "running"
    assert json.loads(entry["counts"]) == {
        "queued": 1,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert await redis.zscore(keys.retention, "batch_b") is not None


async def test_progress_sums_usage_of_a_success(redis: Redis, keys: Keys) -> None:
    await make_batch(redis, keys, "batch_b", 3, n_queued=0, n_running=3)
    usage = {
        "total_tokens": 10,
        "input_tokens": 4.9,
        "output_tokens": "n/a",
        "input_tokens_details": {"image_tokens": 3, "text_tokens": 1, "note": "x"},
    }
    outcome = json.dumps({"usage": usage})
    await moved(redis, keys, "job_a", "running", "succeeded", "t1", outcome=outcome)
    await progress(redis, keys, "job_a", "batch_b", "t1")
    await moved(redis, keys, "job_b", "running", "succeeded", "t2", outcome="not json")
    await progress(redis, keys, "job_b", "batch_b", "t2")
    record = await hash_of(redis, keys.batch("batch_b"))
    assert (record["u_total_tokens"], record["u_input_tokens"]) == ("10", "4")
    assert "u_output_tokens" not in record
    assert (record["ud_image_tokens"], record["ud_text_tokens"]) == ("3", "1")
    assert "ud_note" not in record
    assert record["status"] == "running"  # one variant is still running


async def test_the_last_variant_completes_the_batch_and_marks_it(redis: Redis, keys: Keys) -> None:
    await make_batch(redis, keys, "batch_b", 2, n_queued=0, n_succeeded=1, n_running=1)
    await moved(redis, keys, "job_a", "running", "failed", "last")
    assert await progress(redis, keys, "job_a", "batch_b", "last") == "completed"
    record = await hash_of(redis, keys.batch("batch_b"))
    assert (record["status"], record["tx"]) == ("completed", "last")
    assert "finished_at" in record
    assert await counts(redis, keys, "batch_b") == {"succeeded": 1, "failed": 1}


async def test_a_canceled_batch_finishes_as_canceled(redis: Redis, keys: Keys) -> None:
    await make_batch(redis, keys, "batch_b", 1, n_queued=1, cancel_requested="1")
    await moved(redis, keys, "job_a", "queued", "canceled", "c")
    assert await progress(redis, keys, "job_a", "batch_b", "c") == "canceled"


async def test_a_retried_variant_reopens_its_batch(redis: Redis, keys: Keys) -> None:
    await make_batch(
        redis, keys, "batch_b", 1, n_queued=0, n_failed=1, status="completed", finished_at=5
    )
    await moved(redis, keys, "job_a", "failed", "queued", "retry")
    assert await progress(redis, keys, "job_a", "batch_b", "retry") == "running"
    record = await hash_of(redis, keys.batch("batch_b"))
    assert record["status"] == "running" and "finished_at" not in record
    assert record.get("tx") != "retry"  # reopening is not a completion
    assert await counts(redis, keys, "batch_b") == {"queued": 1}


# --- webhook_event.lua ----------------------------------------------------------------


async def record_event(
    redis: Redis, keys: Keys, subject: str, kind: str, event_id: str, token: str
) -> int:
    reply = await script(redis, "webhook_event")(
        keys=[
            keys.subject(subject),
            keys.webhook_event(event_id),
            keys.webhook_events(subject),
            keys.webhook_outbox,
        ],
        args=[token, kind, subject, RETENTION_S, now_ms(), event_id],
    )
    return int(reply)


async def test_an_event_is_recorded_once_for_a_subscribed_transition(
    redis: Redis, keys: Keys
) -> None:
    await moved(
        redis, keys, "job_a", "running", "succeeded", "tok", webhook_events=" job.succeeded "
    )
    await hset(redis, keys.job("job_a"), {"tenant": "tenant-a"})
    assert await record_event(redis, keys, "job_a", "job.succeeded", "evt_1", "tok") == 1
    event = await hash_of(redis, keys.webhook_event("evt_1"))
    assert (event["subject"], event["type"], event["tenant"], event["state"]) == (
        "job_a",
        "job.succeeded",
        "tenant-a",
        "pending",
    )
    assert await lrange(redis, keys.webhook_events("job_a")) == ["evt_1"]
    assert await redis.zscore(keys.webhook_outbox, "evt_1") is not None
    # The same event again (a retried MULTI) changes nothing.
    assert await record_event(redis, keys, "job_a", "job.succeeded", "evt_1", "tok") == 0
    assert await llen(redis, keys.webhook_events("job_a")) == 1


async def test_no_event_without_a_subscription_or_for_another_transition(
    redis: Redis, keys: Keys
) -> None:
    await moved(redis, keys, "job_a", "running", "failed", "tok", webhook_events=" job.succeeded ")
    assert await record_event(redis, keys, "job_a", "job.failed", "evt_f", "tok") == 0
    assert await record_event(redis, keys, "job_a", "job.succeeded", "evt_s", "other") == 0
    await moved(redis, keys, "job_b", "running", "failed", "tok")  # no webhook at all
    assert await record_event(redis, keys, "job_b", "job.failed", "evt_b", "tok") == 0
    assert await redis.zcard(keys.webhook_outbox) == 0


async def test_a_batch_event_needs_the_batch_completed_by_this_token(
    redis: Redis, keys: Keys
) -> None:
    await make_batch(redis, keys, "batch_b", 1, webhook_events=" batch.completed ")
    assert await record_event(redis, keys, "batch_b", "batch.completed", "evt_b", "tok") == 0
    await hset(redis, keys.batch("batch_b"), {"tx": "tok"})
    assert await record_event(redis, keys, "batch_b", "batch.completed", "evt_b", "tok") == 1
    assert await lrange(redis, keys.webhook_events("batch_b")) == ["evt_b"]


# --- release_window.lua ---------------------------------------------------------------


async def release(redis: Redis, keys: Keys, settings: Settings, job_id: str, token: str) -> str:
    reply = await script(redis, "release_window")(
        keys=[keys.job(job_id), keys.batch_pending("batch_b"), bulk_queue(settings)],
        args=[token, now_ms()],
    )
    return str(reply)


def bulk_queue(settings: Settings) -> str:
    return lane_queue(settings.queue_name, Lane.BULK)


async def test_a_finished_variant_releases_the_next_one(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    await rpush(redis, keys.batch_pending("batch_b"), "job_n:1", "job_m:1")
    await moved(redis, keys, "job_a", "running", "succeeded", "tok")
    assert await release(redis, keys, settings, "job_a", "tok") == "job_n:1"
    assert await redis.zscore(bulk_queue(settings), "job_n:1") is not None
    assert await lrange(redis, keys.batch_pending("batch_b")) == ["job_m:1"]


@pytest.mark.parametrize(
    ("source", "target", "token"),
    [
        ("queued", "running", "tok"),  # not finished
        ("failed", "queued", "tok"),  # a retry, not a finish
        ("running", "succeeded", "other"),  # another transition's token
    ],
)
async def test_nothing_is_released_unless_a_variant_just_finished(
    redis: Redis, keys: Keys, settings: Settings, source: str, target: str, token: str
) -> None:
    await rpush(redis, keys.batch_pending("batch_b"), "job_n:1")
    await moved(redis, keys, "job_a", source, target, "tok")
    assert await release(redis, keys, settings, "job_a", token) == ""
    assert await llen(redis, keys.batch_pending("batch_b")) == 1
    assert await redis.zcard(bulk_queue(settings)) == 0


async def test_an_empty_window_releases_nothing(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    await moved(redis, keys, "job_a", "running", "canceled", "tok")
    assert await release(redis, keys, settings, "job_a", "tok") == ""
    assert await redis.zcard(bulk_queue(settings)) == 0


# --- the whole MULTI ------------------------------------------------------------------


def job_spec(batch_id: str | None = None, index: int | None = None) -> JobSpec:
    now = time.time()
    return JobSpec(
        id=new_job_id(now),
        tenant="tenant-a",
        created_at=now,
        request=EditParams(model="local/editor", prompt="p", webhook_url="https://x.test/h"),
        inputs=JobInputs(
            images=(StoredImage(key="in/0", content_type="image/png", bytes=1, width=1, height=1),)
        ),
        batch_id=batch_id,
        variant_index=index,
    )


async def test_a_variants_last_transition_counts_releases_and_announces(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    window = BatchWindow(redis, settings.queue_name)
    jobs = JobStore(redis, keys, window, retention_s=RETENTION_S)
    batches = BatchStore(redis, keys, window, retention_s=RETENTION_S, lease_s=10)
    batch_id = new_batch_id()
    specs = [job_spec(batch_id, index) for index in range(2)]
    spec = BatchSpec(
        id=batch_id,
        tenant="tenant-a",
        created_at=time.time(),
        total=2,
        inputs=specs[0].inputs,
        webhook_url="https://x.test/h",
        webhook_events=("batch.completed", "job.succeeded"),
    )
    ids = [job.id for job in specs]
    assert await batches.begin(spec, ids, "creator")
    await batches.write_jobs(spec, specs, "creator")
    await batches.release(spec, ids, "creator", window=1)
    queue = bulk_queue(settings)
    assert await redis.zrange(queue, 0, -1) == [f"{specs[0].id}:1"]

    first, second = specs
    for job in specs:
        assert (
            await jobs.transition(job.id, JobStatus.RUNNING, sources=[JobStatus.QUEUED])
        ).applied
    done = await jobs.transition(first.id, JobStatus.SUCCEEDED, expect_run=1, batch_id=batch_id)
    assert done.applied
    # The finished variant released the next one into the bulk queue.
    assert f"{second.id}:1" in await redis.zrange(queue, 0, -1)
    last = await jobs.transition(second.id, JobStatus.SUCCEEDED, expect_run=1, batch_id=batch_id)
    assert last.applied
    batch = await batches.get(batch_id)
    assert batch is not None and batch.status.value == "completed"
    assert batch.counts["succeeded"] == 2
    events = await lrange(redis, keys.webhook_events(batch_id))
    assert events == [f"evt_{batch_id[6:]}_completed_{second.id[4:]}_1"]
    assert len(await lrange(redis, keys.webhook_events(first.id))) == 1

    with pytest.raises(TransitionMisuse):
        await jobs.transition(first.id, JobStatus.QUEUED, expect_run=1, next_run=True)
