"""The run plan: the slots admission takes are the calls execution may make at once."""

from __future__ import annotations

import random

from app.core.edit_params import EditParams
from app.core.jobs import Lane
from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.core.routing_options import RoutingOptions
from worker.runs.plan import SlotNeed, plan_run

PROVIDERS = ProvidersConfig(
    upstreams=(
        UpstreamConfig(name="a", kind="openai", base_url="http://a", max_concurrency=4),
        UpstreamConfig(name="b", kind="openai", base_url="http://b", max_concurrency=1),
    ),
    models=(
        ModelConfig(id="a/one", upstream="a", upstream_model="one"),
        ModelConfig(id="b/two", upstream="b", upstream_model="two"),
    ),
)


def params(n: int, **routing: object) -> EditParams:
    return EditParams(
        model="a/one", prompt="p", n=n, routing=RoutingOptions.model_validate(routing)
    )


def test_a_bulk_run_sees_the_cap_less_the_reserve_and_needs_no_more() -> None:
    plan = plan_run(params(4), Lane.BULK, PROVIDERS, reserve=1)
    assert plan.slots == {"a": SlotNeed(need=3, cap=3)}
    assert plan.upstreams == ("a",) * 4


def test_an_interactive_run_sees_the_whole_cap() -> None:
    plan = plan_run(params(4), Lane.INTERACTIVE, PROVIDERS, reserve=1)
    assert plan.slots == {"a": SlotNeed(need=4, cap=4)}


def test_a_bulk_run_keeps_at_least_one_slot() -> None:
    plan = plan_run(
        params(2, fallbacks=[{"model": "a/one"}]).model_copy(update={"model": "b/two"}),
        Lane.BULK,
        PROVIDERS,
        reserve=3,
    )
    assert plan.slots == {"b": SlotNeed(need=1, cap=1)}
    assert plan.models == (("b/two", "a/one"), ("b/two", "a/one"))


def test_the_load_balancer_picks_per_output_and_slots_follow_the_picks() -> None:
    balanced = params(
        8,
        load_balancer={
            "type": "weight_based",
            "models": [{"model": "a/one", "weight": 0.5}, {"model": "b/two", "weight": 0.5}],
        },
    )
    plan = plan_run(balanced, Lane.INTERACTIVE, PROVIDERS, reserve=0, rng=random.Random(7))
    counts = {name: plan.upstreams.count(name) for name in ("a", "b")}
    assert counts["a"] + counts["b"] == 8 and min(counts.values()) > 0
    assert plan.slots["a"] == SlotNeed(need=min(4, counts["a"]), cap=4)
    assert plan.slots["b"] == SlotNeed(need=1, cap=1)
