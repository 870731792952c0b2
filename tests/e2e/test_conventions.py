"""The conventions clients of other APIs expect from editq: OpenAI's model lookup,
list fields as repeated multipart parts, Server-Sent Events that end, ``Prefer:
wait``, links on every object."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.support.service import RunningService


@pytest.fixture
async def sdk(service: RunningService) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async OpenAI SDK pointed at the service, without its own retries."""
    async with openai.AsyncOpenAI(
        base_url=service.url("/v1"), api_key="key-a", max_retries=0, timeout=30
    ) as client:
        yield client


async def test_the_openai_sdk_retrieves_a_model_whose_id_has_a_slash(
    service: RunningService, sdk: openai.AsyncOpenAI
) -> None:
    model = await sdk.models.retrieve("local/editor")
    assert (model.id, model.object) == ("local/editor", "model")
    _, listed = await service.get("/v1/models")
    status, single = await service.get("/v1/models/local/editor")
    assert status == 200
    assert single == next(item for item in listed["data"] if item["id"] == "local/editor")


async def test_an_unknown_model_is_a_404_in_the_openai_error_shape(
    service: RunningService, sdk: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk.models.retrieve("nobody/nothing")
    assert raised.value.code == "model_not_found"
    status, body = await service.get("/v1/models/nobody/nothing")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    assert set(body["error"]) == {"message", "type", "code", "param"}
