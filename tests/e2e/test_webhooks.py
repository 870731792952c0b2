"""Webhooks end to end: a real receiver verifies every delivery with the
``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.receiver import Received, WebhookReceiver
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.service import RunningService


@pytest.fixture
async def hooked(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The service with private URLs allowed (the receiver is on localhost) and a
    compressed retry schedule."""
    tuned = settings.model_copy(
        update={"allow_private_urls": True, "webhook_retry_schedule": "0,0.3,0.3,0.3"}
    )
    async with RunningService(tuned, providers) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as running:
        yield running


async def _verify(service: RunningService, delivery: Received, key: str = "key-a") -> Any:
    _, secret = await service.get("/v1/webhooks/secret", key=key)
    assert secret["secret"].startswith("whsec_")
    return Webhook(secret["secret"]).verify(delivery.body, delivery.headers)


async def test_a_succeeded_job_sends_a_verified_event(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    await hooked.wait(job["id"])
    [delivery] = await receiver.wait_for(1)
    event = await _verify(hooked, delivery)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["result"]["data"][0]["url"].startswith("http")
    assert "b64_json" not in delivery.body.decode()
    assert len(delivery.body) < 20_000
    assert delivery.headers["webhook-id"].startswith("evt_")


async def test_failed_and_canceled_jobs_send_their_events(
    hooked: RunningService, receiver: WebhookReceiver, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(400))
    _, failing, _ = await hooked.submit(model="fake/gpt-image-1", webhook_url=receiver.url())
    assert (await hooked.wait(failing["id"]))["status"] == "failed"
    fake_upstream.latency_s = 60
    _, slow, _ = await hooked.submit(model="fake/gpt-image-1", webhook_url=receiver.url())
    await hooked.wait_for_status(slow["id"], "running")
    await hooked.post(f"/v1/jobs/{slow['id']}/cancel")
    deliveries = await receiver.wait_for(2)
    events = {(await _verify(hooked, d))["type"]: d for d in deliveries}
    assert set(events) == {"job.failed", "job.canceled"}
    failed = json.loads(events["job.failed"].body)
    assert failed["data"]["error"]["type"] == "upstream_error"


async def test_500_twice_then_200_arrives_on_the_third_attempt_with_one_id(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    receiver.answer_next(500)
    receiver.answer_next(500)
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    deliveries = await receiver.wait_for(3)
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    for delivery in deliveries:
        await _verify(hooked, delivery)
    _, log = await hooked.get(f"/v1/jobs/{job['id']}/deliveries")
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in log["data"]] == [
        (1, 500, "retrying"),
        (2, 500, "retrying"),
        (3, 200, "delivered"),
    ]
    assert log["events"][0]["state"] == "delivered"


async def test_a_redirect_is_a_failure_and_not_followed(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    for _ in range(4):
        receiver.answer_next(301)
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    await receiver.wait_for(4)
    assert all(d.path == "/hook" for d in receiver.received)  # /elsewhere never asked
    _, log = await _settled(hooked, job["id"])
    assert [a["outcome"] for a in log["data"]] == ["retrying"] * 3 + ["failed"]
    assert log["events"][0]["state"] == "failed"
    _, after = await hooked.get(f"/v1/jobs/{job['id']}")
    assert after["status"] == "succeeded"  # the job itself is untouched


async def test_410_stops_delivery_to_that_url(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    receiver.answer_next(410)
    _, first, _ = await hooked.submit(webhook_url=receiver.url())
    await receiver.wait_for(1)
    _, log = await _settled(hooked, first["id"])
    assert [(a["status_code"], a["outcome"]) for a in log["data"]] == [(410, "failed")]
    _, second, _ = await hooked.submit(webhook_url=receiver.url())
    _, log = await _settled(hooked, second["id"])
    assert log["data"][0]["outcome"] == "failed"
    assert "410" in log["data"][0]["error"]
    assert len(receiver.received) == 1


async def test_the_event_filter_is_respected(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, job, _ = await hooked.submit(webhook_url=receiver.url(), webhook_events=["job.running"])
    await hooked.wait(job["id"])
    [delivery] = await receiver.wait_for(1)
    assert (await _verify(hooked, delivery))["type"] == "job.running"
    _, log = await _settled(hooked, job["id"])
    assert [e["type"] for e in log["events"]] == ["job.running"]


async def test_redeliver_sends_the_same_event_again(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    await receiver.wait_for(1)
    await _settled(hooked, job["id"])
    status, event = await hooked.post(f"/v1/jobs/{job['id']}/deliveries/redeliver")
    assert (status, event["state"]) == (202, "pending")
    first, again = await receiver.wait_for(2)
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == event["id"]
    await _verify(hooked, again)
    status, body = await hooked.post(
        f"/v1/jobs/{job['id']}/deliveries/redeliver", body={"event_id": "evt_nope"}
    )
    assert (status, body["error"]["param"]) == (404, "event_id")


async def test_a_redeliver_body_that_is_not_an_object_sends_nothing(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    await receiver.wait_for(1)
    await _settled(hooked, job["id"])
    for body in (["evt_nope"], "evt_nope", 3):
        status, answer = await hooked.post(f"/v1/jobs/{job['id']}/deliveries/redeliver", body=body)
        assert (status, answer["error"]["type"]) == (400, "invalid_request_error"), answer
    _, log = await hooked.get(f"/v1/jobs/{job['id']}/deliveries")
    assert [(e["state"], e["attempts"]) for e in log["events"]] == [("delivered", 1)]
    assert len(receiver.received) == 1


async def test_retry_after_on_429_is_honoured(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    receiver.answer_next(429, {"Retry-After": "1"})
    await hooked.submit(webhook_url=receiver.url())
    first, second = await receiver.wait_for(2)
    assert second.at - first.at >= 0.95


async def test_another_key_sees_no_deliveries_and_its_own_secret(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, job, _ = await hooked.submit(webhook_url=receiver.url())
    status, _ = await hooked.get(f"/v1/jobs/{job['id']}/deliveries", key="key-b")
    assert status == 404
    _, mine = await hooked.get("/v1/webhooks/secret")
    _, theirs = await hooked.get("/v1/webhooks/secret", key="key-b")
    _, mine_again = await hooked.get("/v1/webhooks/secret")
    assert mine["secret"] == mine_again["secret"] != theirs["secret"]


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("http://127.0.0.1:9/hook", "webhook_url"),
        ("http://169.254.169.254/latest/meta-data", "webhook_url"),
        ("file:///etc/passwd", "webhook_url"),
        ("gopher://example.com/", "webhook_url"),
    ],
)
async def test_private_and_odd_webhook_urls_are_refused_at_submit(
    service: RunningService, url: str, param: str
) -> None:
    status, body, _ = await service.submit(webhook_url=url)
    assert status == 400, body
    assert body["error"]["param"] == param


async def _settled(service: RunningService, job_id: str) -> tuple[int, dict[str, Any]]:
    """The deliveries log once no event is pending any more."""
    for _ in range(200):
        status, log = await service.get(f"/v1/jobs/{job_id}/deliveries")
        if log["events"] and all(e["state"] != "pending" for e in log["events"]):
            return status, log
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries of {job_id} never settled: {log}")


ROOT_SECRET = "whsec_" + "cm9vdC1zZWNyZXQtb2YtdGhlLW9wZXJhdG9y"


@pytest.fixture
async def rooted(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The service with a configured root secret (EDITQ_WEBHOOK_SECRET)."""
    tuned = settings.model_copy(
        update={"allow_private_urls": True, "webhook_secret": SecretStr(ROOT_SECRET)}
    )
    async with RunningService(tuned, providers) as running:
        yield running


async def test_a_root_secret_gives_every_key_its_own_secret_and_never_itself(
    rooted: RunningService, receiver: WebhookReceiver
) -> None:
    _, mine = await rooted.get("/v1/webhooks/secret", key="key-a")
    _, theirs = await rooted.get("/v1/webhooks/secret", key="key-b")
    assert mine["secret"] != theirs["secret"]
    assert ROOT_SECRET not in (mine["secret"], theirs["secret"])
    _, job, _ = await rooted.submit(webhook_url=receiver.url())
    await rooted.wait(job["id"])
    [delivery] = await receiver.wait_for(1)
    assert Webhook(mine["secret"]).verify(delivery.body, delivery.headers)["type"] == (
        "job.succeeded"
    )
    # Another tenant's secret (and the root) cannot produce or check a key's events.
    for other in (theirs["secret"], ROOT_SECRET):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(delivery.body, delivery.headers)


def _signatures(delivery: Received) -> list[str]:
    return delivery.headers["webhook-signature"].split(" ")


def _accepts(secret: str, delivery: Received) -> bool:
    """Whether a receiver holding ``secret`` accepts the delivery."""
    try:
        Webhook(secret).verify(delivery.body, delivery.headers)
    except WebhookVerificationError:
        return False
    return True


async def _delivered(service: RunningService, receiver: WebhookReceiver, key: str) -> Received:
    """The delivery of a new job's ``job.succeeded`` event."""
    seen = len(receiver.received)
    _, job, _ = await service.submit(key=key, webhook_url=receiver.url(f"/{key}"))
    await service.wait(job["id"], key=key)
    delivery = (await receiver.wait_for(seen + 1))[seen]
    assert json.loads(delivery.body)["data"]["id"] == job["id"]
    return delivery


async def test_a_rotated_secret_signs_next_to_the_old_one_until_that_expires(
    hooked: RunningService, receiver: WebhookReceiver
) -> None:
    _, old = await hooked.get("/v1/webhooks/secret")
    _, theirs = await hooked.get("/v1/webhooks/secret", key="key-b")
    assert old["previous_expires_at"] is None
    status, new = await hooked.post("/v1/webhooks/secret/rotate")
    assert status == 200, new
    assert new["secret"] not in (old["secret"], theirs["secret"])
    assert new["secret"].startswith("whsec_")
    asked_at = time.time()
    assert asked_at - 60 < new["previous_expires_at"] - 24 * 3600 <= asked_at  # the default
    _, shown = await hooked.get("/v1/webhooks/secret")
    assert shown == new

    delivery = await _delivered(hooked, receiver, "key-a")
    assert len(_signatures(delivery)) == 2  # receivers with either secret accept it
    assert _accepts(new["secret"], delivery) and _accepts(old["secret"], delivery)
    assert not _accepts(theirs["secret"], delivery)

    # Another key's secret and signatures are untouched by this key's rotation.
    _, still_theirs = await hooked.get("/v1/webhooks/secret", key="key-b")
    assert still_theirs == theirs
    delivery = await _delivered(hooked, receiver, "key-b")
    assert len(_signatures(delivery)) == 1
    assert _accepts(theirs["secret"], delivery)

    # A rotation that expires the replaced secret at once: only the newest signs.
    status, newest = await hooked.post(
        "/v1/webhooks/secret/rotate", body={"expire_previous_in_s": 0}
    )
    assert status == 200, newest
    assert newest["previous_expires_at"] is None
    delivery = await _delivered(hooked, receiver, "key-a")
    assert len(_signatures(delivery)) == 1
    assert _accepts(newest["secret"], delivery)
    assert not _accepts(new["secret"], delivery) and not _accepts(old["secret"], delivery)


async def test_a_rotation_with_a_root_derives_a_new_secret_for_that_key_only(
    rooted: RunningService, receiver: WebhookReceiver
) -> None:
    _, mine = await rooted.get("/v1/webhooks/secret", key="key-a")
    _, theirs = await rooted.get("/v1/webhooks/secret", key="key-b")
    status, new = await rooted.post(
        "/v1/webhooks/secret/rotate", body={"expire_previous_in_s": 3600}
    )
    assert status == 200, new
    assert new["secret"] not in (mine["secret"], theirs["secret"], ROOT_SECRET)
    assert (await rooted.get("/v1/webhooks/secret", key="key-b"))[1] == theirs
    delivery = await _delivered(rooted, receiver, "key-a")
    assert _accepts(new["secret"], delivery) and _accepts(mine["secret"], delivery)
    for other in (theirs["secret"], ROOT_SECRET):
        assert not _accepts(other, delivery)
    delivery = await _delivered(rooted, receiver, "key-b")
    assert _signatures(delivery) == [
        Webhook(theirs["secret"]).sign(
            delivery.headers["webhook-id"],
            datetime.fromtimestamp(int(delivery.headers["webhook-timestamp"]), tz=UTC),
            delivery.body,
        )
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expire_previous_in_s": -1}, "expire_previous_in_s"),
        ({"expire_previous_in_s": 7 * 24 * 3600 + 1}, "expire_previous_in_s"),
        ({"expire_previous_in_s": "3600"}, "expire_previous_in_s"),
        ({"expire_previous_in_s": 1.5}, "expire_previous_in_s"),
        ({"expire_previous_in_s": True}, "expire_previous_in_s"),
        ({"expire_previous_in_s": None}, "expire_previous_in_s"),
        ([3600], None),
    ],
)
async def test_a_bad_rotation_is_refused_and_keeps_the_secret(
    api_only: RunningService, body: Any, param: str | None
) -> None:
    _, before = await api_only.get("/v1/webhooks/secret")
    status, answer = await api_only.post("/v1/webhooks/secret/rotate", body=body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    _, after = await api_only.get("/v1/webhooks/secret")
    assert after == before
