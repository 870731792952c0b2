"""Streamed synchronous edits (``stream=true``) in OpenAI's image edit event format,
driven by the official openai SDK (sync and async) and read raw off the wire."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types import ImageEditCompletedEvent, ImageEditPartialImageEvent

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import decode, png
from tests.support.service import RunningService

MODEL = "local/editor"
UPSTREAM_MODEL = "fake/gpt-image-1"
PATHS = ("/v1/images/edits", "/v2/router/images/edits")


def upload(data: bytes) -> tuple[str, bytes, str]:
    """An SDK file tuple."""
    return ("in.png", data, "image/png")


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async SDK pointed at the service, without the SDK's own retries."""
    async with openai.AsyncOpenAI(
        base_url=service.url("/v1"), api_key="key-a", max_retries=0, timeout=60
    ) as sdk:
        yield sdk


@pytest.fixture
async def chatty(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API and a worker, sending a keepalive comment every 50 ms of a streamed edit."""
    async with RunningService(
        settings.model_copy(update={"stream_keepalive_s": 0.05}), providers
    ) as running:
        yield running


def stream_form(fields: dict[str, str], image: bytes) -> aiohttp.FormData:
    """A multipart edit body with ``stream=true`` and ``fields``."""
    form = aiohttp.FormData()
    for name, value in {"stream": "true", **fields}.items():
        form.add_field(name, value)
    form.add_field("image", image, filename="in.png", content_type="image/png")
    return form


def parse_sse(body: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The events (name and JSON data) and the comment lines of an SSE body."""
    events: list[tuple[str, dict[str, Any]]] = []
    comments: list[str] = []
    for block in body.split("\n\n"):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events, comments


async def test_async_sdk_stream_yields_the_completed_image(
    service: RunningService, client: openai.AsyncOpenAI
) -> None:
    stream = await client.images.edit(
        model=MODEL,
        image=upload(png(40, 30)),
        prompt="make it grayscale",
        stream=True,
        partial_images=2,
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed"]
    completed = events[0]
    assert isinstance(completed, ImageEditCompletedEvent)
    image = decode(base64.b64decode(completed.b64_json))
    assert (image.format, image.size) == ("PNG", (40, 30))
    assert (completed.output_format, completed.size, completed.background) == (
        "png",
        "40x30",
        "auto",
    )
    assert completed.created_at > 0
    assert completed.usage.total_tokens >= 0


async def test_sync_sdk_stream_yields_the_completed_image(service: RunningService) -> None:
    def edit() -> list[openai.types.ImageEditStreamEvent]:
        with openai.OpenAI(base_url=service.url("/v1"), api_key="key-a", max_retries=0) as sdk:
            stream = sdk.images.edit(
                model=MODEL, image=upload(png(24, 24)), prompt="invert it", stream=True
            )
            return list(stream)

    events = await asyncio.to_thread(edit)
    assert [event.type for event in events] == ["image_edit.completed"]
    assert decode(base64.b64decode(events[0].b64_json)).size == (24, 24)


async def test_upstream_usage_rides_on_the_completed_event(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.usage = {
        "total_tokens": 30,
        "input_tokens": 20,
        "output_tokens": 10,
        "input_tokens_details": {"text_tokens": 5, "image_tokens": 15},
    }
    stream = await client.images.edit(
        model=UPSTREAM_MODEL,
        image=upload(png(32, 32)),
        prompt="x",
        stream=True,
        quality="low",
        background="opaque",
    )
    (completed,) = [event async for event in stream]
    assert isinstance(completed, ImageEditCompletedEvent)
    assert completed.usage.total_tokens == 30
    assert completed.usage.input_tokens_details.image_tokens == 15
    assert (completed.quality, completed.background) == ("low", "opaque")


@pytest.mark.parametrize("path", PATHS)
async def test_raw_stream_keeps_alive_then_completes(
    chatty: RunningService, fake_upstream: FakeUpstream, path: str
) -> None:
    fake_upstream.latency_s = 0.5
    form = stream_form({"model": UPSTREAM_MODEL, "prompt": "x"}, png(16, 16))
    async with chatty.client.post(chatty.url(path), data=form, headers=chatty.auth()) as reply:
        assert reply.status == 200
        assert reply.content_type == "text/event-stream"
        job_id = reply.headers["x-job-id"]
        body = await reply.text()
    events, comments = parse_sse(body)
    assert "keepalive" in comments
    assert [name for name, _ in events] == ["image_edit.completed"]
    data = events[0][1]
    assert data["type"] == "image_edit.completed"
    assert set(data) == {
        "type",
        "b64_json",
        "created_at",
        "size",
        "quality",
        "background",
        "output_format",
        "usage",
    }
    assert decode(base64.b64decode(data["b64_json"])).size == (16, 16)
    job = await chatty.wait(job_id)
    assert job["status"] == "succeeded"
    assert job["request"]["stream"] is True


async def test_a_failed_job_ends_the_stream_with_an_error_event(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(400))
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(png()), prompt="x", stream=True
    )
    job_id = stream.response.headers["x-job-id"]
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code == "invalid_request_error"
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert job["status"] == "failed"
    assert (caught.value.type, caught.value.message) == (
        job["error"]["type"],
        job["error"]["message"],
    )


async def test_raw_error_event_has_openais_error_shape(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(500))
    form = stream_form({"model": UPSTREAM_MODEL, "prompt": "x"}, png())
    async with service.client.post(
        service.url(PATHS[0]), data=form, headers=service.auth()
    ) as reply:
        assert reply.status == 200
        events, _ = parse_sse(await reply.text())
    assert [name for name, _ in events] == ["error"]
    error = events[0][1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error"


@pytest.mark.parametrize("value", ["4", "-1", "two"])
async def test_partial_images_out_of_range_is_a_400_naming_it(
    service: RunningService, value: str
) -> None:
    form = stream_form({"model": MODEL, "prompt": "x", "partial_images": value}, png())
    async with service.client.post(
        service.url(PATHS[0]), data=form, headers=service.auth()
    ) as reply:
        assert reply.status == 400
        assert "x-job-id" not in reply.headers
        body = await reply.json()
    assert body["error"]["param"] == "partial_images"
    _, listing = await service.get("/v1/jobs")
    assert listing["data"] == []


async def job_events(service: RunningService, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The finished job's whole event log, read off ``/v1/jobs/{id}/events``."""
    async with service.client.get(
        service.url(f"/v1/jobs/{job_id}/events"), headers=service.auth()
    ) as reply:
        assert reply.status == 200
        events, _ = parse_sse(await reply.text())
    return events


async def test_openai_upstream_partials_are_relayed_in_order(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    source = png(32, 24)
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(source), prompt="x", stream=True, partial_images=2
    )
    job_id = stream.response.headers["x-job-id"]
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "image_edit.partial_image",
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    first, second, completed = events
    assert isinstance(first, ImageEditPartialImageEvent)
    assert isinstance(second, ImageEditPartialImageEvent)
    assert (first.partial_image_index, second.partial_image_index) == (0, 1)
    # The fake's previews are the unedited input: what the upstream sent is relayed.
    assert base64.b64decode(first.b64_json) == source
    assert (first.output_format, first.background, first.quality) == ("png", "auto", "auto")
    assert isinstance(completed, ImageEditCompletedEvent)
    assert decode(base64.b64decode(completed.b64_json)).size == (32, 24)
    (sent,) = fake_upstream.requests
    assert (sent.fields["stream"], sent.fields["partial_images"]) == ("true", "2")
    partials = [data for name, data in await job_events(service, job_id) if name == "job.partial"]
    assert [data["partial_image_index"] for data in partials] == [0, 1]
    assert await service.download(partials[0]["url"]) == source


async def test_an_upstream_sending_fewer_partials_than_asked_still_completes(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.partials_sent = 1
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(png()), prompt="x", stream=True, partial_images=3
    )
    assert [event.type async for event in stream] == [
        "image_edit.partial_image",
        "image_edit.completed",
    ]


async def test_without_partials_the_upstream_is_not_asked_to_stream(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(png()), prompt="x", stream=True
    )
    assert [event.type async for event in stream] == ["image_edit.completed"]
    (sent,) = fake_upstream.requests
    assert "stream" not in sent.fields
    assert "partial_images" not in sent.fields


async def test_an_async_job_with_partial_images_logs_job_partial_events(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    source = png(20, 20)
    status, job, _ = await service.submit(model=UPSTREAM_MODEL, images=[source], partial_images=3)
    assert status == 202
    assert (await service.wait(job["id"]))["status"] == "succeeded"
    events = await job_events(service, job["id"])
    names = [name for name, _ in events]
    assert names == ["job.queued", "job.running", *["job.partial"] * 3, "job.succeeded"]
    partial = events[2][1]
    assert set(partial) == {"status", "run", "at", "partial_image_index", "url"}
    assert await service.download(partial["url"]) == source


async def test_past_the_sync_limit_the_stream_ends_with_an_error_naming_the_job(
    settings: Settings, providers: ProvidersConfig, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.5
    impatient = settings.model_copy(update={"sync_wait_limit_s": 0.5, "stream_keepalive_s": 0.1})
    async with RunningService(impatient, providers) as service:
        form = stream_form({"model": UPSTREAM_MODEL, "prompt": "x"}, png())
        async with service.client.post(
            service.url(PATHS[0]), data=form, headers=service.auth()
        ) as reply:
            assert reply.status == 200
            job_id = reply.headers["x-job-id"]
            events, comments = parse_sse(await reply.text())
        assert "keepalive" in comments
        assert [name for name, _ in events] == ["error"]
        error = events[0][1]["error"]
        assert error["code"] == "sync_wait_exceeded"
        assert job_id in error["message"]
        assert (await service.wait(job_id))["status"] == "succeeded"
    assert len(fake_upstream.requests) == 1


async def test_a_job_canceled_meanwhile_ends_the_stream_with_a_conflict(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 60
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(png()), prompt="x", stream=True
    )
    job_id = stream.response.headers["x-job-id"]
    await fake_upstream.wait_for_requests(1)
    status, _ = await service.post(f"/v1/jobs/{job_id}/cancel")
    assert status == 200
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code == "conflict"


async def test_a_retry_with_the_same_idempotency_key_streams_the_same_job(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    image = png(16, 16)
    headers = {"Idempotency-Key": "stream-once"}
    results = []
    for _ in range(2):
        stream = await client.images.edit(
            model=UPSTREAM_MODEL,
            image=upload(image),
            prompt="x",
            stream=True,
            partial_images=1,
            extra_headers=headers,
        )
        events = [event.type async for event in stream]
        results.append((stream.response.headers["x-job-id"], events))
    (first_job, first_events), (second_job, second_events) = results
    assert first_job == second_job
    assert first_events == second_events == ["image_edit.partial_image", "image_edit.completed"]
    assert len(fake_upstream.requests) == 1


async def test_several_images_complete_one_event_each_with_usage_on_the_last(
    service: RunningService, client: openai.AsyncOpenAI
) -> None:
    stream = await client.images.edit(
        model=UPSTREAM_MODEL, image=upload(png(16, 16)), prompt="x", n=2, stream=True
    )
    job_id = stream.response.headers["x-job-id"]
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed"] * 2
    _, job = await service.get(f"/v1/jobs/{job_id}")
    first, last = events
    assert isinstance(first, ImageEditCompletedEvent)
    assert isinstance(last, ImageEditCompletedEvent)
    assert first.usage.total_tokens == 0
    assert last.usage.total_tokens == job["result"]["usage"]["total_tokens"] > 0
