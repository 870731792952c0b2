"""The synchronous drop-in endpoints, driven by the official OpenAI SDK and by plain
multipart (orq's shape), against the whole service: the API holds each request while
a real worker runs the job."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from app.cli.embedded import free_port
from app.core.providers_config import ProvidersConfig
from app.http.app import create_app
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, decode, mask, png
from tests.support.service import RunningService

MODEL = "local/editor"
UPSTREAM_MODEL = "fake/gpt-image-1"
ORQ_PATH = "/v2/router/images/edits"
OPENAI_PATH = "/v1/images/edits"


def upload(data: bytes, name: str = "a.png") -> tuple[str, bytes, str]:
    """An SDK file tuple."""
    return (name, data, "image/png")


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async SDK pointed at the service, without the SDK's own retries."""
    async with openai.AsyncOpenAI(
        base_url=service.url("/v1"), api_key="key-a", max_retries=0, timeout=60
    ) as sdk:
        yield sdk


@pytest.fixture
async def impatient(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API and a worker, with synchronous requests waiting at most half a second."""
    async with RunningService(
        settings.model_copy(update={"sync_wait_limit_s": 0.5}), providers
    ) as running:
        yield running


@pytest.fixture
async def cancelling_api(service: RunningService) -> AsyncIterator[str]:
    """A second API on ``service``'s Redis and S3 whose handlers are cancelled when the
    client hangs up (aiohttp's ``handler_cancellation``); its base URL."""
    runner = web.AppRunner(
        create_app(service.settings, service.providers), handler_cancellation=True
    )
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def orq_form(fields: dict[str, Any], images: list[bytes] | None = None) -> aiohttp.FormData:
    """orq's multipart body: text fields, JSON-valued parts (``orq``, knobs), images."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, dict | list):
            form.add_field(name, json.dumps(value), content_type="application/json")
        else:
            form.add_field(name, str(value))
    for index, data in enumerate(images if images is not None else [png()]):
        form.add_field("image", data, filename=f"in-{index}.png", content_type="image/png")
    return form


async def post_form(
    service: RunningService, path: str, form: aiohttp.FormData
) -> tuple[int, dict[str, Any], str | None]:
    """POST a multipart body; status, JSON body and ``x-job-id``."""
    async with service.client.post(service.url(path), data=form, headers=service.auth()) as reply:
        return reply.status, await reply.json(), reply.headers.get("x-job-id")


async def only_job(service: RunningService, timeout_s: float = 5) -> str:
    """The id of the caller's one job, once it is listed."""
    async with asyncio.timeout(timeout_s):
        while True:
            _, listing = await service.get("/v1/jobs")
            if listing["data"]:
                assert len(listing["data"]) == 1, listing
                return str(listing["data"][0]["id"])
            await asyncio.sleep(0.05)


async def test_single_image_answers_b64_png_by_default(
    service: RunningService, client: openai.AsyncOpenAI
) -> None:
    raw = await client.images.with_raw_response.edit(
        model=MODEL, image=upload(png(80, 60)), prompt="make it grayscale"
    )
    result = raw.parse()
    job_id = raw.headers["x-job-id"]
    assert raw.headers["x-request-id"]
    assert result.data is not None and len(result.data) == 1
    assert result.data[0].url is None
    assert result.data[0].b64_json is not None
    image = decode(base64.b64decode(result.data[0].b64_json))
    assert (image.format, image.size) == ("PNG", (80, 60))
    red, green, blue = image.convert("RGB").getpixel((2, 2))  # type: ignore[misc]
    assert red == green == blue
    assert (result.size, result.output_format) == ("80x60", "png")
    assert result.usage is not None and result.usage.total_tokens > 0
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert job["status"] == "succeeded"
    assert job["request"]["response_format"] == "b64_json"


async def test_several_images_and_a_mask_reach_the_upstream(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    result = await client.images.edit(
        model=UPSTREAM_MODEL,
        image=[upload(png(), "a.png"), upload(png(), "b.png"), upload(png(), "c.png")],
        mask=upload(mask(), "mask.png"),
        prompt="invert the left half",
        n=2,
    )
    assert result.data is not None and len(result.data) == 2
    assert all(item.b64_json for item in result.data)
    sent = fake_upstream.requests[-1]
    assert len(sent.images) == 3
    assert sent.has_mask


async def test_response_format_url_gives_a_downloadable_url(
    service: RunningService, client: openai.AsyncOpenAI
) -> None:
    result = await client.images.edit(
        model=MODEL,
        image=upload(png(40, 30)),
        prompt="mirror it",
        response_format="url",
        output_format="webp",
    )
    assert result.data is not None
    url = result.data[0].url
    assert url is not None and result.data[0].b64_json is None
    image = decode(await service.download(url))
    assert (image.format, image.size) == ("WEBP", (40, 30))


async def test_the_sync_sdk_client_works_too(service: RunningService) -> None:
    def edit() -> openai.types.ImagesResponse:
        with openai.OpenAI(
            base_url=service.url("/v1"), api_key="key-a", max_retries=0, timeout=60
        ) as sdk:
            return sdk.images.edit(model=MODEL, image=upload(png(32, 32)), prompt="invert it")

    result = await asyncio.to_thread(edit)
    assert result.data is not None and result.data[0].b64_json is not None
    assert decode(base64.b64decode(result.data[0].b64_json)).size == (32, 32)


async def test_an_unknown_model_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.edit(model="nobody/nothing", image=upload(png()), prompt="x")
    assert caught.value.code == "model_not_found"
    assert "x-job-id" not in caught.value.response.headers  # refused before any job existed


async def test_a_wrong_key_is_an_authentication_error(service: RunningService) -> None:
    async with openai.AsyncOpenAI(
        base_url=service.url("/v1"), api_key="wrong", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.images.edit(model=MODEL, image=upload(png()), prompt="x")
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        (Fault.status(500), openai.InternalServerError, 502, "upstream_error"),
        (Fault.status(504), openai.InternalServerError, 504, "upstream_timeout"),
        (Fault.status(429), openai.RateLimitError, 429, "rate_limit_exceeded"),
        (Fault.status(402), openai.APIStatusError, 402, "insufficient_credits"),
        (Fault.status(400), openai.BadRequestError, 400, "invalid_request_error"),
    ],
)
async def test_a_failed_job_maps_to_the_sdk_exception(
    service: RunningService,
    client: openai.AsyncOpenAI,
    fake_upstream: FakeUpstream,
    fault: Fault,
    exception: type[openai.APIStatusError],
    status: int,
    code: str,
) -> None:
    fake_upstream.fail_next(fault)
    with pytest.raises(exception) as caught:
        await client.images.edit(model=UPSTREAM_MODEL, image=upload(png()), prompt="x")
    assert caught.value.status_code == status
    assert caught.value.code == code
    job_id = caught.value.response.headers["x-job-id"]
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert job["status"] == "failed"
    assert job["error"]["code"] == code


async def test_json_body_with_data_urls(service: RunningService) -> None:
    body = {
        "model": MODEL,
        "prompt": "invert it",
        "images": [{"image_url": data_url(png(24, 16))}],
        "mask": {"image_url": data_url(mask(24, 16))},
    }
    async with service.client.post(
        service.url(OPENAI_PATH), json=body, headers=service.auth()
    ) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers["x-job-id"].startswith("job_")
        result = await reply.json()
    assert list(result) == ["created", "data", "output_format", "size", "quality", "usage"]
    assert decode(base64.b64decode(result["data"][0]["b64_json"])).size == (24, 16)


async def test_orq_route_takes_retry_knobs_in_the_orq_part(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(429, retry_after="0"))
    form = orq_form(
        {"model": UPSTREAM_MODEL, "prompt": "x", "orq": {"retry": {"count": 1}, "name": "trace"}}
    )
    status, result, job_id = await post_form(service, ORQ_PATH, form)
    assert status == 200, result
    assert base64.b64decode(result["data"][0]["b64_json"]).startswith(b"\x89PNG")
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert [(a["status"], a["next_action"]) for a in job["attempts"]] == [
        (429, "retry"),
        (200, None),
    ]


async def test_orq_route_takes_top_level_fallbacks(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(503))
    form = orq_form(
        {
            "model": UPSTREAM_MODEL,
            "prompt": "x",
            "fallbacks": [{"model": "fake/flux-kontext"}],
            "response_format": "url",
        }
    )
    status, result, job_id = await post_form(service, ORQ_PATH, form)
    assert status == 200, result
    assert decode(await service.download(result["data"][0]["url"])).format == "PNG"
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert [a["model"] for a in job["attempts"]] == ["fake/gpt-image-1", "fake/flux-kontext"]


async def test_past_the_sync_limit_504_and_the_job_still_finishes(
    impatient: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.5
    form = orq_form({"model": UPSTREAM_MODEL, "prompt": "x"})
    status, body, job_id = await post_form(impatient, OPENAI_PATH, form)
    assert status == 504, body
    assert body["error"]["code"] == "sync_wait_exceeded"
    assert job_id is not None and job_id in body["error"]["message"]
    done = await impatient.wait(job_id)
    assert done["status"] == "succeeded", done
    assert len(fake_upstream.requests) == 1


async def test_a_job_canceled_meanwhile_is_a_conflict(
    service: RunningService, client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 60
    pending = asyncio.create_task(
        client.images.edit(model=UPSTREAM_MODEL, image=upload(png()), prompt="x")
    )
    await fake_upstream.wait_for_requests(1)
    job_id = await only_job(service)
    status, _ = await service.post(f"/v1/jobs/{job_id}/cancel")
    assert status == 200
    with pytest.raises(openai.ConflictError) as caught:
        await pending
    assert caught.value.code == "conflict"
    assert caught.value.response.headers["x-job-id"] == job_id


@pytest.mark.parametrize("cancels_handlers", [False, True])
async def test_a_client_that_hangs_up_leaves_the_job_running(
    service: RunningService,
    cancelling_api: str,
    fake_upstream: FakeUpstream,
    cancels_handlers: bool,
) -> None:
    fake_upstream.latency_s = 2.5
    base_url = cancelling_api if cancels_handlers else service.base_url
    form = orq_form({"model": UPSTREAM_MODEL, "prompt": "x"})
    with pytest.raises(TimeoutError):
        await service.client.post(
            base_url + OPENAI_PATH,
            data=form,
            headers=service.auth(),
            timeout=aiohttp.ClientTimeout(total=1.0),
        )
    done = await service.wait(await only_job(service))
    assert done["status"] == "succeeded", done
    assert done["request"]["response_format"] == "b64_json"
    assert len(fake_upstream.requests) == 1
