"""Batches end to end: many variants submitted once, followed as one thing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.receiver import WebhookReceiver
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, decode, png
from tests.support.service import RunningService


def batch_body(variants: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "defaults": {
            "model": "fake/gpt-image-1",
            "prompt": "a variant",
            "images": [{"image_url": data_url(png(32, 24))}],
        },
        **extra,
    }
    if variants is not None:
        body["variants"] = variants
    return body


async def wait_batch(service: RunningService, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status, batch = await service.get(f"/v1/batches/{batch_id}?wait=10")
        assert status == 200, batch
        if batch["status"] != "running":
            return batch
    raise AssertionError(f"batch {batch_id} still running: {batch}")


async def results(service: RunningService, batch_id: str) -> list[dict[str, Any]]:
    async with service.client.get(
        service.url(f"/v1/batches/{batch_id}/results"), headers=service.auth()
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/jsonl"
        return [json.loads(line) for line in (await response.text()).splitlines()]


async def test_a_200_variant_batch_completes_with_exact_counts(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    variants = [{"prompt": f"variant {i}", "metadata": {"i": str(i)}} for i in range(200)]
    status, batch = await service.post("/v1/batches", body=batch_body(variants))
    assert status == 202, batch
    assert batch["object"] == "edit.batch"
    assert batch["total"] == 200
    assert batch["counts"]["queued"] + batch["counts"]["running"] <= 200
    done = await wait_batch(service, batch["id"])
    assert done["status"] == "completed"
    assert done["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 200,
        "failed": 0,
        "canceled": 0,
    }
    assert done["usage"]["total_tokens"] > 0
    assert done["finished_at"] >= done["created_at"]
    lines = await results(service, batch["id"])
    assert [line["index"] for line in lines] == list(range(200))
    assert all(line["status"] == "succeeded" and len(line["outputs"]) == 1 for line in lines)
    assert len({line["job_id"] for line in lines}) == 200
    prompts = sorted(r.prompt or "" for r in fake_upstream.requests)
    assert prompts == sorted(f"variant {i}" for i in range(200))
    image = decode(await service.download(lines[7]["outputs"][0]))
    assert image.size == (32, 24)


async def test_inputs_are_stored_once_for_the_whole_batch(service: RunningService) -> None:
    _, batch = await service.post("/v1/batches", body=batch_body(n=3))
    await wait_batch(service, batch["id"])
    _, page = await service.get(f"/v1/batches/{batch['id']}/jobs")
    keys = {job["request"]["images"][0]["bytes"] for job in page["data"]}
    assert len(page["data"]) == 3 and len(keys) == 1
    assert [job["variant_index"] for job in page["data"]] == [0, 1, 2]
    assert {job["batch_id"] for job in page["data"]} == {batch["id"]}


async def test_n_shorthand_and_a_multipart_batch(service: RunningService) -> None:
    _, shorthand = await service.post("/v1/batches", body=batch_body(n=5))
    assert (await wait_batch(service, shorthand["id"]))["counts"]["succeeded"] == 5

    form = aiohttp.FormData()
    form.add_field("image[]", png(40, 40), filename="a.png", content_type="image/png")
    form.add_field("defaults", json.dumps({"model": "local/editor", "size": "20x20"}))
    form.add_field("variants", json.dumps([{"prompt": "grayscale"}, {"prompt": "invert"}]))
    form.add_field("metadata", json.dumps({"project": "x"}))
    async with service.client.post(
        service.url("/v1/batches"), data=form, headers=service.auth()
    ) as response:
        assert response.status == 202
        assert response.headers["Location"].startswith("/v1/batches/batch_")
        batch = await response.json()
    assert batch["metadata"] == {"project": "x"}
    done = await wait_batch(service, batch["id"])
    assert done["counts"]["succeeded"] == 2
    for line in await results(service, batch["id"]):
        assert decode(await service.download(line["outputs"][0])).size == (20, 20)


async def test_a_failing_variant_does_not_fail_its_siblings(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="bad"))
    _, batch = await service.post("/v1/batches", body=batch_body(n=6))
    done = await wait_batch(service, batch["id"])
    assert done["status"] == "completed"
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (5, 1)
    lines = await results(service, batch["id"])
    [failed] = [line for line in lines if line["status"] == "failed"]
    assert failed["error"]["message"].endswith("bad")
    _, failed_jobs = await service.get(f"/v1/batches/{batch['id']}/jobs?status=failed")
    assert [job["id"] for job in failed_jobs["data"]] == [failed["job_id"]]


@pytest.fixture
async def narrow_window(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    async with RunningService(
        settings.model_copy(update={"batch_window": 3, "allow_private_urls": True}), providers
    ) as running:
        yield running


async def test_cancel_mid_way_keeps_counts_exact(
    narrow_window: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.3
    _, batch = await narrow_window.post("/v1/batches", body=batch_body(n=40))
    for _ in range(200):
        _, current = await narrow_window.get(f"/v1/batches/{batch['id']}")
        if current["counts"]["succeeded"] >= 4:
            break
        await asyncio.sleep(0.05)
    status, _ = await narrow_window.post(f"/v1/batches/{batch['id']}/cancel")
    assert status == 200
    done = await wait_batch(narrow_window, batch["id"])
    assert done["status"] == "canceled"
    counts = done["counts"]
    assert counts["queued"] == counts["running"] == 0
    assert counts["succeeded"] + counts["canceled"] + counts["failed"] == 40
    assert counts["succeeded"] >= 4 and counts["canceled"] >= 20
    lines = await results(narrow_window, batch["id"])
    by_status: dict[str, int] = {}
    for line in lines:
        by_status[line["status"]] = by_status.get(line["status"], 0) + 1
    assert by_status == {k: v for k, v in counts.items() if v}  # records agree with counts
    await asyncio.sleep(0.5)
    assert len(fake_upstream.requests) <= counts["succeeded"] + 3  # nothing ran after cancel
    status, again = await narrow_window.post(f"/v1/batches/{batch['id']}/cancel")
    assert (status, again["error"]["code"]) == (409, "conflict")


async def test_queued_variants_show_a_queue_position(
    narrow_window: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 5
    _, batch = await narrow_window.post("/v1/batches", body=batch_body(n=10))
    _, page = await narrow_window.get(f"/v1/batches/{batch['id']}/jobs?status=queued&limit=100")
    last = page["data"][-1]
    _, job = await narrow_window.get(f"/v1/jobs/{last['id']}")
    assert job["status"] == "queued"
    assert isinstance(job["queue_position"], int) and job["queue_position"] >= 1
    await narrow_window.post(f"/v1/batches/{batch['id']}/cancel")


async def test_batch_completed_webhook_is_verified(
    narrow_window: RunningService,
) -> None:
    async with WebhookReceiver() as receiver:
        body = batch_body(n=4, webhook_url=receiver.url(), webhook_events=["batch.completed"])
        _, batch = await narrow_window.post("/v1/batches", body=body)
        await wait_batch(narrow_window, batch["id"])
        [delivery] = await receiver.wait_for(1)
        _, secret = await narrow_window.get("/v1/webhooks/secret")
        event = Webhook(secret["secret"]).verify(delivery.body, delivery.headers)
        assert event["type"] == "batch.completed"
        assert event["data"]["id"] == batch["id"]
        assert event["data"]["counts"]["succeeded"] == 4
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 1  # no per-job events unless asked


async def test_per_job_events_when_asked_as_well(narrow_window: RunningService) -> None:
    async with WebhookReceiver() as receiver:
        body = batch_body(
            n=3, webhook_url=receiver.url(), webhook_events=["batch.completed", "job.succeeded"]
        )
        await narrow_window.post("/v1/batches", body=body)
        deliveries = await receiver.wait_for(4)
        kinds = sorted(json.loads(d.body)["type"] for d in deliveries)
        assert kinds == ["batch.completed", "job.succeeded", "job.succeeded", "job.succeeded"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (batch_body([{"prompt": "ok"}, {"size": "huge"}]), "variants[1].size"),
        (batch_body([{"model": "nobody/unknown"}]), "variants[0].model"),
        (batch_body([{"prompt": "x"}], n=3), "n"),
        (batch_body(n=0), "n"),
        (batch_body([]), "variants"),
        (batch_body(["not an object"]), "variants[0]"),  # type: ignore[list-item]
        ({"variants": [{"prompt": "x"}]}, "defaults"),
        ({"defaults": {"model": "local/editor", "prompt": "x"}, "n": 2}, "defaults.images"),
        (batch_body(n=2, webhook_url="http://127.0.0.1/x"), "webhook_url"),
        # The batch's metadata has the same caps as a job's (one definition for both).
        (batch_body(n=1, metadata={"k": "x" * 513}), "metadata"),
        (batch_body(n=1, metadata={"k" * 65: "v"}), "metadata"),
        (batch_body(n=1, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ],
)
async def test_bad_batches_are_refused_with_the_param(
    service: RunningService, body: dict[str, Any], param: str
) -> None:
    status, answer = await service.post("/v1/batches", body=body)
    assert status == 400, answer
    assert answer["error"]["param"] == param


async def test_too_many_variants(settings: Settings, providers: ProvidersConfig) -> None:
    small = RunningService(settings.model_copy(update={"max_batch_variants": 5}), providers)
    await small.start(worker=False)
    try:
        status, answer = await small.post("/v1/batches", body=batch_body(n=6))
        assert (status, answer["error"]["param"]) == (400, "n")
    finally:
        await small.stop()


async def test_another_key_cannot_see_or_cancel_a_batch(service: RunningService) -> None:
    _, batch = await service.post("/v1/batches", body=batch_body(n=2))
    for path in ("", "/jobs", "/results"):
        status, _ = await service.get(f"/v1/batches/{batch['id']}{path}", key="key-b")
        assert status == 404
    status, _ = await service.post(f"/v1/batches/{batch['id']}/cancel", key="key-b")
    assert status == 404
    _, listing = await service.get("/v1/batches", key="key-b")
    assert listing["data"] == []
    _, mine = await service.get("/v1/batches")
    assert [b["id"] for b in mine["data"]] == [batch["id"]]
