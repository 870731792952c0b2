"""The results table of ``make bench``: where and when it ran, one line per figure,
printed and written to ``tests/bench/RESULTS.md``."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench.figures import Row

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
REPOSITORY = Path(__file__).resolve().parents[2]


def machine() -> str:
    """CPU model, core count, memory, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    memory_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory_kb / 1024**2:.0f} GB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()} "
        f"(load average at the end: {load})"
    )


def commit(repository: Path = REPOSITORY) -> str:
    """The checked-out commit, read from ``.git`` (no git process), or "unknown"."""
    git = repository / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: "—"}[row.met]


def render(rows: Sequence[Row], *, elapsed_s: float, notes: Sequence[str] = ()) -> str:
    """The Markdown document: header, table, then each row's note and the extra notes."""
    lines = [
        "# editq benchmarks",
        "",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- commit: {commit()} (plus uncommitted changes, if any)",
        f"- `make bench` took {elapsed_s:.0f} s; every floor was measured in the same run",
        "",
        "| benchmark | figure | value | floor | ratio | target | met? |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
        lines.append(
            f"| {row.benchmark} | {row.figure} | {_number(row.value)} {row.unit} "
            f"| {_number(row.floor)} | {ratio} | {row.target} | {_met(row)} |"
        )
    explained = [f"- **{row.benchmark}, {row.figure}**: {row.note}" for row in rows if row.note]
    if explained or notes:
        lines += ["", "## Notes", "", *explained, *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def publish(
    rows: Sequence[Row], *, elapsed_s: float, notes: Sequence[str] = (), path: Path = RESULTS_PATH
) -> str:
    """Print the document and write it to ``path``; returns it."""
    document = render(rows, elapsed_s=elapsed_s, notes=notes)
    print(document)
    path.write_text(document)
    return document
