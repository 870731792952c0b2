"""Crash points: a configured point kills the process at its n-th reaching, others never."""

from __future__ import annotations

import signal
import subprocess
import sys

from app.crash_points import CrashPoints
from app.settings import Settings

PROGRAM = """
from app.crash_points import CrashPoints
points = CrashPoints({spec!r})
for step in range(5):
    print(step, flush=True)
    points.reach("demo.step")
print("done", flush=True)
"""


def run(spec: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    program = PROGRAM.format(spec=spec)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )


def test_the_named_point_kills_the_process_at_its_nth_reaching() -> None:
    finished = run(("demo.step@3",))
    assert finished.returncode == -signal.SIGKILL
    assert finished.stdout.split() == ["0", "1", "2"]


def test_a_bare_name_kills_at_the_first_reaching() -> None:
    finished = run(("demo.step",))
    assert finished.returncode == -signal.SIGKILL
    assert finished.stdout.split() == ["0"]


def test_other_points_and_no_points_are_harmless() -> None:
    for spec in ((), ("other.point",)):
        finished = run(spec)
        assert finished.returncode == 0
        assert finished.stdout.split()[-1] == "done"
    CrashPoints().reach("demo.step")  # unconfigured: a no-op in this very process


def test_settings_read_a_comma_separated_list() -> None:
    settings = Settings(crash_at="batch.jobs_written@2, job.recorded")
    assert settings.crash_at == ("batch.jobs_written@2", "job.recorded")
