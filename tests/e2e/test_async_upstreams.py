"""Jobs on an asynchronous upstream (the fake BFL API) end to end: submitted once, the
wait holding no worker slot, polled from any worker, canceled, crash-safe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from tests.support.fakes.bfl import FakeBfl
from tests.support.images import decode
from tests.support.service import RunningService

MODEL = "bfl/kontext"
CAP = 8


def bfl_providers(fake: FakeBfl, *, cap: int = CAP, **upstream: Any) -> ProvidersConfig:
    """One ``kind = "bfl"`` upstream at the fake, polled quickly."""
    fields: dict[str, Any] = {
        "name": "bfl",
        "kind": "bfl",
        "base_url": fake.base_url,
        "api_key": SecretStr("bfl-key"),
        "max_concurrency": cap,
        "poll_initial_s": 0.1,
        "poll_max_s": 0.5,
    }
    return ProvidersConfig(
        upstreams=(UpstreamConfig.model_validate(fields | upstream),),
        models=(ModelConfig(id=MODEL, upstream="bfl", upstream_model="flux-kontext-pro"),),
    )


@pytest.fixture
async def bfl() -> AsyncIterator[FakeBfl]:
    async with FakeBfl(processing_s=1.0) as fake:
        yield fake


@pytest.fixture
async def bfl_service(settings: Settings, bfl: FakeBfl) -> AsyncIterator[RunningService]:
    async with RunningService(settings, bfl_providers(bfl)) as running:
        yield running


async def test_an_edit_is_submitted_once_polled_and_stored(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    status, job, _ = await bfl_service.submit(model=MODEL)
    assert status == 202, job
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert bfl.submissions == 1 and bfl.downloads == 1
    assert bfl.polls >= 2  # it was pending at first
    [call] = done["attempts"]
    assert call["outcome"] == "succeeded"
    assert call["handle"] == {
        "request_id": next(iter(bfl.tasks)),
        "poll_url": None,
        "result_url": None,
        "cancel_url": None,
    }
    image = decode(await bfl_service.download(done["result"]["data"][0]["url"]))
    assert image.size == (64, 48)


async def test_moderation_fails_the_job_as_content_filtered_after_one_submission(
    bfl_service: RunningService, bfl: FakeBfl
) -> None:
    bfl.moderate_next("Content Moderated")
    _, job, _ = await bfl_service.submit(
        model=MODEL, routing={"retry": {"count": 3}, "fallback_on_codes": [502]}
    )
    done = await bfl_service.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_filtered"
    assert bfl.submissions == 1
