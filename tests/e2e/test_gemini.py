"""A ``gemini`` upstream end to end: ``POST /v1/jobs`` with a real worker, Redis and S3
server, and the fake Gemini API over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from tests.support.fakes.gemini import FakeGemini, google_error, withheld
from tests.support.images import decode, png
from tests.support.service import RunningService

KEY = "gemini-e2e-key"
MODEL = "gemini/flash-image"
OTHER_MODEL = "gemini/pro-image"


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def gemini_service(settings: Settings, gemini: FakeGemini) -> AsyncIterator[RunningService]:
    """The API and one worker, with two models on the fake Gemini API."""
    providers = ProvidersConfig(
        upstreams=(
            UpstreamConfig(
                name="gemini",
                kind="gemini",
                base_url=gemini.base_url,
                api_key=SecretStr(KEY),
                max_concurrency=4,
            ),
        ),
        models=(
            ModelConfig(id=MODEL, upstream="gemini", upstream_model="gemini-2.5-flash-image"),
            ModelConfig(
                id=OTHER_MODEL, upstream="gemini", upstream_model="gemini-3-pro-image-preview"
            ),
        ),
    )
    async with RunningService(settings, providers) as running:
        yield running


async def test_an_edit_succeeds_with_the_fakes_image_and_its_usage(
    gemini_service: RunningService, gemini: FakeGemini
) -> None:
    status, job, _ = await gemini_service.submit(
        model=MODEL, images=[png(64, 48)], prompt="invert it", output_format="webp"
    )
    assert status == 202, job
    done = await gemini_service.wait(job["id"])
    assert done["status"] == "succeeded", done

    [request] = gemini.requests
    assert (request.model, request.prompt) == ("gemini-2.5-flash-image", "invert it")
    assert request.headers["x-goog-api-key"] == KEY
    image = decode(await gemini_service.download(done["result"]["data"][0]["url"]))
    assert (image.format, image.size) == ("WEBP", (64, 48))
    corner = image.convert("RGB").getpixel((2, 2))
    assert isinstance(corner, tuple)
    assert all(abs(a - b) <= 8 for a, b in zip(corner, (55, 215, 215), strict=True))  # inverted
    usage = done["result"]["usage"]
    assert usage["input_tokens_details"]["image_tokens"] == 258
    assert usage["output_tokens"] >= 1290
    assert [a["status"] for a in done["attempts"]] == [200]


async def test_a_safety_finish_reason_fails_the_job_content_filtered_after_one_call(
    gemini_service: RunningService, gemini: FakeGemini
) -> None:
    gemini.fail_next(withheld("SAFETY"))
    _, job, _ = await gemini_service.submit(
        model=MODEL,
        retry={"count": 3, "on_codes": [200, 400, 429, 500]},
        fallbacks=[{"model": OTHER_MODEL}],
    )
    done = await gemini_service.wait(job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "content_filtered"
    assert "SAFETY" in done["error"]["message"]
    assert len(gemini.requests) == 1  # neither retried nor sent to the fallback
    assert len(done["attempts"]) == 1


async def test_a_429_with_a_retry_delay_is_retried_per_the_requests_routing(
    gemini_service: RunningService, gemini: FakeGemini
) -> None:
    gemini.fail_next(google_error(429, "Resource has been exhausted", retry_delay="2s"))
    _, job, _ = await gemini_service.submit(model=MODEL, retry={"count": 2})
    done = await gemini_service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert [(a["status"], a["next_action"]) for a in done["attempts"]] == [
        (429, "retry"),
        (200, None),
    ]
    first, second = gemini.calls_started
    assert second - first >= 2.0  # RetryInfo.retryDelay was honoured


async def test_a_429_without_a_retry_in_the_routing_fails_the_job(
    gemini_service: RunningService, gemini: FakeGemini
) -> None:
    gemini.fail_next(google_error(429, retry_delay="1s"))
    _, job, _ = await gemini_service.submit(model=MODEL)
    done = await gemini_service.wait(job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "rate_limit_exceeded"
    assert len(gemini.requests) == 1


async def test_a_key_gemini_refuses_fails_the_job_upstream_auth_failed(
    gemini_service: RunningService, gemini: FakeGemini
) -> None:
    gemini.api_key = "another-key"
    _, job, _ = await gemini_service.submit(model=MODEL, retry={"count": 2})
    done = await gemini_service.wait(job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "upstream_auth_failed"
    assert len(gemini.requests) == 1
