"""Routing decisions for one upstream call, as pure functions: which model, and after a
failure whether to retry it, fall back to the next model, or give up — and how long
to wait first.

A call tries ``plan_models`` in order (the load balancer's or the request's model,
then the fallbacks). On a failure, ``decide`` says what next:

- **give up** at once after moderation (``content_filtered``): the same request would
  be refused again, by this model or another;
- **retry** the same model when the status is in ``retry.on_codes``, or the call
  timed out or could not connect, while retries remain — after the upstream's
  ``Retry-After`` or an exponential backoff with jitter — unless that wait would
  leave less than ``min_call_s`` of the attempt's budget;
- **fall back** to the next model when the status (a timeout counts as 408, a
  connection error as 502) is in ``fallback_on_codes`` and a model is left;
- otherwise **give up**: the error is the job's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from app.core.routing_options import RetryOptions, RoutingOptions, WeightedModel

NO_RETRY = RetryOptions(count=1, on_codes=(429,))
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
TIMEOUT_STATUS = 408
UNREACHABLE_STATUS = 502
REJECTED_STATUS = 400
FINAL_CODES = frozenset({"content_filtered"})


@dataclass(frozen=True)
class CallFailure:
    """What went wrong with one call: the upstream's status (None when it gave none),
    the error code, its ``Retry-After`` in seconds if it sent one, and whether the
    upstream refused the request itself (``rejected``: an ``UpstreamRejected``, which
    an asynchronous upstream reports in a status body, not an HTTP status)."""

    status: int | None
    code: str
    retry_after: float | None = None
    rejected: bool = False

    @property
    def effective_status(self) -> int:
        """The status used to match code lists: a rejection is 400, a timeout 408, no
        answer 502."""
        if self.status is not None:
            return self.status
        if self.rejected:
            return REJECTED_STATUS
        return TIMEOUT_STATUS if self.code == "upstream_timeout" else UNREACHABLE_STATUS

    @property
    def transient(self) -> bool:
        """A timeout or a connection failure, always worth retrying."""
        return self.status is None and not self.rejected


@dataclass(frozen=True)
class Decision:
    """What to do after a failure; ``delay_s`` before the next call."""

    action: Literal["retry", "fallback", "give_up"]
    delay_s: float = 0.0
    out_of_budget: bool = False  # giving up only because the attempt's budget is spent


def pick_weighted(models: Sequence[WeightedModel], rng: random.Random) -> str:
    """One model, chosen with probability proportional to its weight."""
    total = sum(model.weight for model in models)
    point = rng.uniform(0, total)
    for model in models:
        point -= model.weight
        if point <= 0:
            return model.model
    return models[-1].model


def plan_models(model: str, routing: RoutingOptions, rng: random.Random) -> list[str]:
    """The models one call tries in order: the balanced (or requested) model, then
    each fallback not already listed."""
    first = model
    if routing.load_balancer is not None:
        first = pick_weighted(routing.load_balancer.models, rng)
    plan = [first]
    for fallback in routing.fallbacks:
        if fallback.model not in plan:
            plan.append(fallback.model)
    return plan


def backoff_delay(retry_number: int, rng: random.Random) -> float:
    """Seconds before retry ``retry_number`` (1-based): exponential, with equal jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (retry_number - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def decide(
    failure: CallFailure,
    *,
    routing: RoutingOptions,
    retries_used: int,
    has_next_model: bool,
    budget_left_s: float,
    min_call_s: float,
    rng: random.Random,
) -> Decision:
    """Retry, fall back or give up after ``failure`` (see the module docstring)."""
    if failure.code in FINAL_CODES:
        return Decision("give_up")
    retry = routing.retry or NO_RETRY
    retries_left = retry.count - retries_used if routing.retry is not None else 0
    blocked_by_budget = False
    if retries_left > 0 and (failure.transient or failure.status in retry.on_codes):
        delay = failure.retry_after
        if delay is None:
            delay = backoff_delay(retries_used + 1, rng)
        if delay + min_call_s <= budget_left_s:
            return Decision("retry", delay)
        blocked_by_budget = True
    if has_next_model and failure.effective_status in routing.fallback_on_codes:
        if budget_left_s >= min_call_s:
            return Decision("fallback")
        blocked_by_budget = True
    return Decision("give_up", out_of_budget=blocked_by_budget)
