"""Routing knobs end to end: retries, Retry-After, fallbacks, call timeouts, the
attempt budget, the exact-match cache and the shared 429 cool-down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import png
from tests.support.service import RunningService


def _calls(job: dict[str, object]) -> list[tuple[str, int | None, str | None]]:
    attempts = job["attempts"]
    assert isinstance(attempts, list)
    return [(a["model"], a["status"], a["next_action"]) for a in attempts]


async def test_429_with_retry_after_is_honoured_then_succeeds(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(429, retry_after="2"))
    _, job, _ = await service.submit(model="fake/gpt-image-1", retry={"count": 2})
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert _calls(done) == [
        ("fake/gpt-image-1", 429, "retry"),
        ("fake/gpt-image-1", 200, None),
    ]
    first, second = fake_upstream.calls_started
    assert second - first >= 2.0


async def test_500_three_times_then_the_fallback_model(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(500), Fault.status(500), Fault.status(500))
    _, job, _ = await service.submit(
        model="fake/gpt-image-1",
        retry={"count": 2, "on_codes": [500]},
        fallbacks=[{"model": "fake/flux-kontext"}],
    )
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert _calls(done) == [
        ("fake/gpt-image-1", 500, "retry"),
        ("fake/gpt-image-1", 500, "retry"),
        ("fake/gpt-image-1", 500, "fallback"),
        ("fake/flux-kontext", 200, None),
    ]
    assert [r.model for r in fake_upstream.requests] == ["gpt-image-1"] * 3 + ["flux-kontext"]


async def test_fallback_codes_are_respected(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="no"))
    _, job, _ = await service.submit(
        model="fake/gpt-image-1", fallbacks=[{"model": "fake/flux-kontext"}]
    )
    done = await service.wait(job["id"])
    assert done["status"] == "failed"  # 400 is not in fallback_on_codes
    assert done["error"]["message"].endswith("no")
    assert len(fake_upstream.requests) == 1


async def test_a_hang_past_call_timeout_is_retried(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.hang(30))
    _, job, _ = await service.submit(
        model="fake/gpt-image-1", timeout={"call_timeout": 400}, retry={"count": 1}
    )
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert _calls(done) == [
        ("fake/gpt-image-1", None, "retry"),
        ("fake/gpt-image-1", 200, None),
    ]
    assert done["attempts"][0]["error_code"] == "upstream_timeout"
    assert 350 <= done["attempts"][0]["duration_ms"] < 5000


async def test_the_orq_object_carries_the_knobs(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(503))
    _, job, _ = await service.submit(
        model="fake/gpt-image-1",
        orq={"retry": {"count": 1, "on_codes": [503]}, "name": "trace"},
    )
    done = await service.wait(job["id"])
    assert [status for _, status, _ in _calls(done)] == [503, 200]


async def test_an_identical_request_is_answered_from_the_cache(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    image = png(40, 30)
    fields: dict[str, Any] = {
        "model": "fake/gpt-image-1",
        "prompt": "cache me",
        "cache": {"type": "exact_match"},
    }
    _, first, _ = await service.submit(images=[image], **fields)
    first_done = await service.wait(first["id"])
    assert (first_done["status"], first_done["cached"]) == ("succeeded", False)

    _, second, _ = await service.submit(images=[image], **fields)
    second_done = await service.wait(second["id"])
    assert (second_done["status"], second_done["cached"]) == ("succeeded", True)
    assert second_done["attempts"] == []
    assert len(fake_upstream.requests) == 1
    original = await service.download(first_done["result"]["data"][0]["url"])
    cached = await service.download(second_done["result"]["data"][0]["url"])
    assert cached == original
    assert second["id"] in second_done["result"]["data"][0]["url"]  # its own copy

    _, other_prompt, _ = await service.submit(images=[image], **{**fields, "prompt": "other"})
    assert (await service.wait(other_prompt["id"]))["cached"] is False
    _, other_key, _ = await service.submit(images=[image], key="key-b", **fields)
    assert (await service.wait(other_key["id"], key="key-b"))["cached"] is False
    assert len(fake_upstream.requests) == 3


async def test_a_429_cools_the_upstream_down_for_every_job(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(429, retry_after="2"))
    _, first, _ = await service.submit(model="fake/gpt-image-1", retry={"count": 1})
    await fake_upstream.wait_for_requests(1)
    await service.wait_for_status(first["id"], "running")
    for _ in range(50):  # until the 429 has been answered and the cool-down set
        if fake_upstream.requests[0].status == 429:
            break
        await fake_upstream.wait_for_requests(1)
    _, second, _ = await service.submit(model="fake/gpt-image-1")
    assert (await service.wait(second["id"]))["status"] == "succeeded"
    assert (await service.wait(first["id"]))["status"] == "succeeded"
    started = sorted(fake_upstream.calls_started)
    assert started[1] - started[0] >= 1.9  # the second job waited out the first's 429


@pytest.fixture
async def tight_budget(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    async with RunningService(
        settings.model_copy(update={"attempt_budget_s": 1.5}), providers
    ) as running:
        yield running


async def test_the_attempt_budget_ends_the_job_with_upstream_error(
    tight_budget: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 10
    _, job, _ = await tight_budget.submit(model="fake/gpt-image-1", retry={"count": 5})
    done = await tight_budget.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "upstream_error"
    assert "1.5-second budget" in done["error"]["message"]
    assert done["finished_at"] - done["started_at"] <= 3
