"""Hold: one worker process with 1,000 edits in flight against an upstream that takes a
minute to answer — how fast they all get there, the worker's resident memory, and how
responsive its event loop stays.

Event-loop lag is measured from outside, without instrumenting the product: a probe
process times ``GET /metrics`` on the worker's metrics port (served by the worker's
event loop; each scrape also makes one Redis round trip) every 50 ms, from the first
submit until the upstream starts answering; the figure is over the probes sent once
all 1,000 were in flight (the ramp-up before is reported apart). Its idle latency,
measured first, is the floor. Resident memory is ``VmRSS`` of ``/proc/<pid>/status``,
sampled every 0.2 s from the first submit until every job has succeeded.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.bench.client import BenchClient, CallFinder, edit_body, png_of_bytes
from tests.bench.figures import Row, ms
from tests.bench.probe import Prober
from tests.bench.proc import MB, RssSampler, cpu_seconds, rss_bytes
from tests.bench.stack import BenchStack

JOBS = 1000
CLIENTS = 32
IMAGE_BYTES = 64 * 1024


@dataclass
class HoldFigures:
    """What ``measure_hold`` found."""

    submit_s: float = 0.0  # first submit sent to last 202
    to_call: list[float] = field(default_factory=list)  # each job: submit sent -> call
    after_last_accept_s: float = 0.0  # last 202 -> the last call started
    all_in_flight_at: float = 0.0  # monotonic time the last call started
    idle_probe: list[float] = field(default_factory=list)
    ramp_probe: list[float] = field(default_factory=list)  # until all were in flight
    held_probe: list[float] = field(default_factory=list)  # then, until answers began
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # until all in flight
    idle_rss: int = 0
    held_rss: int = 0  # highest while the jobs waited
    peak_rss: int = 0  # highest until all succeeded


async def succeeded(metrics_url: str) -> float:
    """How many runs the worker has finished successfully (its own counter)."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "editq_job_transitions_total" and (
                sample.labels.get("status") == "succeeded"
            ):
                return sample.value
    return 0.0


async def _submit_all(stack: BenchStack, figures: HoldFigures) -> None:
    body_image = png_of_bytes(IMAGE_BYTES)
    sent: dict[str, float] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(JOBS):
        queue.put_nowait(index)
    async with BenchClient(stack.api_url, connections=CLIENTS) as client:

        async def submitter() -> None:
            while not queue.empty():
                prompt = f"hold-{queue.get_nowait()}"
                body = edit_body(body_image, prompt)
                sent[prompt] = time.monotonic()
                await client.submit(body)

        began = time.monotonic()
        await asyncio.gather(*(submitter() for _ in range(CLIENTS)))
        last_accept = time.monotonic()
    figures.submit_s = last_accept - began
    finder = CallFinder(stack.upstream)
    calls = {prompt: await finder.wait_for(prompt, timeout_s=60) for prompt in sent}
    figures.to_call = [calls[prompt].received_at - sent[prompt] for prompt in sent]
    figures.all_in_flight_at = max(call.received_at for call in calls.values())
    figures.after_last_accept_s = figures.all_in_flight_at - last_accept


async def measure_hold(hold_s: float = 60) -> tuple[list[Row], str]:
    """Rows for the hold benchmark, upstream latency ``hold_s``; a note."""
    figures = HoldFigures()
    async with BenchStack(workers=1, upstream_cap=JOBS) as stack:
        stack.upstream.latency_s = hold_s
        pid = stack.pids["worker-0"]
        prober = Prober(stack.worker_metrics_url)
        await prober.start()
        await asyncio.sleep(3)
        figures.idle_probe = [seconds for _, seconds in await prober.stop()]
        figures.idle_rss = rss_bytes(pid)
        sampler, prober = RssSampler(pid), Prober(stack.worker_metrics_url)
        await prober.start()
        watched = {**stack.pids, "benchmark (clients, fake upstream)": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        began = time.monotonic()
        await _submit_all(stack, figures)
        for name, process in watched.items():
            used = cpu_seconds(process) - cpu_before[name]
            figures.cpu_ms_per_job[name] = used * 1000 / JOBS
        await asyncio.sleep(max(0.0, began + hold_s - 1 - time.monotonic()))
        for sent_at, seconds in await prober.stop():
            ramp = sent_at < figures.all_in_flight_at
            (figures.ramp_probe if ramp else figures.held_probe).append(seconds)
        figures.held_rss = sampler.highest
        async with asyncio.timeout(hold_s + 120):
            while await succeeded(stack.worker_metrics_url) < JOBS:
                await asyncio.sleep(0.25)
        figures.peak_rss = await sampler.stop()
    return _rows(figures, hold_s)


def _rows(figures: HoldFigures, hold_s: float) -> tuple[list[Row], str]:
    slowest = max(figures.to_call)
    # Without a phase where all were held (the ramp-up outlasted the upstream), the
    # whole run's probes stand in.
    held = figures.held_probe or figures.ramp_probe
    lag, idle_lag = ms(held, 99), ms(figures.idle_probe, 99)
    cpu = ", ".join(f"{name} {value:.1f}" for name, value in figures.cpu_ms_per_job.items())
    rows = [
        Row(
            "hold",
            f"slowest submit → upstream call of {JOBS}",
            slowest,
            "s",
            "<= 2 s",
            slowest <= 2,
        ),
        Row(
            "hold",
            f"worker RSS, {JOBS} in flight (peak until done)",
            figures.peak_rss / MB,
            "MB",
            "<= 250 MB",
            figures.peak_rss <= 250 * MB,
            floor=figures.idle_rss / MB,
        ),
        Row(
            "hold",
            f"event-loop lag proxy p99 (worker /metrics), {JOBS} held",
            lag,
            "ms",
            "<= 50 ms",
            lag <= 50,
            floor=idle_lag,
        ),
    ]
    note = (
        f"hold: {JOBS} single jobs (64 KB PNG each) from {CLIENTS} concurrent clients, "
        f"submitted in {figures.submit_s:.1f} s; upstream latency {hold_s:g} s. Submit → call: "
        f"p50 {ms(figures.to_call, 50):.0f} ms, p99 {ms(figures.to_call, 99):.0f} ms; the last "
        f"call started {figures.after_last_accept_s * 1000:.0f} ms after the last 202. RSS: "
        f"idle {figures.idle_rss / MB:.0f} MB (the floor), {figures.held_rss / MB:.0f} MB "
        f"while all waited, {figures.peak_rss / MB:.0f} MB peak as they finished. Lag proxy: "
        f"{len(figures.held_probe)} probes while all were held, p50 {ms(held, 50):.1f} ms, "
        f"max {ms(held, 100):.0f} ms; during the ramp-up "
        f"({len(figures.ramp_probe)} probes) p50 {ms(figures.ramp_probe, 50):.0f} ms, p99 "
        f"{ms(figures.ramp_probe, 99):.0f} ms; idle p99 {idle_lag:.1f} ms (the floor). CPU ms "
        f"per job until all were in flight: {cpu} (2 CPUs, shared with other work)."
    )
    return rows, note
