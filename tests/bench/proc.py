"""A process's resident memory and CPU time, read from ``/proc/<pid>`` (Linux), and a
sampler that keeps the highest resident memory while a benchmark runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

MB = 1024 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int) -> int:
    """Resident memory now (``VmRSS``), in bytes."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Highest resident memory so far (``VmHWM``), in bytes."""
    return _status_kb(pid, "VmHWM") * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used, in seconds."""
    # The command name (field 2) may hold spaces; it ends at the last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's resident memory until stopped; keeps the highest.

    The kernel's high-water mark (``VmHWM``) is reset on start when this user may
    (``/proc/<pid>/clear_refs``), so a peak between two samples still counts.
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self._watermark = _reset_peak(pid)
        self.highest = rss_bytes(pid)
        self._task = asyncio.create_task(self._run(interval_s))

    async def _run(self, interval_s: float) -> None:
        while True:
            self.highest = max(self.highest, rss_bytes(self.pid))
            await asyncio.sleep(interval_s)

    async def stop(self) -> int:
        """Stop sampling; the highest resident bytes seen (or marked by the kernel)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        peak = peak_rss_bytes(self.pid) if self._watermark else 0
        return max(self.highest, rss_bytes(self.pid), peak)


def _reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current ``VmRSS``; False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
