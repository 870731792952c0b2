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
    seen = len(upstream.requests)
    began = time.monotonic()
    status, _, _ = await service.submit(model="fake/gpt-image-1", prompt=marker)
    assert status == 202
    while True:  # look only at requests that arrived since the submit
        for request in upstream.requests[seen:]:
            if request.prompt == marker:
                return request.received_at - began
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
    busy = []
    for i in range(10):
        busy.append(await pickup(capped, fake_upstream, f"busy {i}"))
        await asyncio.sleep(0.1)
    _, progress = await capped.get(f"/v1/batches/{big['id']}")
    assert progress["status"] == "running"  # measured while it was still draining
    idle_ms, busy_ms = statistics.median(idle) * 1000, statistics.median(busy) * 1000
    print(f"\npickup p50 idle {idle_ms:.1f} ms, during a 2000-variant batch {busy_ms:.1f} ms")
    # The API, the worker and the fake upstream share this test's one event loop, which
    # the drain keeps busy: the same code before and after the crash-safety work measured
    # busy p50 between 1.5x and 2.2x idle on 2 cores. A single job stuck behind the bulk
    # lane would wait for whole upstream calls (200 ms each, 2000 of them queued), so
    # +50 ms still tells the two apart; the pickup figures themselves are make bench's.
    assert busy_ms <= 2 * idle_ms + 50, (idle_ms, busy_ms)
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
    _, start_a = await capped.get(f"/v1/batches/{first['id']}")
    while True:
        _, b = await capped.get(f"/v1/batches/{second['id']}", key="key-b")
        if b["counts"]["succeeded"] >= 100:
            break
        await asyncio.sleep(0.05)
    _, a = await capped.get(f"/v1/batches/{first['id']}")
    gained_a = a["counts"]["succeeded"] - start_a["counts"]["succeeded"]
    gained_b = b["counts"]["succeeded"]
    print(f"\nwhile both ran: first batch +{gained_a}, second batch +{gained_b}")
    assert 0.6 <= gained_a / gained_b <= 1.6, (gained_a, gained_b)
    await capped.post(f"/v1/batches/{first['id']}/cancel")
    await capped.post(f"/v1/batches/{second['id']}/cancel", key="key-b")
