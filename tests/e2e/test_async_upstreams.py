"""Jobs on an asynchronous upstream (the fake BFL API) end to end: submitted once, the
wait holding no worker slot, polled from any worker, canceled, crash-safe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from app.store.keys import Keys
from tests.support.fakes.bfl import FakeBfl
from tests.support.images import decode
from tests.support.service import RunningService

MODEL = "bfl/kontext"
CAP = 8


def bfl_providers(fake: FakeBfl, *, cap: int = CAP, **upstream: Any) -> ProvidersConfig:
    """One ``kind = "bfl"`` upstream at the fake, polled quickly."""
    fields: dict[str, Any] = {
        "name": "bfl",
        "kind": "bfl",
        "base_url": fake.base_url,
        "api_key": SecretStr("bfl-key"),
        "max_concurrency": cap,
        "poll_initial_s": 0.1,
        "poll_max_s": 0.5,
    }
    return ProvidersConfig(
        upstreams=(UpstreamConfig.model_validate(fields | upstream),),
        models=(ModelConfig(id=MODEL, upstream="bfl", upstream_model="flux-kontext-pro"),),
    )


@pytest.fixture
async def bfl() -> AsyncIterator[FakeBfl]:
    async with FakeBfl(processing_s=1.0) as fake:
        yield fake


@pytest.fixture
async def bfl_service(settings: Settings, bfl: FakeBfl) -> AsyncIterator[RunningService]:
    async with RunningService(settings, bfl_providers(bfl)) as running:
        yield running


async def test_an_edit_is_submitted_once_polled_and_stored(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    status, job, _ = await bfl_service.submit(model=MODEL)
    assert status == 202, job
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert bfl.submissions == 1 and bfl.downloads == 1
    assert bfl.polls >= 2  # it was pending at first
    [call] = done["attempts"]
    assert call["outcome"] == "succeeded"
    assert call["handle"] == {
        "request_id": next(iter(bfl.tasks)),
        "poll_url": None,
        "result_url": None,
        "cancel_url": None,
    }
    image = decode(await bfl_service.download(done["result"]["data"][0]["url"]))
    assert image.size == (64, 48)


async def test_moderation_fails_the_job_as_content_filtered_after_one_submission(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.moderate_next("Content Moderated")
    _, job, _ = await bfl_service.submit(
        model=MODEL, routing={"retry": {"count": 3}, "fallback_on_codes": [502]}
    )
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_filtered"
    assert bfl.submissions == 1


async def held_slots(settings: Settings, upstream: str = "bfl") -> int:
    """Unexpired slot tokens of ``upstream`` in Redis."""
    redis = Redis.from_url(settings.redis_url)
    try:
        key = Keys(settings.key_prefix).upstream_slots(upstream)
        return int(await redis.zcount(key, int(time.time() * 1000), "+inf"))
    finally:
        await redis.aclose()


async def wait_for_handle(service: RunningService, job_id: str) -> dict[str, Any]:
    """The job once its first call carries the upstream's handle."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, job = await service.get(f"/v1/jobs/{job_id}")
        if job["attempts"] and job["attempts"][0]["handle"]:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was never submitted")


@pytest.fixture
async def slow_polled(settings: Settings, bfl: FakeBfl) -> AsyncIterator[RunningService]:
    """A service that polls the fake every 20 s."""
    providers = bfl_providers(bfl, poll_initial_s=20.0, poll_max_s=20.0)
    async with RunningService(settings, providers) as running:
        yield running


async def test_cancel_wakes_the_job_records_the_cancel_and_frees_the_slots(
    slow_polled: RunningService, bfl: FakeBfl
) -> None:
    bfl_service = slow_polled
    bfl.processing_s = 60
    _, job, _ = await bfl_service.submit(model=MODEL)
    await wait_for_handle(bfl_service, job["id"])
    assert await held_slots(bfl_service.settings) == 1
    status, canceled = await bfl_service.post(f"/v1/jobs/{job['id']}/cancel")
    assert (status, canceled["status"]) == (200, "canceled")
    deadline = time.monotonic() + 3  # woken at once, not at its next poll 20 s on
    while time.monotonic() < deadline:
        _, after = await bfl_service.get(f"/v1/jobs/{job['id']}")
        if after["attempts"][0]["outcome"] == "canceled":
            break
        await asyncio.sleep(0.05)
    [call] = after["attempts"]
    assert call["outcome"] == "canceled"
    assert call["upstream_canceled"] is False  # BFL's API has no cancel
    assert await held_slots(bfl_service.settings) == 0
    polls = bfl.polls
    await asyncio.sleep(1.0)
    assert bfl.polls == polls  # nobody polls a canceled job's edit
    assert bfl.submissions == 1


async def test_max_concurrency_counts_edits_waiting_at_the_upstream(
    settings: Settings, bfl: FakeBfl
) -> None:
    bfl.processing_s = 0.5
    async with RunningService(settings, bfl_providers(bfl, cap=3)) as service:
        jobs = [(await service.submit(model=MODEL))[1]["id"] for _ in range(10)]
        done = [await service.wait(job_id) for job_id in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 10
    assert bfl.submissions == 10
    assert bfl.max_in_flight == 3
