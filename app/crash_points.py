"""Named points at which a process may be told to die at once, to prove crash safety.

A test that must show "killed right here, nothing is lost or done twice" starts a
real API or worker process with ``EDITQ_CRASH_AT`` naming one point (optionally
``name@n``: the n-th time it is reached). On reaching it the process sends itself
SIGKILL: no ``finally``, no shutdown hook, no flush runs, exactly as when a host
dies. Unset (the default, and always in production) every point is a no-op that
costs one set lookup.

Points are named ``<what>.<moment>`` and listed where they are reached, e.g.
``job.recorded`` (a single job's record is written, its run not queued yet).
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from collections.abc import Iterable

log = logging.getLogger(__name__)


class CrashPoints:
    """The points this process dies at (``name`` or ``name@n``, n counting from 1)."""

    def __init__(self, spec: Iterable[str] = ()) -> None:
        self._at: dict[str, int] = {}
        for item in spec:
            name, _, nth = item.partition("@")
            self._at[name] = int(nth) if nth else 1
        self._reached: Counter[str] = Counter()

    def reach(self, name: str) -> None:
        """Die here (SIGKILL) if this is the configured point and its n-th reaching."""
        if name not in self._at:
            return
        self._reached[name] += 1
        if self._reached[name] == self._at[name]:
            log.warning("crash point %s reached: killing this process", name)
            os.kill(os.getpid(), signal.SIGKILL)
