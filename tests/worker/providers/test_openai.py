"""The OpenAI-compatible adapter against the fake upstream over real HTTP, and its pure parts."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from PIL import Image

from app.core.jobs import Usage
from app.errors import (
    InsufficientCredits,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from tests.support.adapters import upstream_config
from tests.support.fakes.upstream import FakeUpstream, Fault, estimated_usage
from tests.support.fakes.upstream_edits import check_edit_request
from tests.support.images import rgba_at, solid_png
from worker.providers.base import EditCall, InputImage
from worker.providers.http import client as http_upstream_module
from worker.providers.http.errors import (
    MAX_MESSAGE_CHARS,
    error_for_status,
    parse_error_body,
    parse_retry_after,
)
from worker.providers.openai import (
    OpenAIUpstream,
    edits_url,
    parse_edit_response,
    usage_from,
)

RED = (255, 0, 0, 255)
CYAN = (0, 255, 255, 255)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, "JPEG")
    return buffer.getvalue()


def half_mask() -> bytes:
    """An 8x8 mask whose left half is transparent (to edit) and right half opaque (to keep)."""
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 4, 8))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def edit_call(**changes: object) -> EditCall:
    fields: dict[str, object] = {
        "model": "gpt-image-1",
        "prompt": "invert the colours",
        "images": (InputImage(solid_png(), "image/png"),),
        "timeout_s": 10.0,
    }
    fields.update(changes)
    return EditCall(**fields)  # type: ignore[arg-type]


def adapter(
    session: aiohttp.ClientSession, base_url: str, api_key: str | None = None
) -> OpenAIUpstream:
    return OpenAIUpstream(upstream_config("openai", base_url, api_key, name="fake"), session)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream(fake: FakeUpstream, session: aiohttp.ClientSession) -> OpenAIUpstream:
    return adapter(session, fake.base_url)


# --- requests as sent -------------------------------------------------------------------


async def test_one_image_goes_in_field_image_and_comes_back_edited(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    output = await upstream.edit(edit_call())

    assert rgba_at(output.image, (0, 0)) == CYAN
    [request] = fake.requests
    assert request.body_format == "multipart"
    assert (request.model, request.prompt) == ("gpt-image-1", "invert the colours")
    assert request.image_fields == ["image"]
    assert [(u.filename, u.content_type) for u in request.uploads] == [("image-0.png", "image/png")]
    assert request.images == [solid_png()]
    assert request.fields["n"] == "1"
    assert not request.has_mask


async def test_several_images_go_in_repeated_image_brackets(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    images = (
        InputImage(solid_png(), "image/png"),
        InputImage(jpeg(), "image/jpeg"),
        InputImage(solid_png((0, 255, 0, 255)), "image/png"),
    )

    await upstream.edit(edit_call(images=images))

    [request] = fake.requests
    assert request.image_fields == ["image[]"] * 3
    assert [(u.filename, u.content_type) for u in request.uploads] == [
        ("image-0.png", "image/png"),
        ("image-1.jpeg", "image/jpeg"),
        ("image-2.png", "image/png"),
    ]
    assert request.images == [image.data for image in images]


async def test_mask_is_sent_as_a_file_part(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    output = await upstream.edit(edit_call(mask=InputImage(half_mask(), "image/png")))

    [request] = fake.requests
    assert request.mask == half_mask()
    assert [u.filename for u in request.uploads if u.field == "mask"] == ["mask.png"]
    assert rgba_at(output.image, (1, 4)) == CYAN  # transparent in the mask: edited
    assert rgba_at(output.image, (6, 4)) == RED  # opaque in the mask: kept


async def test_optional_fields_are_sent_only_when_set(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    await upstream.edit(edit_call())
    output = await upstream.edit(
        edit_call(
            size="16x12",
            quality="low",
            background="opaque",
            output_format="jpeg",
            output_compression=50,
            user="user-7",
        )
    )

    plain, full = fake.requests
    assert set(plain.fields) == {"model", "prompt", "n", "output_format"}
    assert {key: full.fields[key] for key in full.fields if key not in plain.fields} == {
        "size": "16x12",
        "quality": "low",
        "background": "opaque",
        "output_compression": "50",
        "user": "user-7",
    }
    assert full.fields["output_format"] == "jpeg"
    result = Image.open(io.BytesIO(output.image))
    assert (result.format, result.size) == ("JPEG", (16, 12))


async def test_api_key_is_sent_as_bearer_token(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.api_key = "sk-fake"

    await adapter(session, fake.base_url, api_key="sk-fake").edit(edit_call())

    assert fake.requests[0].authorization == "Bearer sk-fake"


async def test_no_api_key_means_no_authorization_header(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    await upstream.edit(edit_call())

    assert fake.requests[0].authorization is None


async def test_base_url_with_trailing_slash(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    await adapter(session, fake.base_url + "/").edit(edit_call())

    assert len(fake.requests) == 1


# --- answers ---------------------------------------------------------------------------


async def test_url_answer_is_downloaded(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    fake.respond_with_url = True

    output = await upstream.edit(edit_call())

    assert rgba_at(output.image, (3, 3)) == CYAN


async def test_images_usage_is_reported(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    call = edit_call()

    output = await upstream.edit(call)

    expected = estimated_usage(check_edit_request(fake.requests[0]), (8, 8))
    assert output.usage == Usage.model_validate(expected)
    assert output.usage is not None and output.usage.input_tokens_details["image_tokens"] == 85


async def test_chat_style_usage_is_mapped(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    fake.usage = {"prompt_tokens": 1809, "completion_tokens": 7106, "total_tokens": 8915}

    output = await upstream.edit(edit_call())

    assert output.usage is not None
    assert (output.usage.input_tokens, output.usage.output_tokens) == (1809, 7106)
    assert output.usage.total_tokens == 8915


async def test_missing_usage_is_none(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    fake.usage = None

    output = await upstream.edit(edit_call())

    assert output.usage is None
    assert output.image


async def test_close_leaves_the_shared_session_open(
    upstream: OpenAIUpstream, session: aiohttp.ClientSession
) -> None:
    await upstream.close()

    assert not session.closed


# --- faults ----------------------------------------------------------------------------


async def test_429_with_retry_after_seconds(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    fake.fail_next(Fault.status(429, retry_after="2", message="slow down"))

    with pytest.raises(UpstreamRateLimited) as caught:
        await upstream.edit(edit_call())

    assert caught.value.retry_after == 2.0
    assert caught.value.upstream_status == 429
    assert "slow down" in caught.value.message


async def test_429_with_retry_after_http_date(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    later = datetime.now(UTC) + timedelta(seconds=60)
    fake.fail_next(Fault.status(429, retry_after=format_datetime(later, usegmt=True)))

    with pytest.raises(UpstreamRateLimited) as caught:
        await upstream.edit(edit_call())

    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 60


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (500, UpstreamError, "upstream_error"),
        (502, UpstreamError, "upstream_error"),
        (529, UpstreamError, "upstream_error"),
        (408, UpstreamTimeout, "upstream_timeout"),
        (504, UpstreamTimeout, "upstream_timeout"),
        (401, UpstreamRejected, "upstream_auth_failed"),
        (403, UpstreamRejected, "upstream_auth_failed"),
        (402, InsufficientCredits, "insufficient_credits"),
        (404, UpstreamRejected, "invalid_request_error"),
        (413, UpstreamRejected, "payload_too_large"),
        (422, UpstreamRejected, "invalid_request_error"),
    ],
)
async def test_error_status_maps_to_exception(
    fake: FakeUpstream,
    upstream: OpenAIUpstream,
    status: int,
    kind: type[UpstreamError],
    code: str,
) -> None:
    fake.fail_next(Fault.status(status, message=f"fault {status}"))

    with pytest.raises(UpstreamError) as caught:
        await upstream.edit(edit_call())

    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.upstream_status) == (code, status)
    assert f"fault {status}" in caught.value.message


async def test_400_keeps_the_upstream_code_and_message(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(
        Fault.json_error(400, code="model_capability_mismatch", message="cannot edit images")
    )

    with pytest.raises(UpstreamRejected) as caught:
        await upstream.edit(edit_call())

    assert caught.value.code == "model_capability_mismatch"
    assert caught.value.upstream_status == 400
    assert "cannot edit images" in caught.value.message


async def test_router_error_shape_keeps_message_and_origin(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    body = {"error": {"origin": "provider", "message": "prompt too long"}}
    fake.fail_next(Fault.raw(400, json.dumps(body), content_type="application/json"))

    with pytest.raises(UpstreamRejected) as caught:
        await upstream.edit(edit_call())

    assert caught.value.code == "invalid_request_error"
    assert "prompt too long" in caught.value.message
    assert "provider" in caught.value.message


async def test_text_error_body_is_kept_truncated(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(Fault.raw(503, "Service Unavailable " + "x" * 5000, content_type="text/html"))

    with pytest.raises(UpstreamError) as caught:
        await upstream.edit(edit_call())

    assert caught.value.upstream_status == 503
    assert "Service Unavailable" in caught.value.message
    assert len(caught.value.message) < MAX_MESSAGE_CHARS + 100


async def test_wrong_api_key_is_rejected_as_auth_failure(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    fake.api_key = "sk-right"

    with pytest.raises(UpstreamRejected) as caught:
        await adapter(session, fake.base_url, api_key="sk-wrong").edit(edit_call())

    assert (caught.value.code, caught.value.upstream_status) == ("upstream_auth_failed", 401)
    assert "incorrect API key" in caught.value.message


async def test_hang_past_the_call_timeout_is_a_timeout(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(Fault.hang(10))
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout) as caught:
        await upstream.edit(edit_call(timeout_s=0.3))

    assert time.monotonic() - started < 2
    assert caught.value.upstream_status is None
    await fake.wait_idle()  # the fake saw the client go away


async def test_latency_within_the_timeout_succeeds(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.latency_s = 0.2

    output = await upstream.edit(edit_call(timeout_s=5))

    assert output.image


@pytest.mark.parametrize(
    "fault",
    [
        Fault.malformed(),
        Fault.bad_base64(),
        Fault.raw(200, '{"created": 1, "data": []}', content_type="application/json"),
        Fault.raw(200, '{"created": 1, "data": [{"b64_json": ""}]}'),
        Fault.raw(200, '{"error": {"message": "content policy"}}'),
        Fault.raw(200, ""),
    ],
    ids=["not-json", "bad-base64", "no-data", "empty-image", "error-in-200", "empty-body"],
)
async def test_malformed_success_is_a_bad_response(
    fake: FakeUpstream, upstream: OpenAIUpstream, fault: Fault
) -> None:
    fake.fail_next(fault)

    with pytest.raises(UpstreamBadResponse) as caught:
        await upstream.edit(edit_call())

    assert caught.value.upstream_status == 200


async def test_valid_base64_that_is_no_image_passes_through(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(Fault.bad_image())

    output = await upstream.edit(edit_call())

    assert output.image == b"this is not an image"


async def test_oversized_answer_is_a_bad_response(
    fake: FakeUpstream, upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_upstream_module, "MAX_RESPONSE_BYTES", 100)

    with pytest.raises(UpstreamBadResponse, match="larger than 100 bytes"):
        await upstream.edit(edit_call())


async def test_dropped_connection_is_an_upstream_error(
    fake: FakeUpstream, upstream: OpenAIUpstream
) -> None:
    fake.fail_next(Fault.disconnect())

    with pytest.raises(UpstreamError) as caught:
        await upstream.edit(edit_call())

    assert type(caught.value) is UpstreamError
    assert caught.value.upstream_status is None


async def test_connection_refused_is_unreachable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(UpstreamError) as caught:
        await adapter(session, f"http://127.0.0.1:{port}/v1").edit(edit_call())

    assert type(caught.value) is UpstreamError
    assert (caught.value.code, caught.value.upstream_status) == ("upstream_unreachable", None)


async def test_faults_are_consumed_in_order(fake: FakeUpstream, upstream: OpenAIUpstream) -> None:
    fake.fail_next(Fault.status(500), Fault.status(429))

    with pytest.raises(UpstreamError):
        await upstream.edit(edit_call())
    with pytest.raises(UpstreamRateLimited):
        await upstream.edit(edit_call())
    output = await upstream.edit(edit_call())

    assert output.image
    assert [request.status for request in fake.requests] == [500, 429, 200]
    assert fake.pending_faults == 0


# --- pure helpers ----------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 11:59:00 GMT", 0.0),
        ("Wed, 01 Jan 2025 12:01:00 -0000", 60.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def coded(code: str) -> bytes:
    return json.dumps({"error": {"message": "m", "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (429, b"", UpstreamRateLimited, "rate_limit_exceeded"),
        (429, coded("insufficient_quota"), InsufficientCredits, "insufficient_credits"),
        (408, b"", UpstreamTimeout, "upstream_timeout"),
        (504, b"", UpstreamTimeout, "upstream_timeout"),
        (500, b"", UpstreamError, "upstream_error"),
        (529, b"", UpstreamError, "upstream_error"),
        (400, coded("model_capability_mismatch"), UpstreamRejected, "model_capability_mismatch"),
        (400, coded("invalid_request_error"), UpstreamRejected, "invalid_request_error"),
        (400, coded("content_policy"), UpstreamRejected, "invalid_request_error"),
        (404, b"", UpstreamRejected, "invalid_request_error"),
        (422, b"", UpstreamRejected, "invalid_request_error"),
        (409, b"", UpstreamRejected, "invalid_request_error"),
        (401, coded("invalid_api_key"), UpstreamRejected, "upstream_auth_failed"),
        (403, b"", UpstreamRejected, "upstream_auth_failed"),
        (402, b"", InsufficientCredits, "insufficient_credits"),
        (413, b"", UpstreamRejected, "payload_too_large"),
        (302, b"", UpstreamBadResponse, "upstream_error"),
    ],
)
def test_error_for_status(status: int, body: bytes, kind: type[UpstreamError], code: str) -> None:
    error = error_for_status(status, body, "7", now=NOW)

    assert type(error) is kind
    assert (error.code, error.upstream_status) == (code, status)


def test_error_for_status_passes_retry_after_to_rate_limits_and_5xx() -> None:
    assert error_for_status(429, b"", "7").retry_after == 7.0
    assert error_for_status(503, b"", "3").retry_after == 3.0
    assert error_for_status(429, b"").retry_after is None


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            b'{"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}',
            "bad",
            "x",
        ),
        (
            b'{"error": {"origin": "router", "message": "no route"}}',
            "no route (origin: router)",
            None,
        ),
        (b'{"error": "plain words"}', "plain words", None),
        (b'{"title": "Unauthenticated", "detail": "no token", "status": 401}', "no token", None),
        (b'{"detail": [{"msg": "x"}]}', '{"detail": [{"msg": "x"}]}', None),
        (b'{"other": "shape"}', '{"other": "shape"}', None),
        (b"  gateway exploded  ", "gateway exploded", None),
        (b"\xff\xfe", "\ufffd\ufffd", None),
        (b"", "HTTP 418", None),
    ],
)
def test_parse_error_body(body: bytes, message: str, code: str | None) -> None:
    error = parse_error_body(body, 418)

    assert (error.message, error.code) == (message, code)


def test_parse_error_body_truncates_long_messages() -> None:
    error = parse_error_body(json.dumps({"error": {"message": "m" * 10_000}}).encode(), 400)

    assert len(error.message) == MAX_MESSAGE_CHARS
    assert error.message.endswith("…")


def test_usage_from_images_shape_keeps_details_and_extras() -> None:
    usage = usage_from(
        {
            "total_tokens": 100,
            "input_tokens": 40,
            "output_tokens": 60,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 30},
            "cost": 0.25,
            "junk": "dropped",
        }
    )

    assert usage is not None
    assert (usage.total_tokens, usage.input_tokens, usage.output_tokens) == (100, 40, 60)
    assert usage.input_tokens_details == {"text_tokens": 10, "image_tokens": 30}
    assert usage.model_extra == {"cost": 0.25}


def test_usage_from_chat_shape_derives_missing_total() -> None:
    usage = usage_from({"prompt_tokens": 5, "completion_tokens": 7})

    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 7, 12)


@pytest.mark.parametrize("raw", [None, [], "usage", {}, {"cost": 1}])
def test_usage_from_without_token_counts_is_none(raw: object) -> None:
    assert usage_from(raw) is None


def test_usage_from_ignores_counts_of_the_wrong_type() -> None:
    usage = usage_from({"input_tokens": "many", "output_tokens": True, "total_tokens": -3})

    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (0, 0, 0)


def test_parse_edit_response_tolerates_wrapped_base64_and_data_urls() -> None:
    encoded = base64.b64encode(b"image bytes").decode()
    wrapped = json.dumps({"data": [{"b64_json": encoded[:6] + "\n" + encoded[6:]}]})
    data_url = json.dumps({"data": [{"url": "data:image/png;base64," + encoded}]})

    assert parse_edit_response(wrapped.encode(), 200).image == b"image bytes"
    assert parse_edit_response(data_url.encode(), 200).image == b"image bytes"


def test_parse_edit_response_returns_a_url_to_download() -> None:
    body = json.dumps({"data": [{"url": "https://cdn.example/x.png"}]}).encode()

    answer = parse_edit_response(body, 200)

    assert (answer.image, answer.url) == (None, "https://cdn.example/x.png")


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://host:8000/v1", "http://host:8000/v1/images/edits"),
        ("http://host:8000/v1/", "http://host:8000/v1/images/edits"),
        ("https://api.example.com/openai/v1//", "https://api.example.com/openai/v1/images/edits"),
    ],
)
def test_edits_url(base_url: str, expected: str) -> None:
    assert edits_url(base_url) == expected
