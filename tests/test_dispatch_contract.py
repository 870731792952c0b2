"""The parts of arq that ``app.dispatch`` and the lane runner rely on, checked against the
installed arq: when an upgrade changes one of them, this file fails, loudly and by name.

``app.dispatch`` writes arq's storage directly in four places (bulk-enqueued batch
variants, withdrawals, leases, hand-backs) and ``worker.process.lanes`` sets and reads
attributes of a running ``arq.worker.Worker``. arq documents none of these as API, so
``pyproject.toml`` pins arq to the tested minor and this test holds each assumption.
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import arq.constants
import arq.jobs
import arq.version
from arq.worker import Worker, func
from redis.asyncio import Redis

from app import dispatch
from app.core.jobs import Lane
from app.dispatch import BatchWindow, arq_job_id, lane_queue
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_arq_is_the_pinned_minor() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pin] = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("arq")]
    match = re.fullmatch(r"arq>=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)", pin)
    assert match, f"arq must be pinned to one minor (arq>=X.Y,<X.Y+1), not {pin!r}"
    low_major, low_minor, high_major, high_minor = map(int, match.groups())
    assert (high_major, high_minor) == (low_major, low_minor + 1)
    installed = tuple(int(part) for part in arq.version.VERSION.split(".")[:2])
    assert installed == (low_major, low_minor), f"tested with {pin}, installed {installed}"


def test_the_storage_keys_dispatch_writes() -> None:
    assert arq.constants.job_key_prefix == "arq:job:"
    assert arq.constants.in_progress_key_prefix == "arq:in-progress:"


def test_a_payload_written_by_dispatch_reads_back_as_arq_reads_it() -> None:
    job_id = "job_0123456789ab0123456789ab"
    payload = dispatch._payload(job_id, 3, 1_700_000_000_000)
    job = arq.jobs.deserialize_job(payload, deserializer=dispatch.deserialize)
    assert job.function == dispatch.EDIT_TASK
    assert job.args == (job_id, 3) or list(job.args) == [job_id, 3]
    assert job.kwargs == {}
    assert job.job_try is None
    assert int(job.enqueue_time.timestamp() * 1000) == 1_700_000_000_000


def test_the_worker_attributes_the_lane_runner_uses(settings: Settings) -> None:
    async def noop(ctx: dict[str, Any]) -> None:
        return None

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=dispatch.redis_settings(settings.redis_url),
        queue_name=settings.queue_name,
        handle_signals=False,
    )
    assert isinstance(worker.in_progress_timeout_s, int | float)
    assert worker.allow_pick_jobs is True
    assert isinstance(worker.tasks, dict)
    assert callable(worker.handle_sig)


async def test_arq_runs_variants_written_in_bulk_and_honours_the_scores(
    settings: Settings,
) -> None:
    """What ``BatchWindow.write_payloads`` and ``release_first`` write, arq's own worker
    picks up: the
    window's runs (scored now) and not the rest (waiting in the pending list); and a
    run scored in the future (a lease, a parked waiter) is not picked meanwhile."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    seen: list[tuple[str, int]] = []

    async def run_edit(ctx: dict[str, Any], job_id: str, run: int) -> None:
        seen.append((job_id, run))

    queue = lane_queue(settings.queue_name, Lane.BULK)
    try:
        window = BatchWindow(redis, settings.queue_name)
        async with redis.pipeline(transaction=False) as pipe:
            window.write_payloads(pipe, ["job_a", "job_b", "job_c"], ttl_s=60)
            window.release_first(
                pipe,
                ["job_a", "job_b", "job_c"],
                window=2,
                pending_key=f"{settings.key_prefix}:pending",
                ttl_s=60,
            )
            await pipe.execute()
        future_ms = int(time.time() * 1000) + 600_000
        await redis.zadd(queue, {arq_job_id("job_b", 1): future_ms})  # leased elsewhere
        worker = Worker(
            functions=[func(run_edit, name=dispatch.EDIT_TASK)],
            redis_settings=dispatch.redis_settings(settings.redis_url),
            queue_name=queue,
            job_serializer=dispatch.serialize,
            job_deserializer=dispatch.deserialize,
            poll_delay=0.01,
            keep_result=0,
            handle_signals=False,
        )
        running = asyncio.create_task(worker.async_run())
        try:
            for _ in range(500):
                if seen:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # time enough to pick anything else it would
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await worker.close()
        assert seen == [("job_a", 1)]
        assert await redis.zscore(queue, arq_job_id("job_b", 1)) == future_ms
        assert await redis.lrange(f"{settings.key_prefix}:pending", 0, -1) == [
            arq_job_id("job_c", 1)
        ]
        assert await redis.exists(arq.constants.job_key_prefix + arq_job_id("job_c", 1))
    finally:
        await redis.delete(queue, f"{queue}:health-check")
        await redis.aclose()
