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
from tests.support.fakes.upstream import FakeUpstream
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
    _, job, _ = await bfl_service.submit(model=MODEL, retry={"count": 3})
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
def processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WorkerProcess]]:
    """Worker processes started by the test (stopped after it); they inherit the key."""
    monkeypatch.setenv("EDITQ_TEST_BFL_KEY", "bfl-key")
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


def start_worker(processes: list[WorkerProcess], settings: Settings, log: Path) -> WorkerProcess:
    worker = WorkerProcess(settings, log).start()
    processes.append(worker)
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
    bfl.poll_latency_s = 0.3  # so that the kill finds deliveries mid-poll, not only deferred
    stack = process_settings(settings, tmp_path, bfl, cap=50, poll=(0.5, 1.0))
    async with RunningService(stack, bfl_providers(bfl), worker=False) as api:
        doomed = start_worker(processes, stack, tmp_path / "doomed.log")
        jobs = await submit_many(api, 20)
        await bfl.wait_for_submissions(20, timeout_s=30)
        await asyncio.sleep(0.6)  # every edit waits at the upstream, polled
        mid_poll = bfl.polls_in_flight
        doomed.kill()
        killed_at, polls = time.monotonic(), bfl.polls
        assert mid_poll > 0  # the kill interrupted deliveries, which come back after a lease
        start_worker(processes, stack, tmp_path / "rescuer.log")
        done = [await api.wait(job_id, timeout=60) for job_id in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 20
    assert bfl.submissions == 20  # zero extra submissions
    assert bfl.downloads == 20
    for job in done:
        [call] = job["attempts"]  # the same call, carried on: no second claim, no second call
        assert call["outcome"] == "succeeded" and call["attempt"] == 1
    print(
        f"\nSIGKILL with 20 edits waiting at BFL ({mid_poll} deliveries mid-poll): "
        f"20 submissions in all (0 extra), "
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
        one = stack.model_copy(update={"worker_max_jobs": 50})  # EDITQ_WORKER_MAX_JOBS=50
        start_worker(processes, one, tmp_path / "worker.log")
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


async def test_a_failed_edit_is_submitted_again_when_the_request_retries(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.processing_s = 0.2
    bfl.moderate_next("Error")
    _, job, _ = await bfl_service.submit(model=MODEL, retry={"count": 2})
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "succeeded", (done["error"], done["attempts"])
    assert bfl.submissions == 2
    failed, succeeded = done["attempts"]
    assert (failed["outcome"], failed["next_action"]) == ("failed", "retry")
    assert failed["handle"]["request_id"] != succeeded["handle"]["request_id"]
    assert succeeded["outcome"] == "succeeded"


async def test_a_rate_limited_poll_waits_as_long_as_the_upstream_asks(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.processing_s = 1.0
    _, job, _ = await bfl_service.submit(model=MODEL)
    await wait_for_handle(bfl_service, job["id"])
    bfl.fail_polls_next(429, retry_after="2")
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "succeeded"
    assert bfl.submissions == 1
    limited_at = bfl.poll_times[0]  # the first poll met the 429 (polls come every 0.1-0.5 s)
    assert bfl.poll_times[1] - limited_at >= 1.9


async def test_an_edit_past_the_budget_is_checked_once_more_then_fails_as_a_timeout(
    settings: Settings, bfl: FakeBfl
) -> None:
    bfl.processing_s = 60
    budgeted = settings.model_copy(update={"attempt_budget_s": 1.5})
    async with RunningService(budgeted, bfl_providers(bfl)) as service:
        _, job, _ = await service.submit(model=MODEL, retry={"count": 2})
        done = await service.wait(job["id"], timeout=15)
        assert await held_slots(service.settings) == 0
    assert done["status"] == "failed"
    assert done["error"]["code"] == "upstream_timeout"
    assert bfl.submissions == 1  # no time left for a retry
    [call] = done["attempts"]
    assert call["error_code"] == "upstream_timeout"
    assert call["duration_ms"] >= 1500
    # Polled again once the budget was spent (it counts from just before the submission).
    started = next(iter(bfl.tasks.values())).submitted_at
    assert bfl.poll_times[-1] - started >= 1.4


async def test_a_synchronous_fallback_is_called_inline(
    settings: Settings, bfl: FakeBfl, fake_upstream: FakeUpstream
) -> None:
    bfl.moderate_next("Error")
    providers = bfl_providers(bfl)
    openai = UpstreamConfig(name="oa", kind="openai", base_url=fake_upstream.base_url)
    providers = providers.model_copy(
        update={
            "upstreams": (*providers.upstreams, openai),
            "models": (
                *providers.models,
                ModelConfig(id="oa/gpt", upstream="oa", upstream_model="gpt-image-1"),
            ),
        }
    )
    async with RunningService(settings, providers) as service:
        _, job, _ = await service.submit(
            model=MODEL, fallbacks=[{"model": "oa/gpt"}], fallback_on_codes=[502]
        )
        done = await service.wait(job["id"])
    assert done["status"] == "succeeded", (done["error"], done["attempts"])
    assert [c["upstream"] for c in done["attempts"]] == ["bfl", "oa"]
    assert done["attempts"][0]["next_action"] == "fallback"
    assert bfl.submissions == 1 and len(fake_upstream.requests) == 1


async def test_a_cancel_during_a_poll_cancels_the_upstream_edit_too(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.processing_s = 60
    bfl.poll_latency_s = 3.0  # the delivery is mid-poll when the cancel comes
    _, job, _ = await bfl_service.submit(model=MODEL)
    await wait_for_handle(bfl_service, job["id"])
    deadline = time.monotonic() + 5
    while not bfl.polls_in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert bfl.polls_in_flight
    status, _ = await bfl_service.post(f"/v1/jobs/{job['id']}/cancel")
    assert status == 200
    deadline = time.monotonic() + 2  # well before the poll would have answered
    while time.monotonic() < deadline:
        _, after = await bfl_service.get(f"/v1/jobs/{job['id']}")
        if after["attempts"][0]["outcome"] == "canceled":
            break
        await asyncio.sleep(0.05)
    assert after["attempts"][0]["outcome"] == "canceled"
    assert after["attempts"][0]["upstream_canceled"] is False
    assert await held_slots(bfl_service.settings) == 0


async def test_an_output_that_fails_the_job_cancels_the_other_outputs_edit(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.processing_s = 60
    bfl.moderate_next("Request Moderated")  # refused at once; the other edit works on
    _, job, _ = await bfl_service.submit(model=MODEL, n=2)
    done = await bfl_service.wait(job["id"], timeout=15)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_filtered"
    outcomes = sorted(call["outcome"] for call in done["attempts"])
    assert outcomes == ["canceled", "failed"]
    assert bfl.submissions == 2
    assert await held_slots(bfl_service.settings) == 0


async def test_retrying_a_failed_job_submits_it_again(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.moderate_next("Request Moderated")
    _, job, _ = await bfl_service.submit(model=MODEL)
    assert (await bfl_service.wait(job["id"]))["status"] == "failed"
    status, _ = await bfl_service.post(f"/v1/jobs/{job['id']}/retry")
    assert status == 202
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "succeeded"
    assert bfl.submissions == 2  # that is what a retry means
    assert [(c["run"], c["outcome"]) for c in done["attempts"]] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
