"""Bad requests get their documented error (status, code, param) and never a 5xx,
and nothing already accepted is lost."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from PIL import Image

from app.settings import Settings
from tests.support.images import data_url, encode, mask, png
from tests.support.service import RunningService


def _assert_error(body: dict[str, Any], code: str, param: str | None = None) -> None:
    error = body["error"]
    assert error["code"] == code, body
    assert error["message"]
    assert error["type"]
    if param is not None:
        assert error["param"] == param, body


async def _raw_post(
    service: RunningService, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with service.client.post(
        service.url("/v1/jobs"), data=data, headers={**service.auth(), **(headers or {})}
    ) as response:
        return response.status, await response.json(), response


@pytest.mark.parametrize(
    ("images", "extra", "status", "code", "param"),
    [
        ([b"this is not an image at all"], {}, 415, "unsupported_media_type", "image[0]"),
        ([png()[: len(png()) // 2]], {}, 400, "invalid_request_error", "image[0]"),
        ([encode(Image.new("RGB", (8, 8)), "GIF")], {}, 415, "unsupported_media_type", "image[0]"),
        ([png()] * 17, {}, 400, "invalid_request_error", "image"),
        ([], {}, 400, "invalid_request_error", "image"),
        ([png()], {"model": "nobody/unknown"}, 400, "model_not_found", "model"),
        ([png()], {"model": "text/chat-only"}, 400, "model_capability_mismatch", "model"),
        ([png()], {"n": "11"}, 400, "invalid_request_error", "n"),
        ([png()], {"n": "2.5"}, 400, "invalid_request_error", "n"),
        ([png()], {"size": "huge"}, 400, "invalid_request_error", "size"),
        ([png()], {"output_format": "tiff"}, 400, "invalid_request_error", "output_format"),
        ([png()], {"quality": "ultra"}, 400, "invalid_request_error", "quality"),
        (
            [png()],
            {"output_compression": "101"},
            400,
            "invalid_request_error",
            "output_compression",
        ),
        (
            [png()],
            {"background": "transparent", "output_format": "jpeg"},
            400,
            "invalid_request_error",
            "background",
        ),
        ([png()], {"metadata": "{not json"}, 400, "invalid_request_error", "metadata"),
        ([png()], {"retry": {"count": 6}}, 400, "invalid_request_error", "retry.count"),
        ([png()], {"prompt": ""}, 400, "invalid_request_error", "prompt"),
        (
            [png()],
            {"fallbacks": [{"model": "nobody/unknown"}]},
            400,
            "model_not_found",
            "fallbacks[0].model",
        ),
    ],
)
async def test_bad_multipart_submit(
    service: RunningService,
    images: list[bytes],
    extra: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    got, body, response = await service.submit(images=images, **extra)
    assert got == status, body
    _assert_error(body, code, param)
    assert response.headers["x-request-id"]


async def test_mask_of_another_size(service: RunningService) -> None:
    status, body, _ = await service.submit(images=[png(64, 48)], mask=mask(32, 32))
    assert status == 400
    _assert_error(body, "invalid_request_error", "mask")


async def test_missing_prompt_and_model(service: RunningService) -> None:
    form = aiohttp.FormData()
    form.add_field("image", png(), filename="a.png", content_type="image/png")
    status, body, _ = await _raw_post(service, form)
    assert status == 400
    _assert_error(body, "invalid_request_error")
    assert body["error"]["param"] in ("model", "prompt")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "local/editor", "prompt": "x"}, "images"),
        (
            {"model": "local/editor", "prompt": "x", "images": [{"image_url": "data:nope"}]},
            "images[0].image_url",
        ),
        (
            {"model": "local/editor", "prompt": "x", "images": [{"file_id": "file_1"}]},
            "images[0].file_id",
        ),
        (
            {
                "model": "local/editor",
                "prompt": "x",
                "images": [{"image_url": "data:image/png;base64,!!!"}],
            },
            "images[0].image_url",
        ),
        (
            {
                "model": "local/editor",
                "prompt": "x",
                "images": [{"image_url": data_url(png())}],
                "mask": {"image_url": data_url(png())},
            },
            "mask.image_url",
        ),
        (
            {
                "model": "local/editor",
                "prompt": "x",
                "images": [{"image_url": data_url(png())}],
                "orq": {"retry": {"count": 0}},
            },
            "orq.retry.count",
        ),
        (
            {
                "model": "local/editor",
                "prompt": "x",
                "images": [{"image_url": data_url(png())}],
                "load_balancer": {
                    "type": "weight_based",
                    "models": [{"model": "local/editor", "weight": 0}],
                },
            },
            "load_balancer.models[0].weight",
        ),
        (
            {
                "model": "local/editor",
                "prompt": "x",
                "images": [{"image_url": data_url(png())}],
                "cache": {"type": "exact_match", "ttl": 259201},
            },
            "cache.ttl",
        ),
    ],
)
async def test_bad_json_submit(service: RunningService, body: dict[str, Any], param: str) -> None:
    status, answer = await service.post("/v1/jobs", body=body)
    assert status == 400, answer
    assert answer["error"]["param"] == param


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2, 3]", b'"just a string"', b"{" * 100_000, b"\xff\xfe\xfa"],
)
async def test_malformed_json_bodies(service: RunningService, raw: bytes) -> None:
    status, body, _ = await _raw_post(service, raw, {"Content-Type": "application/json"})
    assert status == 400, body
    _assert_error(body, "invalid_request_error")


async def test_unsupported_content_type(service: RunningService) -> None:
    status, body, _ = await _raw_post(service, b"model=x", {"Content-Type": "text/plain"})
    assert status == 415
    _assert_error(body, "unsupported_media_type")


async def test_missing_and_wrong_api_key(service: RunningService) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWE="}):
        async with service.client.post(service.url("/v1/jobs"), headers=headers) as response:
            assert response.status == 401
            _assert_error(await response.json(), "invalid_api_key")
        async with service.client.get(service.url("/v1/jobs"), headers=headers) as response:
            assert response.status == 401


async def test_unknown_job_and_route(service: RunningService) -> None:
    for path in ("/v1/jobs/job_0000", "/v1/jobs/not-a-job-id", "/v1/nothing-here"):
        status, body = await service.get(path)
        assert status == 404
        _assert_error(body, "not_found")


async def test_bad_query_parameters(service: RunningService) -> None:
    for path, param in (
        ("/v1/jobs?status=exploded", "status"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?limit=many", "limit"),
        ("/v1/jobs/job_x?wait=301", "wait"),
        ("/v1/jobs/job_x?wait=-1", "wait"),
    ):
        status, body = await service.get(path)
        assert status == 400, (path, body)
        assert body["error"]["param"] == param


@pytest.fixture
def small_body_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": 200_000, "max_image_bytes": 150_000})


async def test_body_over_the_limit_is_413(
    small_body_settings: Settings, service: RunningService
) -> None:
    limited = RunningService(small_body_settings, service.providers)
    await limited.start(worker=False)
    try:
        big = bytes(300_000)
        form = aiohttp.FormData()
        form.add_field("model", "local/editor")
        form.add_field("prompt", "x")
        form.add_field("image", big, filename="big.png", content_type="image/png")
        status, body, _ = await _raw_post(limited, form)
        assert status == 413
        _assert_error(body, "payload_too_large")

        chunked = aiohttp.FormData()
        chunked.add_field("model", "local/editor")
        chunked.add_field("prompt", "x")
        chunked.add_field("image", bytes(160_000), filename="a.png", content_type="image/png")
        status, body, _ = await _raw_post(limited, chunked)
        assert status == 413
        _assert_error(body, "payload_too_large", "image[0]")

        status, answer = await limited.post(
            "/v1/jobs", body={"model": "local/editor", "prompt": "x" * 300_000, "images": []}
        )
        assert status == 413
        _assert_error(answer, "payload_too_large")
    finally:
        await limited.stop()


async def test_bad_input_never_disturbs_accepted_jobs(service: RunningService) -> None:
    _, accepted, _ = await service.submit()
    for _ in range(5):
        status, _, _ = await service.submit(images=[b"garbage"])
        assert status == 415
    done = await service.wait(accepted["id"])
    assert done["status"] == "succeeded"
    _, listing = await service.get("/v1/jobs")
    assert [job["id"] for job in listing["data"]] == [accepted["id"]]
