"""An API process killed in the middle of accepting work (issue 13, finding 5).

The API runs as ``editq api`` in its own process and is told to die (SIGKILL, see
``app.crash_points``) at a named step of a submit; the client then does what every
SDK does, it retries the same request with the same ``Idempotency-Key``, against a
fresh API process. Whatever step the crash hit, exactly one job or batch exists
afterwards, it finishes, and every edit reached the upstream exactly once. Without
a key, a crash must not leave a job that never runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.cli.embedded import free_port
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, png
from tests.support.processes import ApiProcess, WorkerProcess, write_providers

pytestmark = pytest.mark.slow
MODEL = "fake/gpt-image-1"
CAP = 200
AUTH = {"Authorization": "Bearer key-a"}


class Crashed(Exception):
    """The API process died (or was not there) before it answered."""


@pytest.fixture
def stack_settings(settings: Settings, tmp_path: Path, fake_upstream: FakeUpstream) -> Settings:
    """Settings for real API and worker processes against this test's fake upstream,
    with a short idempotency lease so a dead request's key is taken over quickly."""
    providers = write_providers(tmp_path / "providers.toml", fake_upstream.base_url, CAP)
    return settings.model_copy(
        update={"providers_file": providers, "submit_lease_s": 1.0, "log_format": "json"}
    )


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


@pytest.fixture
async def worker(stack_settings: Settings, tmp_path: Path) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(stack_settings, tmp_path / "worker.log").start()
    try:
        yield process
    finally:
        process.stop()


async def started_api(settings: Settings, log: Path, crash_at: str = "") -> ApiProcess:
    """An API process on a new port, once it answers ``/healthz``."""
    api = ApiProcess(settings, log, free_port(), crash_at=crash_at).start()
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{api.base_url}/healthz") as response:
                    if response.status == 200:
                        return api
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    api.stop()
    raise AssertionError("the API did not start")


async def post(
    client: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    key: str | None,
    *,
    busy_for_s: float = 60,
) -> tuple[int, dict[str, Any]]:
    """POST ``body``; while the key's earlier request is still held (409), retry, as an
    SDK would, for up to ``busy_for_s``. Crashed if the API dies before answering."""
    headers = dict(AUTH)
    if key is not None:
        headers["Idempotency-Key"] = key
    deadline = time.monotonic() + busy_for_s
    while True:
        try:
            async with client.post(url, json=body, headers=headers) as response:
                answer = await response.json()
                status = response.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise Crashed(str(exc)) from exc
        if status != 409 or time.monotonic() > deadline:
            return status, answer
        await asyncio.sleep(0.2)


async def crash_while_posting(
    client: aiohttp.ClientSession,
    settings: Settings,
    log: Path,
    crash_at: str,
    path: str,
    body: dict[str, Any],
    key: str | None,
) -> None:
    """POST through an API process that dies at ``crash_at``; it must really die there."""
    api = await started_api(settings, log, crash_at)
    try:
        with pytest.raises(Crashed):
            await post(client, api.base_url + path, body, key)
        assert api.wait(10) == -9, f"the API did not die at {crash_at}"
    finally:
        api.stop()


async def get(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def job_body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "images": [{"image_url": data_url(png(8, 8))}]}


def batch_body(variants: int) -> dict[str, Any]:
    return {
        "defaults": {
            "model": MODEL,
            "prompt": "a variant",
            "images": [{"image_url": data_url(png(8, 8))}],
        },
        "variants": [{"prompt": f"variant {index}"} for index in range(variants)],
    }


@pytest.mark.timeout(900)
async def test_a_batch_submit_killed_at_three_points_runs_every_variant_once(
    client: aiohttp.ClientSession,
    stack_settings: Settings,
    worker: WorkerProcess,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    variants = 10_000
    body = batch_body(variants)
    key = "batch-crash-1"
    log = tmp_path / "api.log"
    # Inputs stored, nothing of the batch written; then half of its variants written;
    # then the batch released to the workers but the client never answered.
    began = time.monotonic()
    for point in ("batch.inputs_stored", "batch.jobs_written@20", "batch.released"):
        await crash_while_posting(client, stack_settings, log, point, "/v1/batches", body, key)
        print(f"killed at {point} after {time.monotonic() - began:.1f} s")
    api = await started_api(stack_settings, log)
    try:
        status, batch = await post(client, api.base_url + "/v1/batches", body, key)
        assert status == 202, batch
        assert batch["total"] == variants
        listed = await get(client, api.base_url + "/v1/batches?limit=100")
        assert [item["id"] for item in listed["data"]] == [batch["id"]]
        deadline = time.monotonic() + 600
        while batch["status"] == "running":
            assert time.monotonic() < deadline, batch
            batch = await get(client, f"{api.base_url}/v1/batches/{batch['id']}?wait=10")
        print(f"completed after {time.monotonic() - began:.1f} s")
        again_status, again = await post(client, api.base_url + "/v1/batches", body, key)
        assert (again_status, again["id"]) == (202, batch["id"])
    finally:
        api.stop()
    assert batch["status"] == "completed"
    assert batch["counts"]["succeeded"] == variants
    calls = Counter(request.prompt for request in fake_upstream.requests)
    assert len(calls) == variants
    assert set(calls.values()) == {1}, calls.most_common(3)


async def test_a_job_submit_killed_after_its_record_is_written_still_runs(
    client: aiohttp.ClientSession,
    stack_settings: Settings,
    worker: WorkerProcess,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    body = job_body("once")
    log = tmp_path / "api.log"
    await crash_while_posting(client, stack_settings, log, "job.recorded", "/v1/jobs", body, None)
    api = await started_api(stack_settings, log)
    try:
        listed = await get(client, api.base_url + "/v1/jobs")
        assert len(listed["data"]) <= 1
        for job in listed["data"]:  # a job the client was never told about must still run
            finished = await get(client, f"{api.base_url}/v1/jobs/{job['id']}?wait=20")
            assert finished["status"] == "succeeded", finished
    finally:
        api.stop()
    assert len(fake_upstream.requests) == len(listed["data"])


async def test_a_job_submit_killed_and_retried_with_its_key_runs_once(
    client: aiohttp.ClientSession,
    stack_settings: Settings,
    worker: WorkerProcess,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    body = job_body("once")
    log = tmp_path / "api.log"
    for point in ("job.inputs_stored", "job.recorded"):
        await crash_while_posting(client, stack_settings, log, point, "/v1/jobs", body, "job-1")
    api = await started_api(stack_settings, log)
    try:
        status, job = await post(client, api.base_url + "/v1/jobs", body, "job-1")
        assert status == 202, job
        finished = await get(client, f"{api.base_url}/v1/jobs/{job['id']}?wait=20")
        listed = await get(client, api.base_url + "/v1/jobs")
    finally:
        api.stop()
    assert finished["status"] == "succeeded", finished
    assert [item["id"] for item in listed["data"]] == [job["id"]]
    assert len(fake_upstream.requests) == 1


async def test_a_retry_killed_between_its_move_and_its_enqueue_still_runs(
    client: aiohttp.ClientSession,
    stack_settings: Settings,
    worker: WorkerProcess,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    fake_upstream.fail_next(Fault.status(400))
    body = job_body("again")
    log = tmp_path / "api.log"
    api = await started_api(stack_settings, log, "job.requeued")
    try:
        status, job = await post(client, api.base_url + "/v1/jobs", body, None)
        assert status == 202, job
        failed = await get(client, f"{api.base_url}/v1/jobs/{job['id']}?wait=20")
        assert failed["status"] == "failed", failed
        with pytest.raises(Crashed):
            await post(client, f"{api.base_url}/v1/jobs/{job['id']}/retry", {}, None)
        assert api.wait(10) == -9
    finally:
        api.stop()
    api = await started_api(stack_settings, log)
    try:
        finished = await get(client, f"{api.base_url}/v1/jobs/{job['id']}?wait=20")
    finally:
        api.stop()
    assert finished["status"] == "succeeded", finished
    assert [attempt["run"] for attempt in finished["attempts"]] == [1, 2]
