"""Pickup latency: from sending a submit to the upstream call starting, one job at a
time, on an idle system and while a 2,000-variant batch drains through the same
worker and upstream."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tests.bench.client import BenchClient, CallFinder, edit_body
from tests.bench.figures import Row, ms
from tests.bench.proc import cpu_seconds
from tests.bench.stack import MODEL, BenchStack
from tests.support.images import data_url, png

BATCH_VARIANTS = 2000
BATCH_LATENCY_S = 0.5  # each variant's upstream call


@dataclass
class Pickups:
    """Per job, seconds from sending the submit to its 202 and to its upstream call."""

    accepted: list[float] = field(default_factory=list)
    called: list[float] = field(default_factory=list)

    def split(self) -> str:
        """Where the median went: the submit's round trip, then the queue to the call."""
        after = [call - accept for accept, call in zip(self.accepted, self.called, strict=True)]
        return f"submit {ms(self.accepted, 50):.0f} ms + queue to call {ms(after, 50):.0f} ms"


async def pickups(
    stack: BenchStack,
    client: BenchClient,
    label: str,
    *,
    jobs: int,
    until: asyncio.Future[Any] | None = None,
) -> Pickups:
    """Submit up to ``jobs`` single jobs one at a time (stopping early once ``until`` is
    done) and time each one's pickup."""
    finder, rng = CallFinder(stack.upstream), random.Random(1)
    image = png(64, 64)
    found = Pickups()
    for index in range(jobs):
        if until is not None and until.done():
            break
        prompt = f"{label}-{index}"
        body = edit_body(image, prompt)
        began = time.monotonic()
        await client.submit(body)
        found.accepted.append(time.monotonic() - began)
        call = await finder.wait_for(prompt)
        found.called.append(call.received_at - began)
        # Submits at random phases of the workers' poll loop, not in lockstep with it.
        await asyncio.sleep(rng.uniform(0.01, 0.05))
    return found


def batch_body(variants: int, prompt: str = "variant") -> bytes:
    """A JSON ``POST /v1/batches`` body: one small shared input, ``variants`` prompts."""
    return json.dumps(
        {
            "defaults": {"model": MODEL, "images": [{"image_url": data_url(png(64, 64))}]},
            "variants": [{"prompt": f"{prompt} {index}"} for index in range(variants)],
        }
    ).encode()


async def measure_pickup(idle_jobs: int = 200, busy_jobs: int = 150) -> tuple[list[Row], str]:
    """Rows for pickup p50/p99 idle and during a batch; a note on where the time went."""
    async with BenchStack(workers=1) as stack, BenchClient(stack.api_url) as client:
        idle = await pickups(stack, client, "idle", jobs=idle_jobs)
        stack.upstream.latency_s = BATCH_LATENCY_S
        watched = {**stack.pids, "benchmark": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        began = time.monotonic()
        batch = await client.post_json("/v1/batches", batch_body(BATCH_VARIANTS))
        drained = asyncio.ensure_future(client.wait_batch(batch["id"], timeout_s=300))
        await asyncio.sleep(0.5)  # the batch's first window is running
        busy = await pickups(stack, client, "busy", jobs=busy_jobs, until=drained)
        elapsed = time.monotonic() - began
        counts = (await client.get(f"/v1/batches/{batch['id']}"))["counts"]
        cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
        drained.cancel()
        await asyncio.gather(drained, return_exceptions=True)
    done = counts["succeeded"] + counts["failed"]
    cpu = ", ".join(f"{name} {used * 1000 / done:.1f}" for name, used in cpu_used.items())
    note = (
        f"pickup: submit → upstream call start (the submit's round trip included), 1 worker "
        f"process. Idle: {len(idle.called)} jobs one at a time, median {idle.split()}. During: "
        f"{len(busy.called)} jobs one at a time while a {BATCH_VARIANTS}-variant batch "
        f"({BATCH_LATENCY_S:g} s per upstream call, default batch window) drained through the "
        f"same worker and upstream ({done} variants done in {elapsed:.0f} s, "
        f"{done / elapsed:.0f}/s), median {busy.split()}; CPU ms per variant meanwhile: {cpu} "
        "(2 CPUs, shared with other work)."
    )
    rows = []
    for when, found in (("idle", idle), ("during a batch", busy)):
        p50, p99 = ms(found.called, 50), ms(found.called, 99)
        rows += [
            Row("pickup", f"p50, {when}", p50, "ms", "<= 20 ms", p50 <= 20),
            Row("pickup", f"p99, {when}", p99, "ms", "<= 100 ms", p99 <= 100),
        ]
    return rows, note
