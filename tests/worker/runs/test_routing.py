"""Routing decisions as pure functions: weighted choice, plan order, backoff, and
whether a failed call is retried, falls back or gives up."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from app.core.routing_options import (
    DEFAULT_FALLBACK_CODES,
    FallbackModel,
    LoadBalancerOptions,
    RetryOptions,
    RoutingOptions,
    WeightedModel,
)
from worker.runs.routing import (
    BACKOFF_CAP_S,
    CallFailure,
    Decision,
    backoff_delay,
    decide,
    pick_weighted,
    plan_models,
)

DRAWS = 1000


def balanced(*weights: tuple[str, float], fallbacks: tuple[str, ...] = ()) -> RoutingOptions:
    """Routing with a weight-based load balancer over ``weights`` and ``fallbacks``."""
    return RoutingOptions(
        load_balancer=LoadBalancerOptions(
            type="weight_based",
            models=tuple(WeightedModel(model=model, weight=weight) for model, weight in weights),
        ),
        fallbacks=tuple(FallbackModel(model=model) for model in fallbacks),
    )


def first_choices(routing: RoutingOptions, seed: int = 7) -> Counter[str]:
    """How often each model comes first over ``DRAWS`` plans."""
    rng = random.Random(seed)
    return Counter(plan_models("requested", routing, rng)[0] for _ in range(DRAWS))


def test_weights_split_the_first_choice_seventy_thirty() -> None:
    counts = first_choices(balanced(("a", 0.7), ("b", 0.3)))

    assert set(counts) == {"a", "b"}
    assert 0.65 * DRAWS <= counts["a"] <= 0.75 * DRAWS


def test_three_weights_split_the_first_choice_in_proportion() -> None:
    counts = first_choices(balanced(("a", 0.5), ("b", 0.3), ("c", 0.2)))

    assert set(counts) == {"a", "b", "c"}
    for model, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert (share - 0.05) * DRAWS <= counts[model] <= (share + 0.05) * DRAWS


def test_a_tiny_weight_is_almost_never_chosen() -> None:
    counts = first_choices(balanced(("a", 1.0), ("rare", 0.001)))

    assert counts["rare"] <= 10
    assert counts["a"] >= DRAWS - 10


def test_equal_tiny_weights_split_evenly() -> None:
    counts = first_choices(balanced(("a", 0.001), ("b", 0.001)))

    assert 0.45 * DRAWS <= counts["a"] <= 0.55 * DRAWS


def test_pick_weighted_with_one_model_always_picks_it() -> None:
    rng = random.Random(1)
    models = (WeightedModel(model="only", weight=0.2),)

    assert {pick_weighted(models, rng) for _ in range(100)} == {"only"}


def test_without_a_load_balancer_the_requested_model_comes_first() -> None:
    routing = RoutingOptions(fallbacks=(FallbackModel(model="f1"), FallbackModel(model="f2")))

    assert plan_models("m", routing, random.Random(0)) == ["m", "f1", "f2"]
    assert plan_models("m", RoutingOptions(), random.Random(0)) == ["m"]


def test_fallbacks_follow_in_order_and_duplicates_are_skipped() -> None:
    routing = RoutingOptions(
        fallbacks=tuple(FallbackModel(model=model) for model in ("m", "f1", "f2", "f1", "m"))
    )

    assert plan_models("m", routing, random.Random(0)) == ["m", "f1", "f2"]


def test_the_balanced_model_comes_first_then_fallbacks_without_it() -> None:
    routing = balanced(("x", 1.0), fallbacks=("y", "x", "z"))

    assert plan_models("requested", routing, random.Random(0)) == ["x", "y", "z"]


def backoff_ceiling(retry_number: int) -> float:
    return min(BACKOFF_CAP_S, 1.0 * 2.0 ** (retry_number - 1))


def delays(retry_number: int, draws: int = 200) -> list[float]:
    rng = random.Random(retry_number)
    return [backoff_delay(retry_number, rng) for _ in range(draws)]


@pytest.mark.parametrize("retry_number", [1, 2, 3, 4, 5, 6, 7, 10, 30])
def test_backoff_lies_between_half_the_ceiling_and_the_ceiling(retry_number: int) -> None:
    ceiling = backoff_ceiling(retry_number)
    drawn = delays(retry_number)

    assert all(ceiling / 2 <= delay <= ceiling for delay in drawn)
    assert len(set(drawn)) > 100  # jittered, not one fixed value


def test_backoff_grows_exponentially_until_the_cap() -> None:
    for retry_number in range(1, 5):  # ceilings 1, 2, 4, 8, 16: each draw beats the last's
        assert min(delays(retry_number + 1)) >= max(delays(retry_number))
    assert backoff_ceiling(6) == BACKOFF_CAP_S == 30.0
    assert max(delays(20)) <= BACKOFF_CAP_S
    assert min(delays(20)) >= BACKOFF_CAP_S / 2


RETRY_TWICE = RoutingOptions(retry=RetryOptions(count=2, on_codes=(429, 503)))
NO_RETRY = RoutingOptions()
RATE_LIMITED = CallFailure(status=429, code="upstream_rate_limited")
UNAVAILABLE = CallFailure(status=503, code="upstream_error")
BAD_REQUEST = CallFailure(status=400, code="upstream_bad_request")
TIMEOUT = CallFailure(status=None, code="upstream_timeout")
UNREACHABLE = CallFailure(status=None, code="upstream_unreachable")
REFUSED_PROMPT = CallFailure(status=None, code="unsupported_prompt", rejected=True)
MODERATED = CallFailure(status=None, code="content_filtered", rejected=True)


def only_fallback_on(*codes: int) -> RoutingOptions:
    return RETRY_TWICE.model_copy(update={"fallback_on_codes": codes})


@dataclass(frozen=True)
class Case:
    """One row of the ``decide`` table; ``delay`` bounds the decision's delay."""

    failure: CallFailure
    routing: RoutingOptions
    action: str
    retries_used: int = 0
    has_next: bool = True
    budget_s: float = 100.0
    min_call_s: float = 1.0
    out_of_budget: bool = False
    delay: tuple[float, float] = (0.0, 0.0)


CASES = {
    "retry on a code in on_codes": Case(RATE_LIMITED, RETRY_TWICE, "retry", delay=(0.5, 1.0)),
    "second retry backs off longer": Case(
        UNAVAILABLE, RETRY_TWICE, "retry", retries_used=1, delay=(1.0, 2.0)
    ),
    "no retry knob: fall back": Case(RATE_LIMITED, NO_RETRY, "fallback"),
    "no retry knob, no next model: give up": Case(
        RATE_LIMITED, NO_RETRY, "give_up", has_next=False
    ),
    "no retry knob: a timeout is not retried": Case(TIMEOUT, NO_RETRY, "fallback"),
    "timeout retried though not in on_codes": Case(
        TIMEOUT, RoutingOptions(retry=RetryOptions(on_codes=(429,))), "retry", delay=(0.5, 1.0)
    ),
    "connection error retried though not in on_codes": Case(
        UNREACHABLE, RoutingOptions(retry=RetryOptions(on_codes=(429,))), "retry", delay=(0.5, 1.0)
    ),
    "a code outside on_codes is not retried": Case(
        CallFailure(status=500, code="upstream_error"), RETRY_TWICE, "fallback"
    ),
    "Retry-After overrides the backoff": Case(
        CallFailure(status=429, code="upstream_rate_limited", retry_after=7.5),
        RETRY_TWICE,
        "retry",
        delay=(7.5, 7.5),
    ),
    "Retry-After that just fits the budget": Case(
        CallFailure(status=429, code="upstream_rate_limited", retry_after=29.0),
        RETRY_TWICE,
        "retry",
        budget_s=30.0,
        delay=(29.0, 29.0),
    ),
    "Retry-After past the budget: fall back": Case(
        CallFailure(status=429, code="upstream_rate_limited", retry_after=50.0),
        RETRY_TWICE,
        "fallback",
        budget_s=30.0,
    ),
    "Retry-After past the budget, no next model": Case(
        CallFailure(status=429, code="upstream_rate_limited", retry_after=50.0),
        RETRY_TWICE,
        "give_up",
        has_next=False,
        budget_s=30.0,
        out_of_budget=True,
    ),
    "backoff past the budget, not a fallback code": Case(
        UNAVAILABLE, only_fallback_on(500), "give_up", budget_s=1.2, out_of_budget=True
    ),
    "retries exhausted: fall back": Case(UNAVAILABLE, RETRY_TWICE, "fallback", retries_used=2),
    "exhausted timeout falls back as 408": Case(
        TIMEOUT, only_fallback_on(408), "fallback", retries_used=2
    ),
    "exhausted timeout is not a 502": Case(
        TIMEOUT, only_fallback_on(502), "give_up", retries_used=2
    ),
    "exhausted connection error falls back as 502": Case(
        UNREACHABLE, only_fallback_on(502), "fallback", retries_used=2
    ),
    "exhausted connection error is not a 408": Case(
        UNREACHABLE, only_fallback_on(408), "give_up", retries_used=2
    ),
    "400 is not a fallback code": Case(BAD_REQUEST, RETRY_TWICE, "give_up"),
    "a rejection without a status is not retried as if transient": Case(
        REFUSED_PROMPT, RoutingOptions(retry=RetryOptions(on_codes=(429,))), "give_up"
    ),
    "a rejection without a status falls back as a 400": Case(
        REFUSED_PROMPT, only_fallback_on(400), "fallback"
    ),
    "moderation is neither retried nor sent to a fallback": Case(
        MODERATED, only_fallback_on(400, 408, 500, 502), "give_up"
    ),
    "no next model: give up": Case(
        UNAVAILABLE, RETRY_TWICE, "give_up", retries_used=2, has_next=False
    ),
    "fallback refused when the budget is below one call": Case(
        UNAVAILABLE,
        RETRY_TWICE,
        "give_up",
        retries_used=2,
        budget_s=0.5,
        out_of_budget=True,
    ),
    "fallback with exactly one call's budget left": Case(
        UNAVAILABLE, RETRY_TWICE, "fallback", retries_used=2, budget_s=1.0
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    decision = decide(
        case.failure,
        routing=case.routing,
        retries_used=case.retries_used,
        has_next_model=case.has_next,
        budget_left_s=case.budget_s,
        min_call_s=case.min_call_s,
        rng=random.Random(3),
    )

    assert decision.action == case.action
    assert decision.out_of_budget is case.out_of_budget
    low, high = case.delay
    assert low <= decision.delay_s <= high


@pytest.mark.parametrize(
    ("count", "retries_used", "retried"),
    [(2, 0, True), (2, 1, True), (2, 2, False), (1, 0, True), (1, 1, False), (5, 4, True)],
)
def test_count_is_the_number_of_retries_allowed(
    count: int, retries_used: int, retried: bool
) -> None:
    routing = RoutingOptions(retry=RetryOptions(count=count, on_codes=(429,)))

    decision = decide(
        RATE_LIMITED,
        routing=routing,
        retries_used=retries_used,
        has_next_model=False,
        budget_left_s=1000.0,
        min_call_s=1.0,
        rng=random.Random(0),
    )

    assert (decision.action == "retry") is retried
    if not retried:
        assert decision == Decision("give_up")


def test_default_fallback_codes_cover_timeouts_and_unreachable_upstreams() -> None:
    assert TIMEOUT.effective_status == 408 and 408 in DEFAULT_FALLBACK_CODES
    assert UNREACHABLE.effective_status == 502 and 502 in DEFAULT_FALLBACK_CODES
    assert BAD_REQUEST.effective_status == 400 not in DEFAULT_FALLBACK_CODES
