"""Memory per in-flight job: one worker process's resident memory while ``jobs`` runs
wait on a slow upstream at once, and its peak while they finish (read from the
worker's own ``process_resident_memory_bytes`` on its metrics port)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.bench.stack import API_KEY, BenchStack
from tests.support.images import encode

MB = 1024 * 1024


@dataclass(frozen=True)
class InflightFigures:
    """What ``measure_inflight`` found, in bytes."""

    jobs: int
    input_bytes: int
    idle_rss: float
    waiting_rss: float
    peak_rss: float

    def per_job(self, rss: float) -> float:
        """Resident memory above idle, per in-flight job."""
        return (rss - self.idle_rss) / self.jobs


def noisy_png(side: int) -> bytes:
    """A photo-sized PNG that does not compress (random pixels), like a real input."""
    rng = random.Random(8)
    return encode(Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)), "PNG")


async def measure_inflight(
    stack: BenchStack, jobs: int = 100, side: int = 1024, latency_s: float = 60
) -> InflightFigures:
    """Submit ``jobs`` edits of a ``side``-pixel input; RSS idle, all waiting, and peak.

    The fake answers after ``latency_s``, which must outlast submitting every job.
    """
    image = noisy_png(side)
    stack.upstream.latency_s = latency_s
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        idle, _ = await _scrape(session, stack.worker_metrics_url)
        senders = asyncio.Semaphore(8)

        async def submit() -> None:
            form = aiohttp.FormData({"model": "fake/gpt-image-1", "prompt": "bench"})
            form.add_field("image", image, filename="in.png", content_type="image/png")
            async with senders, session.post(f"{stack.api_url}/v1/jobs", data=form) as response:
                assert response.status == 202, await response.text()

        await asyncio.gather(*(submit() for _ in range(jobs)))
        await stack.upstream.wait_for_requests(jobs, timeout_s=latency_s)
        waiting, _ = await _scrape(session, stack.worker_metrics_url)
        peak, succeeded = waiting, 0.0
        deadline = time.monotonic() + latency_s + 60 + 2 * jobs  # the fake renders serially
        while succeeded < jobs:
            assert time.monotonic() < deadline, "the runs did not finish"
            await asyncio.sleep(0.05)
            rss, succeeded = await _scrape(session, stack.worker_metrics_url)
            peak = max(peak, rss)
    return InflightFigures(jobs, len(image), idle, waiting, peak)


async def _scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """The worker's resident bytes and how many runs it has finished successfully."""
    async with session.get(url) as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                found["rss"] = sample.value
            elif sample.name == "editq_job_transitions_total":
                if sample.labels["status"] == "succeeded":
                    found["succeeded"] = sample.value
    return found["rss"], found["succeeded"]


def report(figures: InflightFigures) -> list[str]:
    """Printable lines."""
    idle, waiting, peak = figures.idle_rss, figures.waiting_rss, figures.peak_rss
    return [
        f"memory, {figures.jobs} runs in flight on 1 worker process, "
        f"{figures.input_bytes / MB:.1f} MB input each:",
        f"  idle {idle / MB:.0f} MB  waiting {waiting / MB:.0f} MB "
        f"({figures.per_job(waiting) / MB:.2f} MB/run)  "
        f"peak {peak / MB:.0f} MB ({figures.per_job(peak) / MB:.2f} MB/run)",
    ]
