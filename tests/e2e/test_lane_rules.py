"""Rules that used to be written in several places and drifted apart: which models a
batch may name, which lane a batch variant runs on, and how many calls it may make."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.constants import retry_key_prefix
from redis.asyncio import Redis

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, png
from tests.support.service import RunningService

CAP = 4


def capped_providers(fake_upstream: FakeUpstream, cap: int) -> ProvidersConfig:
    return ProvidersConfig(
        upstreams=(
            UpstreamConfig(name="local", kind="local"),
            UpstreamConfig(
                name="fake", kind="openai", base_url=fake_upstream.base_url, max_concurrency=cap
            ),
        ),
        models=(
            ModelConfig(id="local/editor", upstream="local", upstream_model="pillow"),
            ModelConfig(id="fake/gpt-image-1", upstream="fake", upstream_model="gpt-image-1"),
        ),
    )


def batch_body(variants: list[dict[str, Any]], **defaults: Any) -> dict[str, Any]:
    return {
        "defaults": {
            "model": "fake/gpt-image-1",
            "prompt": "a variant",
            "images": [{"image_url": data_url(png(16, 16))}],
            **defaults,
        },
        "variants": variants,
    }


async def wait_batch(service: RunningService, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    batch: dict[str, Any] = {}
    while loop.time() < deadline:
        _, batch = await service.get(f"/v1/batches/{batch_id}?wait=5")
        if batch["status"] != "running":
            return batch
    raise AssertionError(f"batch {batch_id} still running: {batch}")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            batch_body([{}, {"fallbacks": [{"model": "fake/nope"}]}]),
            "variants[1].fallbacks[0].model",
        ),
        (
            batch_body(
                [
                    {
                        "load_balancer": {
                            "type": "weight_based",
                            "models": [
                                {"model": "fake/gpt-image-1", "weight": 0.5},
                                {"model": "fake/unknown", "weight": 0.5},
                            ],
                        }
                    }
                ]
            ),
            "variants[0].load_balancer.models[1].model",
        ),
        (
            batch_body([{}, {}], fallbacks=[{"model": "fake/missing"}]),
            "defaults.fallbacks[0].model",
        ),
    ],
)
async def test_a_batch_naming_an_unknown_routing_model_is_refused_at_submit(
    service: RunningService, body: dict[str, Any], param: str
) -> None:
    status, answer = await service.post("/v1/batches", body=body)
    assert status == 400, answer
    assert answer["error"]["code"] == "model_not_found"
    assert answer["error"]["param"] == param
    _, page = await service.get("/v1/batches")
    assert page["data"] == []  # nothing was accepted


@pytest.fixture
async def one_slot(
    settings: Settings, fake_upstream: FakeUpstream
) -> AsyncIterator[RunningService]:
    async with RunningService(
        settings.model_copy(update={"interactive_reserve_slots": 1}),
        capped_providers(fake_upstream, 1),
    ) as running:
        yield running


async def _picks(redis: Redis, arq_id: str) -> int:
    """How many times arq's workers have picked ``arq_id`` (arq counts every try)."""
    return int(await redis.get(retry_key_prefix + arq_id) or 0)


async def test_a_retried_variant_waits_parked_on_the_bulk_lane(
    one_slot: RunningService, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    service = one_slot
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="bad"))
    _, batch = await service.post("/v1/batches", body=batch_body([{}]))
    assert (await wait_batch(service, batch["id"]))["counts"]["failed"] == 1
    _, page = await service.get(f"/v1/batches/{batch['id']}/jobs")
    variant = page["data"][0]["id"]

    # An interactive job holds the upstream's only slot while the variant is retried.
    fake_upstream.latency_s = 3.0
    _, single, _ = await service.submit(model="fake/gpt-image-1")
    await service.wait_for_status(single["id"], "running")
    status, retried = await service.post(f"/v1/jobs/{variant}/retry")
    assert status == 202, retried

    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        await asyncio.sleep(0.5)  # picked once, found the upstream full, parked
        queue = service.settings.queue_name
        arq_id = f"{variant}:2"
        assert await redis.zscore(f"{queue}:bulk", arq_id) is not None
        assert await redis.zscore(queue, arq_id) is None
        before = await _picks(redis, arq_id)
        assert before >= 1  # it was picked, found the upstream full and parked
        await asyncio.sleep(1.0)
        picks = await _picks(redis, arq_id) - before
    finally:
        await redis.aclose()
    # Parked means no re-pick loop: not picked again at all, not once per 5 ms poll.
    assert picks == 0, f"picked {picks} times in 1 s while parked"
    assert (await service.get(f"/v1/jobs/{variant}"))[1]["status"] == "queued"
    fake_upstream.latency_s = 0.0
    assert (await service.wait(single["id"]))["status"] == "succeeded"
    assert (await service.wait(variant))["status"] == "succeeded"


@pytest.fixture
async def cap_four(
    settings: Settings, fake_upstream: FakeUpstream
) -> AsyncIterator[RunningService]:
    async with RunningService(
        settings.model_copy(update={"interactive_reserve_slots": 1}),
        capped_providers(fake_upstream, CAP),
    ) as running:
        yield running


async def test_variants_with_n_4_and_single_jobs_keep_to_a_cap_of_4(
    cap_four: RunningService, fake_upstream: FakeUpstream
) -> None:
    service = cap_four
    fake_upstream.latency_s = 0.5
    _, batch = await service.post("/v1/batches", body=batch_body([{}, {}, {}], n=4))
    await fake_upstream.wait_for_requests(3)  # a variant is running on the bulk slots
    # Single jobs arriving meanwhile may use the slot kept for them, and no more.
    singles = []
    for i in range(6):
        singles.append(await service.submit(model="fake/gpt-image-1", prompt=f"single {i}"))
        await asyncio.sleep(0.15)
    done = await wait_batch(service, batch["id"])
    for _, job, _ in singles:
        assert (await service.wait(job["id"]))["status"] == "succeeded"
    assert done["counts"]["succeeded"] == 3
    assert len(fake_upstream.requests) == 3 * 4 + 6
    assert fake_upstream.max_in_flight <= CAP, f"{fake_upstream.max_in_flight} calls in flight"
