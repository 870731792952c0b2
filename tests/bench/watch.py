"""Watching the API process while a load attacks it, and judging the figures against
the abuse benchmark's targets: resident memory under 600 MB, ``GET /healthz`` within
500 ms throughout, no 5xx.

``Watch`` samples ``VmRSS`` of ``/proc/<api pid>/status`` every 50 ms, plus the
kernel's high-water mark ``VmHWM`` (reset when the load starts, so a peak between
two samples counts), and times ``/healthz`` every 50 ms from a probe process of its
own (``tests.bench.probe``), so the attackers' own work in this process does not
count. ``Attack`` tallies every answer the attackers got; ``Outcome`` turns both into
rows and a note. The loads themselves are in ``tests.bench.abuse``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from tests.bench.figures import Row, ms
from tests.bench.probe import Prober
from tests.bench.proc import MB, RssSampler, rss_bytes
from tests.bench.stack import BenchStack

RSS_TARGET = 600 * MB
HEALTH_TARGET_S = 0.5
PROBE_INTERVAL_S = 0.05


@dataclass
class Attack:
    """What the attackers of one load sent and got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    """Requests that got no answer, by the exception's name."""
    wrong: list[str] = field(default_factory=list)
    """Answers other than the documented one (the first few, as examples)."""
    wrong_count: int = 0
    facts: list[str] = field(default_factory=list)
    """What else the load found, in words, for the note."""

    @property
    def requests(self) -> int:
        """Answers received."""
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status."""
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def unexpected(self, what: str) -> None:
        """Count an answer other than the documented one (and keep a few)."""
        self.wrong_count += 1
        if len(self.wrong) < 3:
            self.wrong.append(what[:300])


@dataclass
class Watched:
    """The API process while a load ran."""

    idle_rss: int = 0
    peak_rss: int = 0
    health_s: list[float] = field(default_factory=list)
    health_failed: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """The slowest /healthz (s) sent during each phase the load marked (``Watch.mark``)."""


class Watch:
    """``async with Watch(stack) as watched:`` samples the API's memory and probes its
    ``/healthz`` for the block; ``watched`` is filled in when the block ends."""

    def __init__(self, stack: BenchStack) -> None:
        self._pid = stack.pids["api"]
        self._prober = Prober(f"{stack.api_url}/healthz", PROBE_INTERVAL_S)
        self._sampler: RssSampler | None = None
        self._began = 0.0
        self._marks: list[tuple[float, str]] = []
        self.watched = Watched()

    def mark(self, phase: str) -> None:
        """From now on the load is in ``phase`` (for the slowest /healthz of each)."""
        self._marks.append((time.monotonic(), phase))

    async def __aenter__(self) -> Watched:
        self.watched.idle_rss = rss_bytes(self._pid)
        await self._prober.start()
        await asyncio.sleep(1)  # the probe process starts probing
        self._sampler = RssSampler(self._pid, interval_s=PROBE_INTERVAL_S)
        self._began = time.monotonic()
        return self.watched

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._sampler is not None
        self.watched.seconds = time.monotonic() - self._began
        self.watched.peak_rss = await self._sampler.stop()
        probes = await self._prober.stop()
        self.watched.health_s = [seconds for _, seconds in probes]
        self.watched.health_failed = self._prober.failed
        for sent, seconds in probes:
            phase = next((name for at, name in reversed(self._marks) if at <= sent), "")
            if phase:
                slowest = self.watched.phases.get(phase, 0.0)
                self.watched.phases[phase] = max(slowest, seconds)


Load = Callable[[BenchStack, Attack, Watch], Awaitable[None]]
"""Sets up what it needs, then attacks within ``async with watch``."""


@dataclass(frozen=True)
class Outcome:
    """One load's figures."""

    name: str
    description: str
    attack: Attack
    watched: Watched
    listed: bool = True
    """One of the loads the targets were set for (else a harder one, beyond them)."""

    @property
    def health_max_s(self) -> float:
        """The slowest /healthz (seconds)."""
        return max(self.watched.health_s, default=float("inf"))

    def rows(self) -> list[Row]:
        """Peak RSS, /healthz max and p99, and the 5xx count, against the targets."""
        watched, attack = self.watched, self.attack
        health = watched.health_s or [float("inf")]
        within = self.health_max_s <= HEALTH_TARGET_S and watched.health_failed == 0
        return [
            Row(
                "abuse",
                f"{self.name}: peak API RSS",
                watched.peak_rss / MB,
                "MB",
                "< 600 MB",
                watched.peak_rss < RSS_TARGET,
                floor=watched.idle_rss / MB,
            ),
            Row("abuse", f"{self.name}: /healthz max", ms(health, 100), "ms", "<= 500 ms", within),
            Row("abuse", f"{self.name}: /healthz p99", ms(health, 99), "ms", "—", None),
            Row(
                "abuse",
                f"{self.name}: 5xx answers",
                attack.server_errors,
                f"of {attack.requests:,}",
                "0",
                attack.server_errors == 0,
            ),
        ]

    def met(self) -> bool:
        """Whether every target was met."""
        return all(row.met is not False for row in self.rows())

    def note(self) -> str:
        """What was sent, what came back, and the figures behind the rows."""
        watched, attack = self.watched, self.attack
        statuses = ", ".join(
            f"{count:,} x {status}" for status, count in sorted(attack.statuses.items())
        )
        lines = [
            f"abuse, {self.name}: {self.description} Ran {watched.seconds:.0f} s: "
            f"{attack.requests:,} answers ({statuses or 'none'})",
        ]
        if attack.failures:
            lost = ", ".join(f"{count} {name}" for name, count in attack.failures.items())
            lines.append(f"no answer: {lost}")
        if attack.wrong_count:
            lines.append(f"{attack.wrong_count} not as documented, e.g. {attack.wrong}")
        lines += attack.facts
        if watched.phases:
            slowest = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in watched.phases.items())
            lines.append(f"slowest /healthz by phase: {slowest}")
        lines.append(
            f"/healthz: {len(watched.health_s)} probes, "
            f"p50 {ms(watched.health_s or [0], 50):.1f} ms, "
            f"{watched.health_failed} without a 2xx; API RSS {watched.idle_rss / MB:.0f} MB "
            f"before (the floor)"
        )
        return "; ".join(lines) + "."


async def run_load(name: str, description: str, load: Load, *, listed: bool = True) -> Outcome:
    """Run ``load`` against a fresh stack with one worker."""
    attack = Attack()
    async with BenchStack(workers=1) as stack:
        watch = Watch(stack)
        await load(stack, attack, watch)
    return Outcome(name, description, attack, watch.watched, listed)


def verdict(outcomes: list[Outcome]) -> str:
    """One line: whether the listed loads met every target (else which did not), and
    how the loads beyond them fared."""
    listed = [outcome for outcome in outcomes if outcome.listed]
    beyond = [outcome for outcome in outcomes if not outcome.listed]
    missed = [outcome.name for outcome in listed if not outcome.met()]
    line = (
        f"abuse: FAIL, targets missed by: {', '.join(missed)}"
        if missed
        else "abuse: PASS, every listed load met all three targets"
    )
    if beyond:
        fared = ", ".join(f"{o.name} {'met' if o.met() else 'missed'}" for o in beyond)
        line += f"; beyond the listed loads: {fared}"
    return line
