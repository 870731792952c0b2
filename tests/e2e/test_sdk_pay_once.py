"""One logical call, one job, one upstream call: the synchronous drop-in under the
official OpenAI SDK (sync and async) with its default retries (two) and timeouts.

The SDK retries a timeout, a 409 and any 5xx unless the answer says
``x-should-retry: false``; it marks every retry with ``x-stainless-retry-count`` and
every call with ``x-stainless-read-timeout``. The fake upstream takes ``EDIT_S`` per
edit, longer than the client's ``CLIENT_TIMEOUT_S``. orq's SDK, on
``/v2/router/images/edits``, does not retry by default and marks no retry: with
retries turned on, its ``Idempotency-Key`` ties them to the first call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import openai
import orq_ai_sdk
import pytest

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream
from tests.support.images import png
from tests.support.service import RunningService

UPSTREAM_MODEL = "fake/gpt-image-1"
OPENAI_PATH = "/v1/images/edits"
EDIT_S = 5.0
CLIENT_TIMEOUT_S = 2.0


def _headers(key: str | None, **extra: Any) -> dict[str, Any]:
    return {**({"Idempotency-Key": key} if key else {}), **extra}


async def sdk_edit(
    service: RunningService, *, sync: bool, timeout: float, headers: dict[str, Any]
) -> openai.types.ImagesResponse:
    """One ``images.edit`` through the SDK with its default retries: the sync client
    (in a thread) or the async one."""
    base_url, image = service.url("/v1"), ("a.png", png(), "image/png")
    if sync:

        def edit() -> openai.types.ImagesResponse:
            with openai.OpenAI(base_url=base_url, api_key="key-a") as sdk:
                return sdk.with_options(timeout=timeout).images.edit(
                    model=UPSTREAM_MODEL, image=image, prompt="x", extra_headers=headers
                )

        return await asyncio.to_thread(edit)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="key-a") as sdk:
        return await sdk.with_options(timeout=timeout).images.edit(
            model=UPSTREAM_MODEL, image=image, prompt="x", extra_headers=headers
        )


async def jobs_and_calls(service: RunningService, fake_upstream: FakeUpstream) -> list[str]:
    """The caller's job ids, once every one of them has finished (so that every
    upstream call they made has been made)."""
    _, listing = await service.get("/v1/jobs")
    ids = [str(job["id"]) for job in listing["data"]]
    for job_id in ids:
        await service.wait(job_id)
    return ids


@pytest.fixture
async def impatient(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API and a worker, with synchronous requests waiting at most half a second."""
    async with RunningService(
        settings.model_copy(update={"sync_wait_limit_s": 0.5}), providers
    ) as running:
        yield running


KEYED = pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "idempotency-key"])
CLIENTS = pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])


@KEYED
@CLIENTS
async def test_a_timeout_shorter_than_the_edit_answers_504_naming_the_one_job(
    service: RunningService, fake_upstream: FakeUpstream, sync: bool, keyed: bool
) -> None:
    fake_upstream.latency_s = EDIT_S
    headers = _headers(uuid.uuid4().hex if keyed else None)
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk_edit(service, sync=sync, timeout=CLIENT_TIMEOUT_S, headers=headers)
    answer = caught.value.response
    assert (answer.status_code, caught.value.code) == (504, "sync_wait_exceeded")
    assert answer.headers["x-should-retry"] == "false"
    job_id = answer.headers["x-job-id"]
    assert answer.request.headers["x-stainless-retry-count"] == "0"  # not retried
    assert await jobs_and_calls(service, fake_upstream) == [job_id]
    assert len(fake_upstream.requests) == 1
    assert (await service.wait(job_id))["status"] == "succeeded"


@KEYED
@CLIENTS
async def test_retries_after_an_unannounced_client_timeout_attach_to_the_running_job(
    service: RunningService, fake_upstream: FakeUpstream, sync: bool, keyed: bool
) -> None:
    # A client (or a proxy in front of it) that does not say when it gives up: every
    # attempt times out on the client's side and the SDK retries it.
    fake_upstream.latency_s = EDIT_S
    headers = _headers(
        uuid.uuid4().hex if keyed else None, **{"x-stainless-read-timeout": openai.omit}
    )
    try:
        result = await sdk_edit(service, sync=sync, timeout=CLIENT_TIMEOUT_S, headers=headers)
    except openai.APITimeoutError:
        pass  # the third attempt ended before the job did
    else:  # the third attempt, attached to the job, saw it finish
        assert result.data is not None and result.data[0].b64_json
    (job_id,) = await jobs_and_calls(service, fake_upstream)
    assert (await service.wait(job_id))["status"] == "succeeded"
    assert len(fake_upstream.requests) == 1


@KEYED
async def test_past_the_sync_limit_the_sdk_does_not_retry(
    impatient: RunningService, fake_upstream: FakeUpstream, keyed: bool
) -> None:
    fake_upstream.latency_s = 1.5
    headers = _headers(uuid.uuid4().hex if keyed else None)
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk_edit(impatient, sync=False, timeout=60, headers=headers)
    answer = caught.value.response
    assert caught.value.code == "sync_wait_exceeded"
    assert answer.headers["x-should-retry"] == "false"
    job_id = answer.headers["x-job-id"]
    assert await jobs_and_calls(impatient, fake_upstream) == [job_id]
    assert len(fake_upstream.requests) == 1


async def test_a_request_timeout_header_is_honoured(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = EDIT_S
    form = aiohttp.FormData()
    form.add_field("model", UPSTREAM_MODEL)
    form.add_field("prompt", "x")
    form.add_field("image", png(), filename="a.png", content_type="image/png")
    async with service.client.post(
        service.url(OPENAI_PATH),
        data=form,
        headers={**service.auth(), "Request-Timeout": str(CLIENT_TIMEOUT_S)},
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
    ) as reply:
        body = await reply.json()
        assert reply.status == 504, body
        assert body["error"]["code"] == "sync_wait_exceeded"
        assert reply.headers["x-should-retry"] == "false"
        job_id = reply.headers["x-job-id"]
    assert (await service.wait(job_id))["status"] == "succeeded"


async def test_a_first_call_without_a_key_is_never_merged_with_an_equal_one(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    # Two callers sending the same edit at once are two logical calls: only a request
    # the SDK marks as a retry is attached to an earlier one.
    fake_upstream.latency_s = 0.5
    await asyncio.gather(*(sdk_edit(service, sync=False, timeout=60, headers={}) for _ in range(2)))
    assert len(await jobs_and_calls(service, fake_upstream)) == 2
    assert len(fake_upstream.requests) == 2


def orq_edit(
    service: RunningService,
    *,
    timeout_s: float,
    headers: dict[str, str],
    retries: orq_ai_sdk.utils.RetryConfig | None = None,
) -> Any:
    """One edit through orq's SDK on ``/v2/router/images/edits`` (blocking: run it in a
    thread). Without ``retries`` the SDK's default applies: it does not retry."""
    with orq_ai_sdk.Orq(api_key="key-a", server_url=service.url("")) as orq:
        return orq.router.images.edits.create(
            model=UPSTREAM_MODEL,
            prompt="x",
            image={"file_name": "a.png", "content": png(), "content_type": "image/png"},
            timeout_ms=int(timeout_s * 1000),
            http_headers=headers,
            **({"retries": retries} if retries is not None else {}),
        )


@KEYED
async def test_the_orq_sdk_timing_out_leaves_one_job_and_one_upstream_call(
    service: RunningService, fake_upstream: FakeUpstream, keyed: bool
) -> None:
    fake_upstream.latency_s = EDIT_S
    headers = _headers(uuid.uuid4().hex if keyed else None)
    with pytest.raises(httpx.TimeoutException):
        await asyncio.to_thread(orq_edit, service, timeout_s=CLIENT_TIMEOUT_S, headers=headers)
    (job_id,) = await jobs_and_calls(service, fake_upstream)  # listed: the id is recoverable
    assert (await service.wait(job_id))["status"] == "succeeded"
    assert len(fake_upstream.requests) == 1


async def test_orq_sdk_retries_with_an_idempotency_key_attach_to_the_running_job(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    # orq's SDK retries timeouts only when told to, and does not mark its retries: the
    # Idempotency-Key is what ties them to the first call.
    fake_upstream.latency_s = EDIT_S
    retries = orq_ai_sdk.utils.RetryConfig(
        "backoff", orq_ai_sdk.utils.BackoffStrategy(100, 500, 1.5, 20_000), True
    )
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    result = await asyncio.to_thread(
        orq_edit, service, timeout_s=CLIENT_TIMEOUT_S, headers=headers, retries=retries
    )
    assert result.data and result.data[0].b64_json
    (job_id,) = await jobs_and_calls(service, fake_upstream)
    assert (await service.wait(job_id))["status"] == "succeeded"
    assert len(fake_upstream.requests) == 1


async def test_past_the_sync_limit_the_orq_sdk_learns_the_one_job(
    impatient: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.5
    with pytest.raises(orq_ai_sdk.models.OrqError) as caught:
        await asyncio.to_thread(orq_edit, impatient, timeout_s=60, headers={})
    assert caught.value.status_code == 504
    job_id = caught.value.headers["x-job-id"]
    assert await jobs_and_calls(impatient, fake_upstream) == [job_id]
    assert len(fake_upstream.requests) == 1
