"""The results table of ``make bench``: where and when it ran, one line per figure,
printed and written to ``tests/bench/RESULTS.md``. A run of some benchmarks alone
(``python -m tests.bench abuse``) replaces only their rows and notes there."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Collection, Sequence
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
    load = _load()
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory_kb / 1024**2:.0f} GB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()} "
        f"(load average at the end: {load})"
    )


def commit(repository: Path = REPOSITORY) -> str:
    """The checked-out commit, read from ``.git`` (no git process), or "unknown".

    In a worktree ``.git`` is a file naming the worktree's own git directory, whose
    ``commondir`` holds the refs it shares with the main checkout."""
    git = repository / ".git"
    try:
        if git.is_file():
            git = git.parent / git.read_text().removeprefix("gitdir:").strip()
        common = (
            git / (git / "commondir").read_text().strip() if (git / "commondir").exists() else git
        )
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        for loose in (git / ref, common / ref):
            if loose.exists():
                return loose.read_text().strip()[:12]
        for line in (common / "packed-refs").read_text().splitlines():
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


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: "—"}[row.met]


TABLE_HEAD = [
    "| benchmark | figure | value | floor | ratio | target | met? |",
    "| --- | --- | ---: | ---: | ---: | --- | --- |",
]


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
        *TABLE_HEAD,
        *_table_lines(rows),
    ]
    notes_lines = _note_lines(rows, notes)
    if notes_lines:
        lines += ["", "## Notes", "", *notes_lines]
    return "\n".join(lines) + "\n"


def _table_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
        lines.append(
            f"| {row.benchmark} | {row.figure} | {_number(row.value)} {row.unit} "
            f"| {_number(row.floor)} | {ratio} | {row.target} | {_met(row)} |"
        )
    return lines


def _note_lines(rows: Sequence[Row], notes: Sequence[str]) -> list[str]:
    explained = [f"- **{row.benchmark}, {row.figure}**: {row.note}" for row in rows if row.note]
    return [*explained, *(f"- {note}" for note in notes)]


def _owner(line: str) -> str:
    """The benchmark a table line or note line belongs to (its first word)."""
    match = re.match(r"^(?:\| |- (?:\*\*)?)([\w-]+)", line)
    return match[1] if match else ""


def merge(
    previous: str,
    rows: Sequence[Row],
    *,
    benchmarks: Collection[str],
    elapsed_s: float,
    notes: Sequence[str] = (),
) -> str:
    """``previous`` (a document ``render`` wrote) with the rows and notes of
    ``benchmarks`` replaced by ``rows`` and ``notes``, in the same place (appended when
    new), and a header line saying when these were run alone."""
    head, _, rest = previous.partition(TABLE_HEAD[0] + "\n" + TABLE_HEAD[1] + "\n")
    table, _, old_notes = rest.partition("\n## Notes\n")
    names = ", ".join(sorted(benchmarks))
    rerun = f"- re-run alone: {names}"
    header = [line for line in head.rstrip("\n").splitlines() if not line.startswith(rerun + " ")]
    header.append(
        f"{rerun} ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}, commit {commit()}, "
        f"{elapsed_s:.0f} s, load average at the end: {_load()})"
    )
    new_table = _table_lines(rows)
    lines = [*header, "", *TABLE_HEAD]
    for line in table.strip("\n").splitlines():
        if _owner(line) not in benchmarks:
            lines.append(line)
        elif new_table:
            lines += new_table
            new_table = []
    lines += new_table
    kept = [
        line
        for line in old_notes.strip("\n").splitlines()
        if line and _owner(line) not in benchmarks
    ]
    notes_lines = kept + _note_lines(rows, notes)
    if notes_lines:
        lines += ["", "## Notes", "", *notes_lines]
    return "\n".join(lines) + "\n"


def publish(
    rows: Sequence[Row],
    *,
    elapsed_s: float,
    notes: Sequence[str] = (),
    path: Path = RESULTS_PATH,
    only: Collection[str] | None = None,
) -> str:
    """Print the document and write it to ``path``; returns it. With ``only`` (the
    benchmarks that ran, not all of them), only their rows and notes in ``path`` are
    replaced."""
    if only is not None and path.exists():
        document = merge(path.read_text(), rows, benchmarks=only, elapsed_s=elapsed_s, notes=notes)
    else:
        document = render(rows, elapsed_s=elapsed_s, notes=notes)
    print(document)
    path.write_text(document)
    return document
