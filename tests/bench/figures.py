"""What a benchmark reports: ``Row`` (one figure against its floor and target) and
the percentile arithmetic behind the figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``value`` and ``floor`` are in ``unit``; ``ratio`` is ``value / floor`` when a
    floor was measured in the same run; ``met`` is None for figures without a target.
    """

    benchmark: str
    figure: str
    value: float
    unit: str
    target: str
    met: bool | None
    floor: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """The figure over its floor, or None without a floor."""
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; ValueError if empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: Sequence[float], q: float) -> float:
    """The ``q`` percentile of durations in seconds, in milliseconds."""
    return percentile(seconds, q) * 1000
