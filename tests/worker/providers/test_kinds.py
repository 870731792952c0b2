"""The requesty and orq adapters, and every HTTP adapter's mask handling, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from app.core.providers_config import UpstreamConfig
from app.errors import UpstreamRejected
from tests.support.adapters import upstream_config
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import decode, encode, mask, png
from worker.providers.base import EditCall, InputImage, Upstream
from worker.providers.local.editor import LocalUpstream
from worker.providers.openai import OpenAIUpstream
from worker.providers.orq import OrqUpstream, orq_edits_url
from worker.providers.registry import build_upstream
from worker.providers.requesty import RequestyUpstream

HTTP_KINDS = ("openai", "requesty", "orq")
EDIT_PIXEL = (5, 20)  # in the left half: transparent in the OpenAI-convention mask
KEEP_PIXEL = (50, 20)


def config(fake: FakeUpstream, kind: str, **changes: Any) -> UpstreamConfig:
    base_url = fake.origin if kind == "orq" else fake.base_url
    return upstream_config(kind, base_url, name=f"fake-{kind}", **changes)


def adapter(
    fake: FakeUpstream, session: aiohttp.ClientSession, kind: str, **changes: Any
) -> Upstream:
    with ThreadPoolExecutor(1) as executor:
        return build_upstream(config(fake, kind, **changes), session, executor)


def edit_call(**changes: Any) -> EditCall:
    fields: dict[str, Any] = {
        "model": "gpt-image-1",
        "prompt": "invert the colours",
        "images": (InputImage(png(), "image/png"),),
        "timeout_s": 10.0,
    }
    fields.update(changes)
    return EditCall(**fields)


def masked_call(image_count: int = 1) -> EditCall:
    images = tuple(InputImage(png(color=(0, 10 * i, 0)), "image/png") for i in range(image_count))
    return edit_call(images=images, mask=InputImage(mask(), "image/png"))


def alpha(data: bytes, xy: tuple[int, int]) -> int:
    value = decode(data).convert("RGBA").getpixel(xy)
    assert isinstance(value, tuple)
    return int(value[3])


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


# --- requesty ---------------------------------------------------------------------------


async def test_requesty_sends_json_with_data_urls(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.api_key = "rq-key"
    upstream = adapter(fake, session, "requesty", api_key=SecretStr("rq-key"))
    webp = encode(decode(png(color=(0, 0, 0))), "WEBP")
    images = (InputImage(png(), "image/png"), InputImage(webp, "image/webp"))

    output = await upstream.edit(
        edit_call(images=images, mask=InputImage(mask(), "image/png"), quality="low")
    )

    [request] = fake.requests
    assert (request.path, request.body_format, request.status) == ("/v1/images/edits", "json", 200)
    assert request.headers["Content-Type"] == "application/json"
    assert request.authorization == "Bearer rq-key"
    assert request.images == [image.data for image in images]
    assert [u.content_type for u in request.uploads] == ["image/png", "image/webp", "image/png"]
    assert request.mask == mask()
    assert request.fields == {
        "model": "gpt-image-1",
        "prompt": "invert the colours",
        "n": "1",
        "quality": "low",
        "output_format": "png",
    }
    assert decode(output.image).size == (64, 48)
    assert output.usage is not None


async def test_requesty_error_body_keeps_message_and_origin(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    body = {"error": {"origin": "provider", "message": "organization balance exhausted"}}
    fake.fail_next(Fault.raw(402, json.dumps(body), content_type="application/json"))

    with pytest.raises(UpstreamRejected) as caught:
        await adapter(fake, session, "requesty").edit(edit_call())

    assert (caught.value.code, caught.value.upstream_status) == ("insufficient_credits", 402)
    assert "organization balance exhausted" in caught.value.message
    assert "origin: provider" in caught.value.message


# --- orq --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_orq_posts_multipart_to_the_router_path_asking_for_b64(
    fake: FakeUpstream, session: aiohttp.ClientSession, suffix: str
) -> None:
    upstream = adapter(fake, session, "orq", base_url=fake.origin + suffix)

    output = await upstream.edit(edit_call(size="16x12"))

    [request] = fake.requests
    assert (request.path, request.body_format, request.status) == (
        "/v2/router/images/edits",
        "multipart",
        200,
    )
    assert request.fields["response_format"] == "b64_json"
    assert (request.fields["n"], request.fields["size"]) == ("1", "16x12")
    assert request.image_fields == ["image"]
    assert request.images == [png()]
    assert decode(output.image).size == (16, 12)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.orq.ai", "https://api.orq.ai/v2/router/images/edits"),
        ("https://api.orq.ai/", "https://api.orq.ai/v2/router/images/edits"),
        ("http://gateway:8080/orq//", "http://gateway:8080/orq/v2/router/images/edits"),
    ],
)
def test_orq_edits_url(base_url: str, expected: str) -> None:
    assert orq_edits_url(base_url) == expected


# --- masks, for every HTTP kind -----------------------------------------------------------


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_default_upstream_gets_the_mask_unchanged(
    fake: FakeUpstream, session: aiohttp.ClientSession, kind: str
) -> None:
    await adapter(fake, session, kind).edit(masked_call())

    [request] = fake.requests
    assert request.mask == mask()
    assert request.image_count == 1


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_opaque_edits_upstream_gets_the_inverted_mask(
    fake: FakeUpstream, session: aiohttp.ClientSession, kind: str
) -> None:
    upstream = adapter(fake, session, kind, mask_convention="opaque_edits")

    await upstream.edit(masked_call())

    [request] = fake.requests
    assert request.mask is not None
    assert (alpha(mask(), EDIT_PIXEL), alpha(mask(), KEEP_PIXEL)) == (0, 255)
    assert (alpha(request.mask, EDIT_PIXEL), alpha(request.mask, KEEP_PIXEL)) == (255, 0)
    assert [u.content_type for u in request.uploads if u.field == "mask"] == ["image/png"]
    assert request.prompt == "invert the colours"


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_upstream_without_masks_gets_the_mask_as_last_image(
    fake: FakeUpstream, session: aiohttp.ClientSession, kind: str
) -> None:
    call = masked_call(image_count=2)

    await adapter(fake, session, kind, supports_mask=False).edit(call)

    [request] = fake.requests
    assert not request.has_mask
    assert request.images == [*(image.data for image in call.images), mask()]
    assert request.prompt is not None
    assert request.prompt.startswith("invert the colours\n\n")
    assert "last attached image is not an input but a mask" in request.prompt
    assert "transparent pixels mark the area to edit" in request.prompt


async def test_opaque_upstream_without_masks_gets_the_inverted_mask_and_says_so(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session, "openai", supports_mask=False, mask_convention="opaque_edits")

    await upstream.edit(masked_call())

    [request] = fake.requests
    assert request.image_fields == ["image[]", "image[]"]
    last = request.images[-1]
    assert (alpha(last, EDIT_PIXEL), alpha(last, KEEP_PIXEL)) == (255, 0)
    assert request.prompt is not None
    assert "opaque pixels mark the area to edit" in request.prompt


async def test_call_without_mask_is_sent_as_is_to_an_upstream_without_masks(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    await adapter(fake, session, "orq", supports_mask=False).edit(edit_call())

    [request] = fake.requests
    assert (request.image_count, request.prompt) == (1, "invert the colours")


async def test_undecodable_mask_for_an_opaque_upstream_is_rejected(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session, "requesty", mask_convention="opaque_edits")

    with pytest.raises(UpstreamRejected, match="mask cannot be converted"):
        await upstream.edit(edit_call(mask=InputImage(b"garbage", "image/png")))

    assert fake.requests == []


# --- configuration and registry ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "adapter_type"),
    [
        ("openai", OpenAIUpstream),
        ("requesty", RequestyUpstream),
        ("orq", OrqUpstream),
        ("local", LocalUpstream),
    ],
)
async def test_registry_builds_the_adapter_for_the_kind(
    fake: FakeUpstream, session: aiohttp.ClientSession, kind: str, adapter_type: type[object]
) -> None:
    upstream = adapter(fake, session, kind)

    assert isinstance(upstream, adapter_type)
    assert upstream.name == f"fake-{kind}"


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_http_kinds_need_a_base_url(kind: str) -> None:
    with pytest.raises(ValidationError, match="needs base_url"):
        UpstreamConfig(name="x", kind=kind)


def test_mask_settings_default_to_openai_behaviour() -> None:
    upstream = UpstreamConfig(name="x", kind="local")

    assert (upstream.mask_convention, upstream.supports_mask) == ("transparent_edits", True)
    with pytest.raises(ValidationError):
        UpstreamConfig(name="x", kind="local", mask_convention="white_edits")
