"""What one run of a job will ask of its upstreams, decided once before it is admitted.

``plan_run`` picks each output's models (the load balancer chooses per output) and
the slots the run needs on the upstream of each output's first choice. The same
plan is what admission takes from the shared gate and what execution lets run at
once, so the two can never disagree: a bulk run (a batch variant) sees each cap less
the slots kept for single jobs, and makes no more calls at a time than it was
admitted with.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from app.core.edit_params import EditParams
from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from worker.runs.routing import plan_models


@dataclass(frozen=True)
class SlotNeed:
    """The slots a run takes on one upstream: ``need`` of the ``cap`` it may see."""

    need: int
    cap: int


@dataclass(frozen=True)
class RunPlan:
    """Each output's models in order, each output's first upstream, and the slots needed."""

    models: tuple[tuple[str, ...], ...]
    upstreams: tuple[str, ...]
    slots: dict[str, SlotNeed]


def plan_run(
    request: EditParams,
    lane: Lane,
    providers: ProvidersConfig,
    *,
    reserve: int,
    rng: random.Random | None = None,
) -> RunPlan:
    """The plan of one run of ``request`` on ``lane``.

    ``reserve`` is how many slots of every upstream are kept for the interactive
    lane; a bulk run sees each cap less that (but at least one slot).
    """
    chooser = rng or random.Random()
    models = tuple(
        tuple(plan_models(request.model, request.routing, chooser)) for _ in range(request.n)
    )
    upstreams = tuple(providers.edit_model(plan[0]).upstream for plan in models)
    slots = {}
    for name, calls in Counter(upstreams).items():
        cap = providers.upstream(name).max_concurrency
        if lane == Lane.BULK:
            cap = max(1, cap - reserve)
        slots[name] = SlotNeed(need=min(calls, cap), cap=cap)
    return RunPlan(models=models, upstreams=upstreams, slots=slots)
