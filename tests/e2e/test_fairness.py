"""Fairness: a huge batch does not starve single jobs, and concurrent batches share
a capped upstream instead of queueing behind each other."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.blobs import ObjectStore
from app.cli.embedded import free_port
from app.core.providers_config import load_providers
from app.errors import EditqError
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream
from tests.support.images import data_url, png
from tests.support.processes import WorkerProcess, write_providers
from tests.support.service import RunningService

pytestmark = pytest.mark.slow
CAP = 10


@pytest.fixture
async def capped(
    settings: Settings, fake_upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[RunningService]:
    """The API in this process; S3 (moto) and the worker each in a process of their own,
    as deployed, so the figures are not a single process's GIL contention."""
    s3_port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    providers_file = write_providers(tmp_path / "providers.toml", fake_upstream.base_url, CAP)
    tuned = settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{s3_port}", "providers_file": providers_file}
    )
    worker = WorkerProcess(tuned, tmp_path / "worker.log")
    running = RunningService(tuned, load_providers(providers_file, os.environ))
    try:
        await _until_bucket(tuned)
        await running.start(worker=False)
        worker.start()
        yield running
    finally:
        worker.stop()
        await running.stop()
        moto.terminate()
        moto.wait()


async def _until_bucket(settings: Settings) -> None:
    storage = ObjectStore(settings)
    try:
        for _ in range(100):
            try:
                await storage.ensure_bucket()
                return
            except EditqError:
                await asyncio.sleep(0.1)
        raise RuntimeError("moto did not start")
    finally:
        storage.close()


def batch(n: int, prompt: str) -> dict[str, Any]:
    return {
        "defaults": {
            "model": "fake/gpt-image-1",
            "prompt": prompt,
            "images": [{"image_url": data_url(png(16, 16))}],
        },
        "n": n,
    }


async def pickup(service: RunningService, upstream: FakeUpstream, marker: str) -> float:
    """Seconds from sending a single job to the upstream seeing its call."""
    seconds, _ = await pickup_and_overtakers(service, upstream, marker)
    return seconds


async def pickup_and_overtakers(
    service: RunningService, upstream: FakeUpstream, marker: str
) -> tuple[float, int]:
    """Seconds from sending a single job to the upstream seeing its call, and how many
    other calls reached the upstream in between (the work that went first)."""
    first = len(upstream.requests)
    seen = first
    began = time.monotonic()
    status, _, _ = await service.submit(model="fake/gpt-image-1", prompt=marker)
    assert status == 202
    while True:  # look only at requests that arrived since the submit
        for index, request in enumerate(upstream.requests[seen:], start=seen):
            if request.prompt == marker:
                return request.received_at - began, index - first
        seen = max(seen, len(upstream.requests) - 50)
        await asyncio.sleep(0.001)


async def test_single_jobs_stay_fast_while_a_2000_variant_batch_drains(
    capped: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.2
    await pickup(capped, fake_upstream, "warm-up")
    idle = [await pickup(capped, fake_upstream, f"idle {i}") for i in range(10)]
    status, big = await capped.post("/v1/batches", body=batch(2000, "bulk"))
    assert status == 202, big
    while (await capped.get(f"/v1/batches/{big['id']}"))[1]["counts"]["running"] < CAP - 2:
        await asyncio.sleep(0.05)
    busy, overtakers = [], []
    for i in range(10):
        seconds, went_first = await pickup_and_overtakers(capped, fake_upstream, f"busy {i}")
        busy.append(seconds)
        overtakers.append(went_first)
        await asyncio.sleep(0.1)
    _, progress = await capped.get(f"/v1/batches/{big['id']}")
    assert progress["status"] == "running"  # measured while it was still draining
    idle_ms, busy_ms = statistics.median(idle) * 1000, statistics.median(busy) * 1000
    print(f"\npickup p50 idle {idle_ms:.1f} ms, during a 2000-variant batch {busy_ms:.1f} ms")
    print(f"bulk calls that reached the upstream before each single job: {overtakers}")
    # The property, not a timing (timings are make bench's, and move with the machine's
    # load): a single job is not queued behind the batch. Served first, only the calls
    # already admitted (CAP - 1 bulk slots turning over at 200 ms each) reach the
    # upstream while its submit is handled, even on a loaded machine: 0-10 here. With
    # single jobs ranked after variants and no slot reserved for them, one of ten
    # waited behind 187 variants.
    assert max(overtakers) <= 3 * CAP, overtakers
    assert fake_upstream.max_in_flight <= CAP
    await capped.post(f"/v1/batches/{big['id']}/cancel")


async def test_two_tenants_batches_share_the_upstream(
    capped: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.1
    _, first = await capped.post("/v1/batches", body=batch(400, "first"), key="key-a")
    while (await capped.get(f"/v1/batches/{first['id']}"))[1]["counts"]["succeeded"] < 40:
        await asyncio.sleep(0.05)
    _, second = await capped.post("/v1/batches", body=batch(400, "second"), key="key-b")

    async def succeeded() -> tuple[int, int]:
        _, a = await capped.get(f"/v1/batches/{first['id']}")
        _, b = await capped.get(f"/v1/batches/{second['id']}", key="key-b")
        return a["counts"]["succeeded"], b["counts"]["succeeded"]

    # Counted only once both run: how long the second batch's submit takes (longer on
    # a loaded machine) is not a share of the upstream.
    while (start := await succeeded())[1] < 10:
        await asyncio.sleep(0.05)
    while (end := await succeeded())[1] < start[1] + 100:
        await asyncio.sleep(0.05)
    gained_a, gained_b = end[0] - start[0], end[1] - start[1]
    print(f"\nwhile both ran: first batch +{gained_a}, second batch +{gained_b}")
    assert 0.6 <= gained_a / gained_b <= 1.6, (gained_a, gained_b)
    await capped.post(f"/v1/batches/{first['id']}/cancel")
    await capped.post(f"/v1/batches/{second['id']}/cancel", key="key-b")
