"""An event-loop lag proxy for a process serving HTTP: time a cheap GET every
``interval`` seconds, from a process of its own so the benchmark's own load (it
also plays the upstream) does not count. Prints ``[[sent_at, seconds, ok], ...]`` as
JSON (``sent_at`` is ``time.monotonic()``, one clock for every process of the
machine; ``ok`` is false for an answer other than 2xx, or none) once it gets SIGTERM
or SIGINT::

    python -m tests.bench.probe http://127.0.0.1:9464/metrics --interval 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import aiohttp


async def probe(url: str, interval_s: float) -> list[tuple[float, float, bool]]:
    """GET ``url`` every ``interval_s`` until SIGTERM/SIGINT; when each request was sent,
    how many seconds it took and whether it got a 2xx."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    latencies: list[tuple[float, float, bool]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            began = time.monotonic()
            try:
                async with session.get(url) as response:
                    await response.read()
                    ok = response.ok
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append((began, time.monotonic() - began, ok))
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
    return latencies


class Prober:
    """``python -m tests.bench.probe`` as a child: ``start``, then ``stop`` for its figures
    (and ``failed``, the probes that got no 2xx)."""

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        self._command = ["-m", "tests.bench.probe", url, f"--interval={interval_s}"]
        self._process: asyncio.subprocess.Process | None = None
        self.failed = 0

    async def start(self) -> None:
        """Start probing."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, *self._command, stdout=asyncio.subprocess.PIPE
        )

    async def stop(self) -> list[tuple[float, float]]:
        """Stop probing; when each probe was sent and its latency (s)."""
        assert self._process is not None, "not started"
        self._process.terminate()
        output, _ = await self._process.communicate()
        probes = json.loads(output) if output.strip() else []
        self.failed = sum(1 for *_, ok in probes if not ok)
        return [(float(sent), float(seconds)) for sent, seconds, _ in probes]


def main() -> None:
    """Probe until terminated, then print the latencies."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.probe")
    parser.add_argument("url")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between GETs")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(probe(args.url, args.interval))), flush=True)


if __name__ == "__main__":
    main()
