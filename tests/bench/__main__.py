"""``make bench``: run the benchmarks and print their figures."""

from __future__ import annotations

import asyncio

from tests.bench.pickup import measure_pickup, summary
from tests.bench.stack import BenchStack


async def main() -> None:
    """Run every benchmark against a fresh stack."""
    async with BenchStack(workers=1) as stack:
        figures = summary(await measure_pickup(stack, jobs=200))
    print("pickup (submit -> upstream call starts), idle, 200 jobs, 1 worker process:")
    print("  " + "  ".join(f"{name} {value:.1f} ms" for name, value in figures.items()))


if __name__ == "__main__":
    asyncio.run(main())
