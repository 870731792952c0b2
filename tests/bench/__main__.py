"""``make bench``: run every benchmark, each against a fresh stack, print the table and
write it to ``tests/bench/RESULTS.md``. Takes 6-8 minutes; ``--hold-s 20`` shortens
the hold benchmark's one-minute upstream."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.bench.accept import measure_accept
from tests.bench.batch import measure_batch
from tests.bench.cost import measure_cost
from tests.bench.figures import Row
from tests.bench.hold import measure_hold
from tests.bench.inflight import measure_inflight, report
from tests.bench.overhead import measure_overhead
from tests.bench.pickup import measure_pickup
from tests.bench.results import publish
from tests.bench.stack import BenchStack

# The memory-per-run figure is extra; it runs only while the whole stays under 10 min.
INFLIGHT_BUDGET_S = 420


async def inflight_rows() -> tuple[list[Row], str]:
    """Resident memory per in-flight run with 1 MB inputs (no target: a capacity figure)."""
    async with BenchStack(workers=1) as stack:
        figures = await measure_inflight(stack, jobs=100, latency_s=15)
    per_run = figures.per_job(figures.peak_rss) / 1024**2
    row = Row("memory", "peak RSS per in-flight run, 1 MB input", per_run, "MB", "—", None)
    return [row], " ".join(line.strip() for line in report(figures))


async def main(hold_s: float) -> None:
    """Run every benchmark in turn, then publish the table."""
    began = time.monotonic()
    rows, notes = await measure_accept(), []
    steps: list[Callable[[], Awaitable[tuple[list[Row], str]]]] = [
        measure_pickup,
        lambda: measure_hold(hold_s),
        measure_overhead,
        measure_batch,
        measure_cost,
    ]
    for step in steps:
        found, note = await step()
        rows += found
        notes.append(note)
        print(f"[{time.monotonic() - began:.0f} s] {found[0].benchmark} done", flush=True)
    if time.monotonic() - began < INFLIGHT_BUDGET_S:
        found, note = await inflight_rows()
        rows += found
        notes.append(note)
    if hold_s < 60:
        notes.append(f"hold ran with a {hold_s:g} s upstream, not the issue's 60 s.")
    publish(rows, elapsed_s=time.monotonic() - began, notes=notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--hold-s", type=float, default=60, help="the hold upstream's latency")
    asyncio.run(main(parser.parse_args().hold_s))
