"""The BFL adapter against the fake BFL API, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import (
    ContentFiltered,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from tests.support.adapters import poll_until_done, upstream_config
from tests.support.fakes.bfl import FakeBfl
from tests.support.images import decode, mask, png
from worker.providers.base import (
    EditCall,
    EditOutput,
    InputImage,
    PollFailed,
    PollPending,
    UpstreamHandle,
)
from worker.providers.bfl import BflUpstream, aspect_ratio, regional_host
from worker.providers.registry import build_async_upstream

MODEL = "flux-kontext-pro"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBfl]:
    async with FakeBfl(processing_s=0.2) as server:
        yield server


def bfl(fake: FakeBfl, session: aiohttp.ClientSession, *, key: str = "bfl-key") -> BflUpstream:
    return BflUpstream(upstream_config("bfl", fake.base_url, key), session)


ENTRY = ModelConfig(id="bfl/kontext", upstream="bfl", upstream_model=MODEL, max_images=2)


def call(**changes: Any) -> EditCall:
    fields: dict[str, Any] = {
        "model": MODEL,
        "prompt": "invert it",
        "images": (InputImage(png(), "image/png"),),
        "timeout_s": 10.0,
        "model_entry": ENTRY,
    }
    return EditCall(**(fields | changes))


async def test_submit_then_poll_downloads_the_edited_image(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    adapter = bfl(fake, session)
    handle = await adapter.submit(call(size="1536x1024", output_format="jpeg"))
    assert fake.submissions == 1
    task = fake.tasks[handle.request_id]
    assert task.body["aspect_ratio"] == "3:2"
    assert task.body["output_format"] == "jpeg"
    assert handle.poll_url.startswith(fake.base_url)
    assert isinstance(await adapter.poll(handle), PollPending)
    result = await poll_until_done(adapter, handle)
    assert isinstance(result, EditOutput)
    image = decode(result.image).convert("RGB")
    assert image.size == (64, 48)
    red, green, _ = image.getpixel((2, 2))  # type: ignore[misc]
    assert red < 80 and green > 180  # (200, 40, 40) inverted, through JPEG
    assert fake.downloads == 1 and fake.in_flight == 0


async def test_extra_images_and_a_mask_are_sent_as_numbered_input_images(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    adapter = bfl(fake, session)
    handle = await adapter.submit(
        call(images=(InputImage(png(), "image/png"),), mask=InputImage(mask(), "image/png"))
    )
    body = fake.tasks[handle.request_id].body
    assert set(body) >= {"input_image", "input_image_2"}
    assert "mask" in body["prompt"].lower()


async def test_more_images_than_the_model_takes_are_refused_before_sending(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    images = tuple(InputImage(png(), "image/png") for _ in range(3))
    with pytest.raises(UpstreamRejected, match="at most 2"):
        await bfl(fake, session).submit(call(images=images))
    assert fake.submissions == 0


async def test_an_input_url_is_sent_instead_of_bytes(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    # The fake fetches it itself: serve the image from the fake's own delivery of a task.
    adapter = bfl(fake, session)
    first = await adapter.submit(call())
    done = await poll_until_done(adapter, first)
    assert isinstance(done, EditOutput)
    task = fake.tasks[first.request_id]
    url = f"{fake.base_url}/delivery/{task.id}/{task.signature}/sample.png"
    handle = await adapter.submit(call(images=(InputImage(b"", "image/png", url=url),)))
    assert fake.tasks[handle.request_id].body["input_image"] == url
    assert fake.tasks[handle.request_id].images[0] == done.image


@pytest.mark.parametrize("outcome", ["Request Moderated", "Content Moderated"])
async def test_moderation_is_a_final_content_filtered_failure(
    fake: FakeBfl, session: aiohttp.ClientSession, outcome: str
) -> None:
    fake.moderate_next(outcome)
    adapter = bfl(fake, session)
    result = await poll_until_done(adapter, await adapter.submit(call()))
    assert isinstance(result, PollFailed)
    assert isinstance(result.error, ContentFiltered)
    assert result.error.code == "content_filtered"
    assert fake.in_flight == 0


async def test_an_error_status_fails_the_edit_retryably(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    fake.moderate_next("Error")
    adapter = bfl(fake, session)
    result = await poll_until_done(adapter, await adapter.submit(call()))
    assert isinstance(result, PollFailed)
    assert type(result.error) is UpstreamError


async def test_an_unknown_task_is_a_lost_edit(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    handle = UpstreamHandle("nope", f"{fake.base_url}/v1/get_result?id=nope")
    result = await bfl(fake, session).poll(handle)
    assert isinstance(result, PollFailed)
    assert result.error.code == "upstream_task_lost"


async def test_an_expired_result_url_fails_the_edit(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    fake.result_ttl_s = 0.0
    adapter = bfl(fake, session)
    handle = await adapter.submit(call())
    await asyncio.sleep(0.3)
    result = await adapter.poll(handle)
    assert isinstance(result, PollFailed)
    assert result.error.code == "upstream_result_expired"
    assert result.error.upstream_status == 403


async def test_a_429_carries_its_retry_after(fake: FakeBfl, session: aiohttp.ClientSession) -> None:
    fake.fail_next(429, retry_after="7")
    with pytest.raises(UpstreamRateLimited) as caught:
        await bfl(fake, session).submit(call())
    assert caught.value.retry_after == 7.0
    assert fake.submissions == 0 and fake.refused == 1


async def test_a_failed_status_request_raises_so_it_is_asked_again(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    adapter = bfl(fake, session)
    handle = await adapter.submit(call())
    fake.fail_polls_next(503)
    with pytest.raises(UpstreamError) as caught:
        await adapter.poll(handle)
    assert caught.value.upstream_status == 503
    assert isinstance(await poll_until_done(adapter, handle), EditOutput)
    assert fake.submissions == 1


async def test_a_wrong_key_is_an_auth_failure(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        await bfl(fake, session, key="wrong").submit(call())
    assert caught.value.code == "upstream_auth_failed"


async def test_bfl_has_no_cancel(fake: FakeBfl, session: aiohttp.ClientSession) -> None:
    adapter = bfl(fake, session)
    assert await adapter.cancel(await adapter.submit(call())) is False


async def test_the_registry_builds_an_async_adapter(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    config = UpstreamConfig(name="bfl", kind="bfl", base_url=fake.base_url)
    assert isinstance(build_async_upstream(config, session), BflUpstream)


async def test_a_poll_url_elsewhere_is_not_sent_the_key(
    fake: FakeBfl, session: aiohttp.ClientSession
) -> None:
    elsewhere = UpstreamHandle("x", "http://127.0.0.1:9/v1/get_result?id=x")
    with pytest.raises(UpstreamBadResponse, match="pointed elsewhere"):
        await bfl(fake, session).poll(elsewhere)


def test_the_key_goes_to_bfl_and_its_regional_hosts_only() -> None:
    assert regional_host("https://api.us1.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai")
    assert not regional_host("https://evil.example/v1/get_result", "https://api.bfl.ai")
    assert not regional_host("http://api.us1.bfl.ai/x", "https://api.bfl.ai")
    assert not regional_host("https://127.0.0.2/x", "https://127.0.0.1")


def test_aspect_ratio_reduces_sizes() -> None:
    assert aspect_ratio("1024x1024") == "1:1"
    assert aspect_ratio("1024x1536") == "2:3"
    assert aspect_ratio("auto") is None
    assert aspect_ratio(None) is None
