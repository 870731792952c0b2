"""Upstream limits hold across worker processes, and a dead worker's slots return."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.core.providers_config import load_providers
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream
from tests.support.processes import WorkerProcess, write_providers
from tests.support.service import RunningService

pytestmark = pytest.mark.slow
CAP = 5


@pytest.fixture
def capped_settings(settings: Settings, fake_upstream: FakeUpstream, tmp_path: Path) -> Settings:
    providers_file = write_providers(tmp_path / "providers.toml", fake_upstream.base_url, CAP)
    return settings.model_copy(update={"providers_file": providers_file})


@pytest.fixture
async def api(capped_settings: Settings) -> AsyncIterator[RunningService]:
    providers = load_providers(capped_settings.providers_file, os.environ)
    async with RunningService(capped_settings, providers, worker=False) as running:
        yield running


@pytest.fixture
def workers(capped_settings: Settings, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


async def test_cap_holds_across_two_worker_processes(
    api: RunningService,
    capped_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    for index in range(2):
        workers.append(WorkerProcess(capped_settings, tmp_path / f"worker{index}.log").start())
    fake_upstream.latency_s = 0.3
    submitted = await asyncio.gather(
        *(api.submit(model="fake/gpt-image-1", prompt=f"job {i}") for i in range(50))
    )
    assert all(status == 202 for status, _, _ in submitted)
    finished = [await api.wait(job["id"], timeout=120) for _, job, _ in submitted]
    assert all(job["status"] == "succeeded" for job in finished)
    assert len(fake_upstream.requests) == 50
    assert fake_upstream.max_in_flight == CAP  # saturated, never exceeded


async def test_a_killed_workers_slots_and_jobs_come_back_within_15_s(
    api: RunningService,
    capped_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    doomed = WorkerProcess(capped_settings, tmp_path / "doomed.log").start()
    workers.append(doomed)
    fake_upstream.latency_s = 3600
    jobs = [(await api.submit(model="fake/gpt-image-1"))[1] for _ in range(CAP)]
    await fake_upstream.wait_for_requests(CAP, timeout_s=30)
    doomed.kill()
    killed_at = time.monotonic()
    fake_upstream.latency_s = 0.1
    workers.append(WorkerProcess(capped_settings, tmp_path / "rescuer.log").start())
    await fake_upstream.wait_for_requests(2 * CAP, timeout_s=30)
    recovered_after = fake_upstream.calls_started[-1] - killed_at
    assert recovered_after < 15, recovered_after
    for job in jobs:
        assert (await api.wait(job["id"], timeout=60))["status"] == "succeeded"
    print(f"\nslots and jobs back {recovered_after:.1f} s after SIGKILL")
