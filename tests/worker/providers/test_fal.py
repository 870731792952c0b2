"""The fal adapter against the fake fal queue over real HTTP, and fal's answers read."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import ImageChops
from pydantic import SecretStr

from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import (
    ContentFiltered,
    InsufficientCredits,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from tests.support import adapters
from tests.support.adapters import failure, poll_until_done
from tests.support.fakes.fal import FakeFal, FalAnswer, Outcome
from tests.support.images import data_url, decode, mask, png
from worker.providers.base import (
    EditCall,
    EditOutput,
    InputImage,
    PollFailed,
    PollPending,
    UpstreamHandle,
)
from worker.providers.fal import FalUpstream
from worker.providers.fal_answers import fal_error, read_detail, read_status
from worker.providers.registry import build_async_upstream

KEY = "fal-test-key"
MODEL = "fal-ai/flux-pro/kontext"


def upstream_config(fake: FakeFal, **changes: Any) -> UpstreamConfig:
    return adapters.upstream_config("fal", fake.base_url, KEY, timeout_s=10.0, **changes)


def entry(**changes: Any) -> ModelConfig:
    fields: dict[str, Any] = {"id": "kontext", "upstream": "fal", "upstream_model": MODEL}
    fields.update(changes)
    return ModelConfig.model_validate(fields)


def edit_call(**changes: Any) -> EditCall:
    fields: dict[str, Any] = {
        "model": MODEL,
        "prompt": "invert the colours",
        "images": (InputImage(png(), "image/png"),),
        "timeout_s": 10.0,
        "model_entry": entry(),
    }
    fields.update(changes)
    return EditCall(**fields)


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal(api_key=KEY) as server:
        yield server


@pytest.fixture
def fal(fake: FakeFal, session: aiohttp.ClientSession) -> FalUpstream:
    return FalUpstream(upstream_config(fake), session)


def inverted(data: bytes) -> bytes:
    """What the fake's edit makes of an RGB image without a mask, as raw pixels."""
    return ImageChops.invert(decode(data).convert("RGB")).tobytes()


# --- a whole edit ------------------------------------------------------------------------


async def test_an_edit_is_queued_polled_and_its_image_downloaded(
    fake: FakeFal, fal: FalUpstream
) -> None:
    fake.queue_s, fake.processing_s = 0.1, 0.1
    source = png()
    handle = await fal.submit(edit_call(images=(InputImage(source, "image/png"),)))

    assert fake.submissions == 1
    queued = fake.queued[handle.request_id]
    assert handle.poll_url.endswith(
        f"/{MODEL.rsplit('/', 1)[0]}/requests/{handle.request_id}/status"
    )
    assert handle.result_url and handle.cancel_url
    path, headers, body = fake.requests[0]
    assert path == f"/{MODEL}" and queued.path == "kontext"
    assert headers["Authorization"] == f"Key {KEY}"
    assert body["prompt"] == "invert the colours" and body["num_images"] == 1
    assert body["image_url"] == "data:image/png;base64," + base64.b64encode(source).decode()
    assert "image_urls" not in body and "mask_url" not in body

    first = await fal.poll(handle)
    assert first == PollPending(queue_position=0)
    result = await poll_until_done(fal, handle)

    assert isinstance(result, EditOutput)
    assert decode(result.image).convert("RGB").tobytes() == inverted(source)
    assert result.usage is None  # fal reports no token usage for image models
    assert queued.polls >= 2  # it was seen queued, then finished


async def test_in_progress_is_pending_without_a_queue_position(
    fake: FakeFal, fal: FalUpstream
) -> None:
    fake.processing_s = 5.0
    handle = await fal.submit(edit_call())
    assert await fal.poll(handle) == PollPending(queue_position=None)


async def test_queue_position_counts_the_requests_ahead(fake: FakeFal, fal: FalUpstream) -> None:
    fake.queue_s = 5.0
    handles = [await fal.submit(edit_call()) for _ in range(3)]
    positions = [await fal.poll(handle) for handle in handles]
    assert positions == [PollPending(queue_position=n) for n in range(3)]


async def test_slow_processing_stays_pending_until_done(fake: FakeFal, fal: FalUpstream) -> None:
    fake.processing_s = 0.4
    handle = await fal.submit(edit_call())
    started = asyncio.get_running_loop().time()
    result = await poll_until_done(fal, handle)
    assert isinstance(result, EditOutput)
    assert asyncio.get_running_loop().time() - started >= 0.35
    assert fake.queued[handle.request_id].polls >= 3


async def test_another_adapter_resumes_a_handle_without_resubmitting(
    fake: FakeFal, fal: FalUpstream, session: aiohttp.ClientSession
) -> None:
    fake.processing_s = 0.2
    handle = await fal.submit(edit_call())
    stored = json.loads(json.dumps(handle.__dict__))  # handles are kept in the job as JSON
    async with aiohttp.ClientSession() as other_session:
        other = build_async_upstream(upstream_config(fake), other_session)
        result = await poll_until_done(other, UpstreamHandle(**stored))
    assert isinstance(result, EditOutput)
    assert fake.submissions == 1


async def test_the_fake_counts_submissions_and_the_most_in_flight(
    fake: FakeFal, fal: FalUpstream
) -> None:
    fake.processing_s = 0.3
    handles = await asyncio.gather(*(fal.submit(edit_call()) for _ in range(4)))
    assert fake.submissions == 4 and fake.in_flight == 4
    results = await asyncio.gather(*(poll_until_done(fal, handle) for handle in handles))
    assert all(isinstance(result, EditOutput) for result in results)
    assert fake.in_flight == 0 and fake.max_in_flight == 4


async def test_an_inline_data_uri_result_needs_no_download(fake: FakeFal, fal: FalUpstream) -> None:
    fake.inline_results = True
    result = await poll_until_done(fal, await fal.submit(edit_call()))
    assert isinstance(result, EditOutput)
    assert decode(result.image).convert("RGB").tobytes() == inverted(png())
    assert fake.file_downloads() == []


async def test_usage_is_kept_where_the_model_reports_it(fake: FakeFal, fal: FalUpstream) -> None:
    image = png(color=(1, 2, 3))
    document = {
        "images": [{"url": data_url(image), "content_type": "image/png"}],
        "usage": {"input_tokens": 300, "output_tokens": 1056, "total_tokens": 1356},
    }
    fake.end_next(Outcome(FalAnswer(200, json.dumps(document).encode())))
    result = await poll_until_done(fal, await fal.submit(edit_call()))
    assert isinstance(result, EditOutput) and result.image == image
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (300, 1056)


async def test_the_key_never_goes_to_the_result_image_origin(
    fake: FakeFal, fal: FalUpstream
) -> None:
    result = await poll_until_done(fal, await fal.submit(edit_call()))
    assert isinstance(result, EditOutput)
    downloads = fake.file_downloads()
    assert len(downloads) == 1 and "Authorization" not in downloads[0]


async def test_output_format_is_png_unless_jpeg_was_asked(fake: FakeFal, fal: FalUpstream) -> None:
    for asked, sent in (("jpeg", "jpeg"), ("webp", "png"), ("png", "png")):
        result = await poll_until_done(fal, await fal.submit(edit_call(output_format=asked)))
        assert isinstance(result, EditOutput)
        assert fake.requests[-1][2]["output_format"] == sent
        assert decode(result.image).format == sent.upper()


# --- inputs ------------------------------------------------------------------------------


async def test_url_input_transfer_sends_the_presigned_url(fake: FakeFal, fal: FalUpstream) -> None:
    source = png(color=(10, 200, 30))
    url = fake.serve(source)
    result = await poll_until_done(
        fal, await fal.submit(edit_call(images=(InputImage(b"", "image/png", url=url),)))
    )
    assert fake.requests[0][2]["image_url"] == url
    assert isinstance(result, EditOutput)
    assert decode(result.image).convert("RGB").tobytes() == inverted(source)


async def test_a_plural_image_field_takes_every_image_as_a_list(
    fake: FakeFal, fal: FalUpstream
) -> None:
    url = fake.serve(png(color=(0, 0, 250)))
    call = edit_call(
        model="fal-ai/nano-banana/edit",
        images=(InputImage(png(), "image/png"), InputImage(b"", "image/png", url=url)),
        model_entry=entry(image_field="image_urls", prompt_field="prompt", max_images=4),
    )
    result = await poll_until_done(fal, await fal.submit(call))
    path, _, body = fake.requests[0]
    assert path == "/fal-ai/nano-banana/edit"
    assert isinstance(body["image_urls"], list) and len(body["image_urls"]) == 2
    assert (
        body["image_urls"][0].startswith("data:image/png;base64,") and body["image_urls"][1] == url
    )
    assert "image_url" not in body
    assert isinstance(result, EditOutput)


async def test_more_images_than_the_model_takes_are_refused_before_submitting(
    fake: FakeFal, fal: FalUpstream
) -> None:
    two = (InputImage(png(), "image/png"), InputImage(png(), "image/png"))
    with pytest.raises(UpstreamRejected, match="at most 1") as caught:
        await fal.submit(edit_call(images=two))
    assert caught.value.code == "invalid_request_error"
    plural = entry(image_field="image_urls", max_images=1)
    with pytest.raises(UpstreamRejected, match="at most 1"):
        await fal.submit(edit_call(images=two, model_entry=plural))
    assert fake.requests == []


async def test_the_mask_goes_as_mask_url_and_limits_the_edit(
    fake: FakeFal, fal: FalUpstream
) -> None:
    result = await poll_until_done(
        fal, await fal.submit(edit_call(mask=InputImage(mask(), "image/png")))
    )
    assert fake.requests[0][2]["mask_url"].startswith("data:image/png;base64,")
    assert isinstance(result, EditOutput)
    edited = decode(result.image).convert("RGB")
    original = decode(png()).convert("RGB")
    assert edited.getpixel((5, 20)) != original.getpixel((5, 20))  # transparent: edited
    assert edited.getpixel((50, 20)) == original.getpixel((50, 20))  # opaque: kept


async def test_an_opaque_edits_upstream_gets_the_mask_inverted(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fal = FalUpstream(upstream_config(fake, mask_convention="opaque_edits"), session)
    result = await poll_until_done(
        fal, await fal.submit(edit_call(mask=InputImage(mask(), "image/png")))
    )
    assert isinstance(result, EditOutput)
    edited = decode(result.image).convert("RGB")
    original = decode(png()).convert("RGB")
    # The fake edits where the mask it receives is transparent: now the right half.
    assert edited.getpixel((5, 20)) == original.getpixel((5, 20))
    assert edited.getpixel((50, 20)) != original.getpixel((50, 20))


async def test_a_mask_by_url_that_must_be_converted_is_refused_clearly(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fal = FalUpstream(upstream_config(fake, mask_convention="opaque_edits"), session)
    by_url = InputImage(b"", "image/png", url=fake.serve(mask()))
    with pytest.raises(UpstreamRejected, match='input_transfer = "inline"'):
        await fal.submit(edit_call(mask=by_url))
    assert fake.requests == []


async def test_without_mask_support_the_mask_is_the_last_image(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fal = FalUpstream(upstream_config(fake, supports_mask=False), session)
    call = edit_call(
        mask=InputImage(mask(), "image/png"),
        model_entry=entry(image_field="image_urls", max_images=2),
    )
    await fal.submit(call)
    body = fake.requests[0][2]
    assert len(body["image_urls"]) == 2 and "mask_url" not in body
    assert "mask" in body["prompt"]


async def test_a_mask_for_a_one_image_model_without_mask_support_is_refused(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fal = FalUpstream(upstream_config(fake, supports_mask=False), session)
    with pytest.raises(UpstreamRejected, match="the mask is one of them"):
        await fal.submit(edit_call(mask=InputImage(mask(), "image/png")))
    assert fake.requests == []


async def test_a_handle_without_its_result_url_reads_it_beside_the_status(
    fake: FakeFal, fal: FalUpstream
) -> None:
    handle = await fal.submit(edit_call())
    bare = UpstreamHandle(request_id=handle.request_id, poll_url=handle.poll_url)
    assert isinstance(await poll_until_done(fal, bare), EditOutput)


async def test_a_model_refusing_the_input_fails_the_edit(fake: FakeFal, fal: FalUpstream) -> None:
    call = edit_call(model_entry=entry(prompt_field="text"))  # the fake's model needs prompt
    error = failure(await poll_until_done(fal, await fal.submit(call)))
    assert isinstance(error, UpstreamRejected) and error.code == "invalid_request_error"
    assert error.upstream_status == 422 and "prompt" in error.message


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "code"),
    [
        (
            FalAnswer.error(401, "No user found for Key ID and Secret"),
            UpstreamRejected,
            "upstream_auth_failed",
        ),
        (FalAnswer.error(403, "Forbidden"), UpstreamRejected, "upstream_auth_failed"),
        (
            FalAnswer.error(403, "User is locked. Reason: Exhausted balance. Top up your balance"),
            InsufficientCredits,
            "insufficient_credits",
        ),
        (FalAnswer.error(402, "Payment required"), InsufficientCredits, "insufficient_credits"),
        (
            FalAnswer.model_error(422, "value_error", "bad seed", loc=("body", "seed")),
            UpstreamRejected,
            "invalid_request_error",
        ),
        (
            FalAnswer.error(500, "internal", error_type="internal_error"),
            UpstreamError,
            "upstream_error",
        ),
        (
            FalAnswer.error(503, "no runner", error_type="runner_scheduling_failure"),
            UpstreamError,
            "upstream_error",
        ),
        (
            FalAnswer.error(504, "timed out", error_type="request_timeout"),
            UpstreamTimeout,
            "upstream_timeout",
        ),
        (FalAnswer.raw(502, "<html>bad gateway</html>"), UpstreamError, "upstream_error"),
    ],
)
async def test_a_refused_submission_raises_its_mapped_error(
    fake: FakeFal, fal: FalUpstream, answer: FalAnswer, kind: type[UpstreamError], code: str
) -> None:
    fake.fail_next("submit", answer)
    with pytest.raises(UpstreamError) as caught:
        await fal.submit(edit_call())
    assert type(caught.value) is kind
    assert caught.value.code == code and caught.value.upstream_status == answer.status
    assert fake.submissions == 0


async def test_a_wrong_key_is_refused_by_the_fake_itself(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fal = FalUpstream(upstream_config(fake, api_key=SecretStr("wrong")), session)
    with pytest.raises(UpstreamRejected) as caught:
        await fal.submit(edit_call())
    assert caught.value.code == "upstream_auth_failed" and "No user found" in caught.value.message


async def test_429_on_submit_carries_the_retry_hint(fake: FakeFal, fal: FalUpstream) -> None:
    fake.fail_next("submit", FalAnswer.error(429, "Too many requests", retry_after="7"))
    with pytest.raises(UpstreamRateLimited) as caught:
        await fal.submit(edit_call())
    assert caught.value.retry_after == 7.0 and fake.submissions == 0
    handle = await fal.submit(edit_call())  # the next one goes through
    assert fake.submissions == 1 and handle.request_id in fake.queued


async def test_asking_that_fails_raises_and_the_next_poll_succeeds(
    fake: FakeFal, fal: FalUpstream
) -> None:
    handle = await fal.submit(edit_call())
    fake.fail_next(
        "status",
        FalAnswer.error(429, "Too many requests", retry_after="3"),
        FalAnswer.error(503, "unavailable"),
        FalAnswer.error(401, "No user found for Key ID and Secret"),
    )
    with pytest.raises(UpstreamRateLimited) as limited:
        await fal.poll(handle)
    assert limited.value.retry_after == 3.0
    with pytest.raises(UpstreamError) as unavailable:
        await fal.poll(handle)
    assert not isinstance(unavailable.value, UpstreamRejected)
    with pytest.raises(UpstreamRejected) as refused:
        await fal.poll(handle)
    assert refused.value.code == "upstream_auth_failed"
    assert isinstance(await poll_until_done(fal, handle), EditOutput)
    assert fake.submissions == 1


async def test_a_result_request_answering_5xx_is_asked_again(
    fake: FakeFal, fal: FalUpstream
) -> None:
    handle = await fal.submit(edit_call())
    fake.fail_next("result", FalAnswer.error(502, "bad gateway"))
    with pytest.raises(UpstreamError):
        await fal.poll(handle)
    assert isinstance(await fal.poll(handle), EditOutput)


async def test_a_runner_failure_fails_the_edit_as_retryable(
    fake: FakeFal, fal: FalUpstream
) -> None:
    fake.end_next(Outcome.failing(500, "CUDA out of memory", "runner_server_error"))
    error = failure(await poll_until_done(fal, await fal.submit(edit_call())))
    assert type(error) is UpstreamError and "CUDA out of memory" in error.message


async def test_a_timed_out_request_fails_as_a_timeout(fake: FakeFal, fal: FalUpstream) -> None:
    fake.end_next(Outcome.failing(504, "Request timed out", "request_timeout"))
    error = failure(await poll_until_done(fal, await fal.submit(edit_call())))
    assert isinstance(error, UpstreamTimeout)


async def test_a_request_fal_no_longer_knows_fails(fake: FakeFal, fal: FalUpstream) -> None:
    handle = await fal.submit(edit_call())
    lost = UpstreamHandle(
        request_id="gone",
        poll_url=handle.poll_url.replace(handle.request_id, "gone"),
        result_url=None,
        cancel_url=None,
    )
    error = failure(await fal.poll(lost))
    assert type(error) is UpstreamError and error.upstream_status == 404


async def test_an_expired_result_url_fails_the_edit(fake: FakeFal, fal: FalUpstream) -> None:
    fake.result_ttl_s = 0.05
    fake.processing_s = 0.05
    handle = await fal.submit(edit_call())
    await asyncio.sleep(0.2)
    assert fake.queued[handle.request_id].state(time.monotonic()) == "COMPLETED"
    # The result is made now, but stamped with when it completed: its URL has expired.
    error = failure(await fal.poll(handle))
    assert isinstance(error, UpstreamBadResponse) and "expired" in error.message
    assert error.upstream_status == 404  # what the image URL answered


async def test_a_result_without_images_fails_the_edit(fake: FakeFal, fal: FalUpstream) -> None:
    fake.end_next(Outcome(FalAnswer(200, b'{"images": []}')))
    error = failure(await poll_until_done(fal, await fal.submit(edit_call())))
    assert isinstance(error, UpstreamBadResponse)


# --- moderation --------------------------------------------------------------------------


async def test_moderation_fails_the_edit_as_content_filtered(
    fake: FakeFal, fal: FalUpstream
) -> None:
    fake.end_next(Outcome.moderated())
    error = failure(await poll_until_done(fal, await fal.submit(edit_call())))
    assert isinstance(error, ContentFiltered) and error.code == "content_filtered"
    assert error.upstream_status == 422 and "flagged by a content checker" in error.message
    assert fake.submissions == 1


async def test_moderation_at_submission_is_content_filtered(
    fake: FakeFal, fal: FalUpstream
) -> None:
    answer = Outcome.moderated("image_url").answer
    assert answer is not None
    fake.fail_next("submit", answer)
    with pytest.raises(ContentFiltered):
        await fal.submit(edit_call())


async def test_a_flagged_output_is_content_filtered(fake: FakeFal, fal: FalUpstream) -> None:
    fake.end_next(Outcome.flagged())
    error = failure(await poll_until_done(fal, await fal.submit(edit_call())))
    assert isinstance(error, ContentFiltered) and "safety checker" in error.message
    assert fake.file_downloads() == []  # the blacked-out image is not fetched


# --- cancel ------------------------------------------------------------------------------


async def test_cancel_drops_a_queued_request(fake: FakeFal, fal: FalUpstream) -> None:
    fake.queue_s = 5.0
    handle = await fal.submit(edit_call())
    assert await fal.cancel(handle) is True
    assert fake.cancels == [handle.request_id] and fake.in_flight == 0
    error = failure(await fal.poll(handle))
    assert isinstance(error, UpstreamRejected) and "cancelled" in error.message


async def test_cancel_stops_a_running_request(fake: FakeFal, fal: FalUpstream) -> None:
    fake.processing_s = 5.0
    handle = await fal.submit(edit_call())
    assert await fal.poll(handle) == PollPending()
    assert await fal.cancel(handle) is True
    assert isinstance(await fal.poll(handle), PollFailed)


async def test_cancel_after_completion_or_of_an_unknown_request_is_false(
    fake: FakeFal, fal: FalUpstream
) -> None:
    handle = await fal.submit(edit_call())
    assert isinstance(await poll_until_done(fal, handle), EditOutput)
    assert await fal.cancel(handle) is False
    unknown = UpstreamHandle(
        request_id="gone",
        poll_url=handle.poll_url,
        cancel_url=(handle.cancel_url or "").replace(handle.request_id, "gone"),
    )
    assert await fal.cancel(unknown) is False
    assert fake.cancels == []


async def test_a_failed_cancel_request_raises(fake: FakeFal, fal: FalUpstream) -> None:
    fake.queue_s = 5.0
    handle = await fal.submit(edit_call())
    fake.fail_next("cancel", FalAnswer.error(500, "oops"))
    with pytest.raises(UpstreamError):
        await fal.cancel(handle)
    assert fake.cancels == [] and await fal.cancel(handle) is True


# --- fal's answers, read without a server ------------------------------------------------


def test_the_platform_and_the_model_error_shapes_are_both_read() -> None:
    platform = read_detail(b'{"detail": "Request timed out", "error_type": "request_timeout"}', 504)
    assert platform.message == "Request timed out" and platform.types == ("request_timeout",)
    item = {"loc": ["body", "image_url"], "msg": "Could not fetch", "type": "file_download_error"}
    model = read_detail(json.dumps({"detail": [item]}).encode(), 422)
    assert model.message == "body.image_url: Could not fetch"
    assert model.types == ("file_download_error",)
    assert read_detail(b"", 500).message == "HTTP 500"


def test_moderation_is_recognised_by_its_type_not_its_status() -> None:
    body = b'[{"loc": ["body"], "msg": "flagged", "type": "content_policy_violation"}]'
    assert isinstance(fal_error(400, body, None), ContentFiltered)
    assert not isinstance(fal_error(422, b'{"detail": "flagged content"}', None), ContentFiltered)


def test_an_unknown_status_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse):
        read_status(b'{"status": "EXPLODED"}', 200)
    assert read_status(b'{"status": "IN_QUEUE", "queue_position": -1}', 202).queue_position is None
