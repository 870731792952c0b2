"""``make bench``: run every benchmark, each against a fresh stack, print the table and
write it to ``tests/bench/RESULTS.md``. Takes 9-12 minutes; ``--hold-s 20`` shortens
the hold benchmark's one-minute upstream. Name benchmarks to run only those
(``python -m tests.bench abuse``): only their rows in ``RESULTS.md`` are replaced."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.bench.abuse import measure_abuse
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

# The memory-per-run figure is extra: in a whole run it runs only while the benchmarks
# before it took less than this.
INFLIGHT_BUDGET_S = 420

Step = Callable[[argparse.Namespace], Awaitable[tuple[list[Row], str]]]


async def accept_rows(_: argparse.Namespace) -> tuple[list[Row], str]:
    """The accept benchmark (its notes are in its rows)."""
    return await measure_accept(), ""


async def inflight_rows(_: argparse.Namespace) -> tuple[list[Row], str]:
    """Resident memory per in-flight run with 1 MB inputs (no target: a capacity figure)."""
    async with BenchStack(workers=1) as stack:
        figures = await measure_inflight(stack, jobs=100, latency_s=15)
    per_run = figures.per_job(figures.peak_rss) / 1024**2
    row = Row("memory", "peak RSS per in-flight run, 1 MB input", per_run, "MB", "—", None)
    return [row], " ".join(line.strip() for line in report(figures))


async def hold_rows(options: argparse.Namespace) -> tuple[list[Row], str]:
    """The hold benchmark with the upstream latency asked for."""
    rows, note = await measure_hold(options.hold_s)
    if options.hold_s < 60:
        note += f" (hold ran with a {options.hold_s:g} s upstream, not the issue's 60 s.)"
    return rows, note


BENCHMARKS: dict[str, Step] = {
    "accept": accept_rows,
    "pickup": lambda _: measure_pickup(),
    "hold": hold_rows,
    "overhead": lambda _: measure_overhead(),
    "batch": lambda _: measure_batch(),
    "cost": lambda _: measure_cost(),
    "memory": inflight_rows,
    "abuse": lambda _: measure_abuse(),
}


async def main(options: argparse.Namespace) -> None:
    """Run the benchmarks named (all of them by default) in turn, then publish."""
    chosen = options.benchmarks or list(BENCHMARKS)
    began = time.monotonic()
    rows: list[Row] = []
    notes: list[str] = []
    for name in chosen:
        whole_run = not options.benchmarks
        if name == "memory" and whole_run and time.monotonic() - began > INFLIGHT_BUDGET_S:
            continue
        found, note = await BENCHMARKS[name](options)
        rows += found
        notes += [note] if note else []
        print(f"[{time.monotonic() - began:.0f} s] {name} done", flush=True)
    only = set(chosen) if options.benchmarks else None
    publish(rows, elapsed_s=time.monotonic() - began, notes=notes, only=only)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", help=f"run only these (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--hold-s", type=float, default=60, help="the hold upstream's latency")
    arguments = parser.parse_args()
    unknown = set(arguments.benchmarks) - set(BENCHMARKS)
    if unknown:
        parser.error(
            f"no benchmark {', '.join(sorted(unknown))}; there are {', '.join(BENCHMARKS)}"
        )
    asyncio.run(main(arguments))
