"""Pickup latency: from sending a submit to the upstream call starting."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from tests.bench.stack import API_KEY, BenchStack
from tests.images import data_url, png


async def measure_pickup(stack: BenchStack, jobs: int = 200) -> list[float]:
    """Submit ``jobs`` one at a time on an idle system; seconds to each upstream call."""
    body = {
        "model": "fake/gpt-image-1",
        "prompt": "pickup",
        "images": [{"image_url": data_url(png(64, 64))}],
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for index in range(jobs):
            seen = len(stack.upstream.calls_started)
            began = time.monotonic()
            async with session.post(f"{stack.api_url}/v1/jobs", json=body) as response:
                assert response.status == 202, await response.text()
            await stack.upstream.wait_for_requests(seen + 1, timeout_s=10)
            latencies.append(stack.upstream.calls_started[seen] - began)
            if index % 20 == 0:
                await asyncio.sleep(0.05)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max in milliseconds."""
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50": statistics.median(ordered) * 1000,
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1] * 1000,
    }
