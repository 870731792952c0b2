"""The Gemini adapter against the fake Gemini API over real HTTP, and its pure parts."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from app.core.jobs import Usage
from app.core.providers_config import UpstreamConfig
from app.errors import (
    ContentFiltered,
    InsufficientCredits,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from tests.support.adapters import upstream_config
from tests.support.fakes.gemini import (
    FakeGemini,
    Fault,
    blocked_prompt,
    google_error,
    text_only,
    withheld,
)
from tests.support.images import rgba_at, solid_png
from worker.providers.base import EditCall, InputImage
from worker.providers.gemini import (
    GeminiUpstream,
    aspect_ratio,
    duration_s,
    gemini_error,
    parse_answer,
    usage_from_metadata,
)
from worker.providers.registry import build_upstream

KEY = "gemini-test-key"
CYAN = (0, 255, 255, 255)


def edit_call(**changes: object) -> EditCall:
    fields: dict[str, object] = {
        "model": "gemini-2.5-flash-image",
        "prompt": "invert the colours",
        "images": (InputImage(solid_png(), "image/png"),),
        "timeout_s": 10.0,
    }
    fields.update(changes)
    return EditCall(**fields)  # type: ignore[arg-type]


def config(base_url: str, api_key: str | None = KEY) -> UpstreamConfig:
    return upstream_config("gemini", base_url, api_key)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
def upstream(fake: FakeGemini, session: aiohttp.ClientSession) -> GeminiUpstream:
    return GeminiUpstream(config(fake.base_url), session)


# --- requests as sent and answers as read ------------------------------------------------


async def test_an_edit_comes_back_as_the_fakes_inverted_image(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    assert fake.text_before_image  # the answer says something first: skipped
    output = await upstream.edit(edit_call())

    assert rgba_at(output.image) == CYAN  # the fake inverted the red input
    [request] = fake.requests
    assert request.model == "gemini-2.5-flash-image"
    assert request.headers["x-goog-api-key"] == KEY
    assert "Authorization" not in request.headers
    assert request.prompt == "invert the colours"
    assert request.images == [solid_png()]
    assert request.response_modalities == ["TEXT", "IMAGE"]
    assert request.body is not None
    [image_part] = request.body["contents"][0]["parts"][1:]
    assert image_part["inline_data"]["mime_type"] == "image/png"
    assert base64.b64decode(image_part["inline_data"]["data"]) == solid_png()


async def test_a_thought_image_is_not_taken_for_the_answer(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.thought_image = True  # a draft (the unedited input) comes first, marked thought
    output = await upstream.edit(edit_call())
    assert rgba_at(output.image) == CYAN


async def test_usage_metadata_becomes_the_calls_usage(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.usage = {
        "promptTokenCount": 270,
        "candidatesTokenCount": 1300,
        "thoughtsTokenCount": 40,
        "totalTokenCount": 1610,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 12},
            {"modality": "IMAGE", "tokenCount": 258},
        ],
    }
    output = await upstream.edit(edit_call())
    assert output.usage == Usage(
        input_tokens=270,
        output_tokens=1340,
        total_tokens=1610,
        input_tokens_details={"text_tokens": 12, "image_tokens": 258},
    )


async def test_the_fakes_own_usage_estimate_is_read_too(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    output = await upstream.edit(edit_call(prompt="x" * 40))
    assert output.usage is not None
    assert output.usage.input_tokens_details == {"text_tokens": 10, "image_tokens": 258}
    assert output.usage.input_tokens == 268
    assert output.usage.output_tokens >= 1290
    fake.usage = None
    assert (await upstream.edit(edit_call())).usage is None


async def test_an_input_with_a_url_is_sent_by_reference(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    url = fake.serve_input(solid_png(), "image/png")
    output = await upstream.edit(edit_call(images=(InputImage(b"", "image/png", url=url),)))

    assert rgba_at(output.image) == CYAN  # the fake fetched the URL and edited that image
    [request] = fake.requests
    assert request.file_uris == [url]
    assert request.body is not None
    [image_part] = request.body["contents"][0]["parts"][1:]
    assert image_part == {"file_data": {"mime_type": "image/png", "file_uri": url}}


async def test_a_url_the_api_cannot_fetch_is_a_rejected_request(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    missing = fake.base_url + "/inputs/nothing-here"
    with pytest.raises(UpstreamRejected) as caught:
        await upstream.edit(edit_call(images=(InputImage(b"", "image/png", url=missing),)))
    assert caught.value.code == "invalid_request_error"
    assert "Cannot fetch content" in caught.value.message


async def test_a_mask_goes_as_the_last_image_with_an_instruction(
    fake: FakeGemini, session: aiohttp.ClientSession
) -> None:
    # supports_mask is true by default, but this API has no mask parameter
    upstream = GeminiUpstream(config(fake.base_url), session)
    mask = solid_png((0, 0, 0, 0))
    await upstream.edit(edit_call(mask=InputImage(mask, "image/png")))
    [request] = fake.requests
    assert request.images == [solid_png(), mask]
    assert "last attached image is not an input but a mask" in request.prompt
    assert "transparent pixels mark the area to edit" in request.prompt


async def test_a_size_with_a_supported_ratio_asks_for_that_aspect_ratio(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    await upstream.edit(edit_call(size="1536x1024"))
    await upstream.edit(edit_call(size="1000x1001"))
    assert [r.aspect_ratio for r in fake.requests] == ["3:2", None]


async def test_a_result_given_by_file_uri_is_downloaded_with_the_key(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.answer_with_file_uri = True
    output = await upstream.edit(edit_call())
    assert rgba_at(output.image) == CYAN
    assert fake.file_downloads == 1  # the download needs the key: it went along


async def test_an_expired_result_url_is_a_bad_response(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.answer_with_file_uri = True
    fake.file_ttl_s = 0.0  # expired by the time it is fetched
    with pytest.raises(UpstreamBadResponse) as caught:
        await upstream.edit(edit_call())
    assert caught.value.upstream_status == 404
    assert fake.file_downloads == 1
    assert len(fake.requests) == 1


# --- errors -----------------------------------------------------------------------------


async def test_a_missing_key_is_an_auth_failure(
    fake: FakeGemini, session: aiohttp.ClientSession
) -> None:
    upstream = GeminiUpstream(config(fake.base_url, api_key=None), session)
    with pytest.raises(UpstreamRejected) as caught:
        await upstream.edit(edit_call())
    assert (caught.value.upstream_status, caught.value.code) == (403, "upstream_auth_failed")


async def test_a_wrong_key_answered_400_api_key_invalid_is_an_auth_failure(
    fake: FakeGemini, session: aiohttp.ClientSession
) -> None:
    upstream = GeminiUpstream(config(fake.base_url, api_key="wrong"), session)
    with pytest.raises(UpstreamRejected) as caught:
        await upstream.edit(edit_call())
    assert (caught.value.upstream_status, caught.value.code) == (400, "upstream_auth_failed")
    assert "API key not valid" in caught.value.message


@pytest.mark.parametrize(
    ("fault", "kind", "code", "retry_after"),
    [
        (google_error(401), UpstreamRejected, "upstream_auth_failed", None),
        (google_error(403), UpstreamRejected, "upstream_auth_failed", None),
        (google_error(402), InsufficientCredits, "insufficient_credits", None),
        (google_error(429, retry_delay="7s"), UpstreamRateLimited, "rate_limit_exceeded", 7.0),
        (google_error(429, retry_delay="0.5s"), UpstreamRateLimited, "rate_limit_exceeded", 0.5),
        (
            google_error(429, retry_delay="30s", retry_after="3"),
            UpstreamRateLimited,
            "rate_limit_exceeded",
            3.0,
        ),
        (google_error(429), UpstreamRateLimited, "rate_limit_exceeded", None),
        (google_error(500), UpstreamError, "upstream_error", None),
        (google_error(503, retry_after="4"), UpstreamError, "upstream_error", 4.0),
        (google_error(504), UpstreamTimeout, "upstream_timeout", None),
        (google_error(400), UpstreamRejected, "invalid_request_error", None),
        (google_error(404), UpstreamRejected, "invalid_request_error", None),
    ],
)
async def test_error_answers_map_into_the_upstream_error_tree(
    fake: FakeGemini,
    upstream: GeminiUpstream,
    fault: Fault,
    kind: type[UpstreamError],
    code: str,
    retry_after: float | None,
) -> None:
    fake.fail_next(fault)
    with pytest.raises(UpstreamError) as caught:
        await upstream.edit(edit_call())
    assert type(caught.value) is kind
    assert caught.value.code == code
    assert caught.value.upstream_status == fault.http_status
    assert caught.value.retry_after == retry_after
    assert "fake Gemini fault" in caught.value.message
    assert len(fake.requests) == 1


async def test_a_5xx_is_retryable_and_a_4xx_is_not(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.fail_next(google_error(503))
    with pytest.raises(UpstreamError) as server_side:
        await upstream.edit(edit_call())
    assert not isinstance(server_side.value, UpstreamRejected)
    assert rgba_at((await upstream.edit(edit_call())).image) == CYAN  # the next call succeeds


@pytest.mark.parametrize(
    "reason", ["SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"]
)
async def test_a_moderation_finish_reason_is_content_filtered(
    fake: FakeGemini, upstream: GeminiUpstream, reason: str
) -> None:
    fake.fail_next(withheld(reason))
    with pytest.raises(ContentFiltered) as caught:
        await upstream.edit(edit_call())
    assert caught.value.code == "content_filtered"
    assert reason in caught.value.message
    assert len(fake.requests) == 1


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "OTHER"])
async def test_a_blocked_prompt_is_content_filtered(
    fake: FakeGemini, upstream: GeminiUpstream, reason: str
) -> None:
    fake.fail_next(blocked_prompt(reason))
    with pytest.raises(ContentFiltered) as caught:
        await upstream.edit(edit_call())
    assert reason in caught.value.message


async def test_a_text_only_answer_is_a_bad_response(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.fail_next(text_only("I would rather describe it"))
    with pytest.raises(UpstreamBadResponse) as caught:
        await upstream.edit(edit_call())
    assert not isinstance(caught.value, ContentFiltered)
    assert "without an image" in caught.value.message
    assert "I would rather describe it" in caught.value.message


async def test_a_finish_reason_without_moderation_and_no_image_is_a_bad_response(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.fail_next(withheld("NO_IMAGE"))
    with pytest.raises(UpstreamBadResponse) as caught:
        await upstream.edit(edit_call())
    assert "NO_IMAGE" in caught.value.message


async def test_a_200_that_is_not_json_is_a_bad_response(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.fail_next(Fault.malformed())
    with pytest.raises(UpstreamBadResponse):
        await upstream.edit(edit_call())


async def test_slow_processing_past_the_calls_time_is_a_timeout(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.latency_s = 5.0
    with pytest.raises(UpstreamTimeout):
        await upstream.edit(edit_call(timeout_s=0.3))


async def test_a_dropped_connection_is_a_retryable_upstream_error(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.fail_next(Fault.disconnect())
    with pytest.raises(UpstreamError) as caught:
        await upstream.edit(edit_call())
    assert not isinstance(caught.value, UpstreamRejected | UpstreamBadResponse)


async def test_the_fake_counts_submissions_and_calls_in_flight(
    fake: FakeGemini, upstream: GeminiUpstream
) -> None:
    fake.latency_s = 0.3
    outputs = await asyncio.gather(*(upstream.edit(edit_call()) for _ in range(3)))
    assert [rgba_at(o.image) for o in outputs] == [CYAN] * 3
    assert (len(fake.requests), fake.max_in_flight, fake.in_flight) == (3, 3, 0)


async def test_the_registry_builds_the_gemini_kind(session: aiohttp.ClientSession) -> None:
    with ThreadPoolExecutor(1) as executor:
        built = build_upstream(config("http://127.0.0.1:9"), session, executor)
    assert isinstance(built, GeminiUpstream)
    assert built.name == "gemini"


# --- pure parts -------------------------------------------------------------------------


def test_durations_in_protobuf_json() -> None:
    assert [duration_s(v) for v in ("38s", "0.25s", "58.93s", "-1s")] == [38, 0.25, 58.93, 0]
    assert [duration_s(v) for v in ("38", "soon", None, 3, "nans")] == [None] * 5


def test_aspect_ratios_only_when_exact() -> None:
    sizes = ("1024x1024", "1024x1536", "1920x1080", "1000x999", "auto", None, "0x5")
    assert [aspect_ratio(s) for s in sizes] == ["1:1", "2:3", "16:9", None, None, None, None]


def test_a_retry_delay_is_the_hint_only_without_a_retry_after_header() -> None:
    body = json.dumps(
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"},
                ],
            }
        }
    ).encode()
    assert gemini_error(429, body, None).retry_after == 38
    assert gemini_error(429, body, "2").retry_after == 2
    assert gemini_error(429, b"not json", None).retry_after is None


def test_parse_answer_takes_snake_case_parts_and_skips_non_images() -> None:
    image = base64.b64encode(solid_png()).decode()
    body = json.dumps(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"text": "sure"},
                            {"inline_data": {"mime_type": "text/plain", "data": "aGk="}},
                            {"inline_data": {"mime_type": "image/png", "data": image}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ]
        }
    ).encode()
    answer = parse_answer(body, 200)
    assert answer.image == solid_png()
    assert answer.usage is None


@pytest.mark.parametrize(
    "document",
    [[], {"candidates": []}, {"candidates": [{"content": {"parts": "x"}}]}, {"other": 1}],
)
def test_parse_answer_refuses_answers_without_an_image(document: object) -> None:
    with pytest.raises(UpstreamBadResponse):
        parse_answer(json.dumps(document).encode(), 200)


def test_usage_metadata_without_a_prompt_count_is_no_usage() -> None:
    assert usage_from_metadata({"totalTokenCount": 5}) is None
    assert usage_from_metadata(None) is None
    usage = usage_from_metadata({"promptTokenCount": 3, "candidatesTokenCount": True})
    assert usage == Usage(input_tokens=3, output_tokens=0, total_tokens=3)
