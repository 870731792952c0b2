"""Per-key rate limits on the real service: headers on every authenticated answer,
429 with Retry-After once over, and one key's traffic never limits another's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDictProxy

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.images import data_url, png
from tests.support.service import RunningService

LIMIT = 3


@pytest.fixture
async def limited(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API (no worker) allowing LIMIT requests a minute per key."""
    async with RunningService(
        settings.model_copy(update={"rate_limit_per_minute": LIMIT}), providers, worker=False
    ) as running:
        yield running


async def _get(
    service: RunningService, path: str, headers: dict[str, str]
) -> tuple[int, CIMultiDictProxy[str], dict[str, object]]:
    async with service.client.get(service.url(path), headers=headers) as response:
        return response.status, response.headers, await response.json()


def _quota(headers: CIMultiDictProxy[str]) -> tuple[str | None, str | None]:
    return headers.get("X-RateLimit-Limit"), headers.get("X-RateLimit-Remaining")


async def test_the_limit_holds_per_key_with_headers_and_retry_after(
    limited: RunningService,
) -> None:
    seen = [await _get(limited, "/v1/models", limited.auth("key-a")) for _ in range(LIMIT)]
    assert [status for status, _, _ in seen] == [200] * LIMIT
    assert [_quota(headers) for _, headers, _ in seen] == [("3", "2"), ("3", "1"), ("3", "0")]

    status, headers, body = await _get(limited, "/v1/models", limited.auth("key-a"))
    assert status == 429, body
    assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert _quota(headers) == ("3", "0")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-request-id"]

    status, headers, _ = await _get(limited, "/v1/models", limited.auth("key-b"))
    assert (status, _quota(headers)) == (200, ("3", "2"))


async def test_every_authenticated_answer_carries_the_quota(limited: RunningService) -> None:
    status, job, response = await limited.submit()
    assert status == 202, job
    assert _quota(response.headers) == ("3", "2")
    status, headers, _ = await _get(limited, "/v1/jobs/job_missing", limited.auth())
    assert (status, _quota(headers)) == (404, ("3", "1"))
    batch_body = {
        "defaults": {"model": "local/editor", "prompt": "x", "images": [data_url(png())]},
        "n": 2,
    }
    status, batch = await limited.post("/v1/batches", key="key-b", body=batch_body)
    assert status == 202, batch
    async with limited.client.get(
        limited.url(f"/v1/batches/{batch['id']}/results"), headers=limited.auth("key-b")
    ) as streamed:  # a streamed answer
        assert streamed.content_type == "application/jsonl"
        assert (streamed.status, _quota(streamed.headers)) == (200, ("3", "1"))


@pytest.mark.parametrize(("path", "key"), [("/healthz", None), ("/v1/models", "nobody")])
async def test_unauthenticated_answers_are_neither_counted_nor_labelled(
    limited: RunningService, path: str, key: str | None
) -> None:
    headers = limited.auth(key) if key else {}
    for _ in range(LIMIT + 1):
        status, answer, _ = await _get(limited, path, headers)
        assert status in (200, 401)
        assert _quota(answer) == (None, None)
    status, answer, _ = await _get(limited, "/v1/models", limited.auth())
    assert (status, _quota(answer)) == (200, ("3", "2"))
