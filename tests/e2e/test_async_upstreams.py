"""Jobs on an asynchronous upstream (the fake BFL API) end to end: submitted once, the
wait holding no worker slot, polled from any worker, canceled, crash-safe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from app.store.keys import Keys
from tests.support.fakes.bfl import FakeBfl
from tests.support.images import decode
from tests.support.processes import WorkerProcess
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


BFL_TOML = """
[[upstreams]]
name = "bfl"
kind = "bfl"
base_url = "{base_url}"
api_key_env = "EDITQ_TEST_BFL_KEY"
max_concurrency = {cap}
poll_initial_s = {poll_initial_s}
poll_max_s = {poll_max_s}

[[models]]
id = "{model}"
upstream = "bfl"
upstream_model = "flux-kontext-pro"
"""


def process_settings(
    settings: Settings, tmp_path: Path, fake: FakeBfl, *, cap: int, poll: tuple[float, float]
) -> Settings:
    """Settings for worker processes against the fake (the key in their environment)."""
    path = tmp_path / "providers.toml"
    path.write_text(
        BFL_TOML.format(
            base_url=fake.base_url,
            cap=cap,
            poll_initial_s=poll[0],
            poll_max_s=poll[1],
            model=MODEL,
        )
    )
    return settings.model_copy(
        update={"providers_file": path, "job_lease_s": 2.0, "rate_limit_per_minute": 100_000}
    )


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


def start_worker(
    processes: list[WorkerProcess], settings: Settings, log: Path, **env: str
) -> WorkerProcess:
    worker = WorkerProcess(settings, log)
    worker._environment.update({"EDITQ_TEST_BFL_KEY": "bfl-key", **env})
    processes.append(worker.start())
    return worker


async def submit_many(service: RunningService, count: int) -> list[str]:
    """``count`` jobs, submitted 25 at a time."""
    gate = asyncio.Semaphore(25)

    async def one() -> str:
        async with gate:
            status, job, _ = await service.submit(model=MODEL)
            assert status == 202, job
            return str(job["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.slow
async def test_a_sigkilled_worker_costs_no_second_submission(
    settings: Settings, tmp_path: Path, bfl: FakeBfl, processes: list[WorkerProcess]
) -> None:
    bfl.processing_s = 3.0
    stack = process_settings(settings, tmp_path, bfl, cap=50, poll=(0.5, 1.0))
    async with RunningService(stack, bfl_providers(bfl), worker=False) as api:
        doomed = start_worker(processes, stack, tmp_path / "doomed.log")
        jobs = await submit_many(api, 20)
        await bfl.wait_for_submissions(20, timeout_s=30)
        doomed.kill()  # every edit is waiting at the upstream; some deliveries are mid-flight
        killed_at, polls = time.monotonic(), bfl.polls
        start_worker(processes, stack, tmp_path / "rescuer.log")
        done = [await api.wait(job_id, timeout=60) for job_id in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 20
    assert bfl.submissions == 20  # zero extra submissions
    assert bfl.downloads == 20
    for job in done:
        [call] = job["attempts"]  # the same call, carried on: no second claim, no second call
        assert call["outcome"] == "succeeded" and call["attempt"] == 1
    print(
        f"\nSIGKILL with 20 edits waiting at BFL: 20 submissions in all (0 extra), "
        f"{bfl.polls - polls} polls after the kill, all done "
        f"{time.monotonic() - killed_at:.1f} s after it"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_one_worker_with_50_slots_keeps_1000_edits_in_flight(
    settings: Settings, tmp_path: Path, bfl: FakeBfl, processes: list[WorkerProcess]
) -> None:
    bfl.processing_s = 30.0
    stack = process_settings(settings, tmp_path, bfl, cap=1000, poll=(1.0, 10.0))
    async with RunningService(stack, bfl_providers(bfl), worker=False) as api:
        jobs = await submit_many(api, 1000)  # queued: the worker starts once all are in
        started = time.monotonic()
        start_worker(processes, stack, tmp_path / "worker.log", EDITQ_WORKER_MAX_JOBS="50")
        await bfl.wait_for_submissions(1000, timeout_s=60)
        submitted_in = time.monotonic() - started
        done = [await api.wait(job_id, timeout=240) for job_id in jobs]
        finished_in = time.monotonic() - started
    assert [job["status"] for job in done] == ["succeeded"] * 1000
    assert bfl.submissions == 1000
    assert bfl.max_in_flight == 1000
    print(
        f"\n1,000 edits on one worker with EDITQ_WORKER_MAX_JOBS=50: all 1,000 submitted "
        f"in {submitted_in:.1f} s and in flight at once (fake max in flight "
        f"{bfl.max_in_flight}), {bfl.polls} polls, all succeeded {finished_in:.1f} s "
        f"after the worker started (30 s each at the upstream)"
    )
