"""At-least-once: a worker killed in the middle of a delivery does not lose the event."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from app.core.providers_config import load_providers
from app.settings import Settings
from tests.support.fakes.receiver import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.service import RunningService

pytestmark = pytest.mark.slow


@pytest.fixture
def crash_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"allow_private_urls": True, "webhook_claim_lease_s": 2.0})


@pytest.fixture
async def api(crash_settings: Settings) -> AsyncIterator[RunningService]:
    async with RunningService(
        crash_settings, load_providers(None, os.environ), worker=False
    ) as running:
        yield running


async def test_a_worker_killed_mid_delivery_does_not_lose_the_event(
    api: RunningService, crash_settings: Settings, tmp_path: Path
) -> None:
    async with WebhookReceiver() as receiver:
        receiver.answer_next(200, delay_s=30)  # the first POST hangs
        doomed = WorkerProcess(crash_settings, tmp_path / "doomed.log").start()
        rescuer = WorkerProcess(crash_settings, tmp_path / "rescuer.log")
        try:
            _, job, _ = await api.submit(webhook_url=receiver.url())
            await receiver.wait_for(1)
            doomed.kill()
            rescuer.start()
            first, second = await receiver.wait_for(2, timeout_s=30)
            assert first.headers["webhook-id"] == second.headers["webhook-id"]
            _, secret = await api.get("/v1/webhooks/secret")
            event = Webhook(secret["secret"]).verify(second.body, second.headers)
            assert (event["type"], event["data"]["id"]) == ("job.succeeded", job["id"])
        finally:
            doomed.stop()
            rescuer.stop()
