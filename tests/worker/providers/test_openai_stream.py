"""The OpenAI-compatible adapter asking for partial images: OpenAI's edit event stream
read from the fake upstream over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from app.core.providers_config import UpstreamConfig
from app.errors import UpstreamBadResponse
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import decode, png
from worker.providers.base import EditCall, InputImage
from worker.providers.openai import OpenAIUpstream

SOURCE = png(12, 10)


class Partials:
    """A partial sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []

    async def __call__(self, index: int, image: bytes) -> None:
        self.received.append((index, image))


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def upstream(fake: FakeUpstream) -> AsyncIterator[OpenAIUpstream]:
    async with aiohttp.ClientSession() as session:
        config = UpstreamConfig(
            name="fake", kind="openai", base_url=fake.base_url, api_key=SecretStr("k")
        )
        yield OpenAIUpstream(config, session)


def streamed_call(sink: Partials, partial_images: int = 2) -> EditCall:
    return EditCall(
        model="gpt-image-1",
        prompt="invert it",
        images=(InputImage(SOURCE, "image/png"),),
        timeout_s=10.0,
        partial_images=partial_images,
        on_partial=sink,
    )


def sse(*events: tuple[str, object]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


async def test_partials_reach_the_sink_in_order_then_the_image_returns(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    sink = Partials()
    output = await upstream.edit(streamed_call(sink, partial_images=3))
    assert [index for index, _ in sink.received] == [0, 1, 2]
    assert all(image == SOURCE for _, image in sink.received)
    assert decode(output.image).size == (12, 10)
    assert output.usage is not None and output.usage.total_tokens > 0
    (sent,) = fake.requests
    assert sent.fields["stream"] == "true"
    assert sent.fields["partial_images"] == "3"
    assert sent.headers["Accept"].startswith("text/event-stream")


async def test_a_json_answer_to_a_streamed_request_is_read_as_usual(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(
        Fault.raw(
            200,
            json.dumps({"data": [{"b64_json": "aGVsbG8="}]}),
            content_type="application/json",
        )
    )
    sink = Partials()
    output = await upstream.edit(streamed_call(sink))
    assert output.image == b"hello"
    assert sink.received == []


async def test_an_error_event_fails_the_call_with_the_upstreams_message(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    error = {"type": "error", "error": {"message": "moderation blocked", "code": "blocked"}}
    fake.fail_next(Fault.raw(200, sse(("error", error)), content_type="text/event-stream"))
    with pytest.raises(UpstreamBadResponse, match="moderation blocked"):
        await upstream.edit(streamed_call(Partials()))


async def test_an_error_event_in_the_flat_shape_keeps_its_message(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    error = {"type": "error", "code": "server_error", "message": "the edit broke", "param": None}
    fake.fail_next(Fault.raw(200, sse(("error", error)), content_type="text/event-stream"))
    with pytest.raises(UpstreamBadResponse, match="the edit broke"):
        await upstream.edit(streamed_call(Partials()))


async def test_a_completed_event_with_a_null_error_is_the_image(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    completed = {"b64_json": "aGVsbG8=", "error": None}
    body = sse(("image_edit.completed", completed))
    fake.fail_next(Fault.raw(200, body, content_type="text/event-stream"))
    assert (await upstream.edit(streamed_call(Partials()))).image == b"hello"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            sse(("image_edit.partial_image", {"partial_image_index": 0, "b64_json": "aGk="})),
            "ended",
        ),
        ("event: image_edit.completed\ndata: {not json\n\n", "not JSON"),
        (sse(("image_edit.completed", {"b64_json": "!!"})), "base64"),
    ],
)
async def test_a_broken_stream_is_a_bad_response(
    fake: FakeUpstream, upstream: OpenAIUpstream, body: str, message: str
) -> None:
    fake.fail_next(Fault.raw(200, body, content_type="text/event-stream"))
    with pytest.raises(UpstreamBadResponse, match=message):
        await upstream.edit(streamed_call(Partials()))
