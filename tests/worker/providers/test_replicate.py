"""The replicate adapter against the fake Replicate, over real HTTP: submit, poll, cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import (
    ContentFiltered,
    InsufficientCredits,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from tests.support import adapters
from tests.support.adapters import failure, poll_until_done
from tests.support.fakes.replicate import (
    KONTEXT,
    MODERATED_ERROR,
    NO_CREDIT,
    FakeModel,
    FakeReplicate,
    problem,
    throttled,
)
from tests.support.fakes.upstream_faults import Fault
from tests.support.images import data_url, decode, mask, png
from worker.providers.base import (
    AsyncUpstream,
    EditCall,
    EditOutput,
    InputImage,
    PollPending,
    PollResult,
    UpstreamHandle,
)
from worker.providers.registry import build_async_upstream
from worker.providers.replicate import ReplicateUpstream

KEY = "r8_test_key"
RED = (200, 40, 40)
INVERTED_RED = (55, 215, 215)  # the fake's edit inverts the colours
EDIT_PIXEL = (5, 20)  # in the mask's transparent (edit) half
KEEP_PIXEL = (50, 20)  # in its opaque half, outside png()'s middle square


def upstream_config(fake: FakeReplicate, **changes: Any) -> UpstreamConfig:
    return adapters.upstream_config("replicate", fake.origin, KEY, timeout_s=10.0, **changes)


def model_entry(upstream_model: str = KONTEXT.name, **changes: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "id": "kontext",
        "upstream": "replicate",
        "upstream_model": upstream_model,
        "image_field": "input_image",
    }
    return ModelConfig.model_validate({**fields, **changes})


def adapter(
    fake: FakeReplicate, session: aiohttp.ClientSession, **changes: Any
) -> ReplicateUpstream:
    return ReplicateUpstream(upstream_config(fake, **changes), session)


def call_for(entry: ModelConfig, **changes: Any) -> EditCall:
    """A call to ``entry``'s model, carrying the entry as the worker's calls do."""
    return edit_call(model=entry.upstream_model, model_entry=entry, **changes)


def edit_call(**changes: Any) -> EditCall:
    fields: dict[str, Any] = {
        "model": KONTEXT.name,
        "model_entry": model_entry(),
        "prompt": "make it pop",
        "images": (InputImage(png(color=RED), "image/png"),),
        "timeout_s": 10.0,
    }
    return EditCall(**{**fields, **changes})


async def edit(upstream: AsyncUpstream, call: EditCall) -> PollResult:
    return await poll_until_done(upstream, await upstream.submit(call))


def pixel(data: bytes, xy: tuple[int, int] = (1, 1)) -> tuple[int, ...]:
    value = decode(data).convert("RGB").getpixel(xy)
    assert isinstance(value, tuple)
    return value


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(api_key=KEY) as server:
        yield server


# --- success ----------------------------------------------------------------------------


async def test_submit_creates_a_prediction_on_the_model_endpoint_and_poll_downloads_the_edit(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)

    handle = await upstream.submit(edit_call())
    result = await poll_until_done(upstream, handle)

    [request] = fake.create_requests
    assert request.path == "/v1/models/black-forest-labs/flux-kontext-pro/predictions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "Prefer" not in request.headers  # no connection held while the model runs
    assert request.document == {
        "input": {"prompt": "make it pop", "input_image": data_url(png(color=RED))}
    }
    prediction_id = request.prediction_id
    assert handle.request_id == prediction_id
    assert handle.poll_url == f"{fake.origin}/v1/predictions/{prediction_id}"
    assert handle.cancel_url == f"{fake.origin}/v1/predictions/{prediction_id}/cancel"
    assert isinstance(result, EditOutput)
    assert pixel(result.image) == INVERTED_RED
    assert result.usage is not None
    assert result.usage.model_extra is not None
    assert result.usage.model_extra["predict_time"] >= 0
    assert (fake.submissions, fake.downloads) == (1, 1)


async def test_poll_is_pending_while_the_prediction_starts_and_processes(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.starting_s, fake.processing_s = 1.0, 1.0
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())
    prediction = fake.predictions[handle.request_id]

    starting = (prediction.status, await upstream.poll(handle))
    while prediction.status == "starting":
        await asyncio.sleep(0.01)
    processing = (prediction.status, await upstream.poll(handle))
    done = await poll_until_done(upstream, handle)

    assert starting == ("starting", PollPending())
    assert processing == ("processing", PollPending())
    assert isinstance(done, EditOutput) and prediction.status == "succeeded"
    assert fake.submissions == 1  # polling never submits again
    assert fake.polls >= 3


async def test_a_model_entry_with_a_version_posts_to_the_predictions_endpoint(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)

    result = await edit(upstream, call_for(model_entry(version=KONTEXT.version)))

    [request] = fake.create_requests
    assert request.path == "/v1/predictions"
    assert request.document["version"] == KONTEXT.version
    assert set(request.document["input"]) == {"prompt", "input_image"}
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED


async def test_an_unknown_version_is_refused(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)

    with pytest.raises(UpstreamRejected) as caught:
        await upstream.submit(call_for(model_entry(version="f" * 64)))

    assert (caught.value.upstream_status, caught.value.code) == (422, "invalid_request_error")
    assert "Invalid version" in caught.value.message
    assert fake.submissions == 0


async def test_the_model_entry_names_the_prompt_and_image_fields(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(FakeModel("qwen/qwen-image-edit", "1" * 64, "instruction", "image"))
    entry = model_entry("qwen/qwen-image-edit", prompt_field="instruction", image_field="image")

    result = await edit(adapter(fake, session), call_for(entry))

    [request] = fake.create_requests
    assert set(request.document["input"]) == {"instruction", "image"}
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED


async def test_wrong_input_fields_are_the_models_422(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(FakeModel("qwen/qwen-image-edit", "1" * 64, "instruction", "image"))
    entry = model_entry("qwen/qwen-image-edit", image_field="image")  # prompt_field left "prompt"

    with pytest.raises(UpstreamRejected) as caught:
        await adapter(fake, session).submit(call_for(entry))

    assert (caught.value.upstream_status, caught.value.code) == (422, "invalid_request_error")
    assert "input.instruction" in caught.value.message
    assert fake.submissions == 0


async def test_an_output_list_gives_its_first_image(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(FakeModel("owner/lister", "2" * 64, output_list=True))
    result = await edit(adapter(fake, session), call_for(model_entry("owner/lister")))

    [prediction] = fake.predictions.values()
    assert isinstance(prediction.to_json(fake.origin)["output"], list)
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED


async def test_a_model_taking_several_images_gets_a_list(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(
        FakeModel("owner/multi", "3" * 64, image_field="image", image_list=True, max_images=3)
    )
    entry = model_entry("owner/multi", image_field="image", max_images=3)
    images = (InputImage(png(color=RED), "image/png"), InputImage(png(), "image/jpeg"))

    result = await edit(adapter(fake, session), call_for(entry, images=images))

    [request] = fake.create_requests
    sent = request.document["input"]["image"]
    assert sent == [data_url(png(color=RED)), data_url(png(), "image/jpeg")]
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED


async def test_more_images_than_the_model_takes_are_refused_before_submitting(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    images = (InputImage(png(), "image/png"),) * 2

    with pytest.raises(UpstreamRejected) as caught:
        await adapter(fake, session).submit(edit_call(images=images))

    assert caught.value.code == "invalid_request_error"
    assert "at most 1 input image" in caught.value.message
    assert fake.create_requests == []


async def test_a_model_without_an_entry_uses_the_default_fields(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(FakeModel("owner/plain", "4" * 64, image_field="image"))
    upstream = adapter(fake, session)

    result = await edit(upstream, edit_call(model="owner/plain", model_entry=None))

    [request] = fake.create_requests
    assert request.path == "/v1/models/owner/plain/predictions"
    assert set(request.document["input"]) == {"prompt", "image"}
    assert isinstance(result, EditOutput)


async def test_a_model_name_that_is_not_owner_slash_name_is_refused(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)

    with pytest.raises(UpstreamRejected, match="not owner/name"):
        await upstream.submit(edit_call(model="flux-kontext-pro", model_entry=None))

    assert fake.create_requests == []


# --- input by URL -----------------------------------------------------------------------


@pytest.fixture
async def image_host() -> AsyncIterator[tuple[str, list[str]]]:
    """A server of one PNG at /input.png (as a presigned S3 URL would serve it), 403
    elsewhere; the list records each path asked for, with " (key)" when the request
    carried an Authorization header."""
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path + (" (key)" if "Authorization" in request.headers else ""))
        if request.path != "/input.png":
            return web.Response(status=403, text="expired")
        return web.Response(body=png(color=RED), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", asked
    finally:
        await runner.cleanup()


async def test_an_input_with_a_url_is_sent_by_url_and_fetched_by_replicate(
    fake: FakeReplicate, session: aiohttp.ClientSession, image_host: tuple[str, list[str]]
) -> None:
    host, asked = image_host
    upstream = adapter(fake, session, input_transfer="url")
    by_url = InputImage(b"", "image/png", url=f"{host}/input.png")

    result = await edit(upstream, edit_call(images=(by_url,)))

    [request] = fake.create_requests
    assert request.document["input"]["input_image"] == f"{host}/input.png"
    assert asked == ["/input.png"]
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED


async def test_an_input_url_replicate_cannot_fetch_fails_the_prediction_as_a_rejection(
    fake: FakeReplicate, session: aiohttp.ClientSession, image_host: tuple[str, list[str]]
) -> None:
    host, _ = image_host
    by_url = InputImage(b"", "image/png", url=f"{host}/gone.png")

    error = failure(await edit(adapter(fake, session), edit_call(images=(by_url,))))

    assert type(error) is UpstreamRejected
    assert error.code == "invalid_request_error"
    assert "Input validation error" in error.message and "HTTP 403" in error.message


async def test_the_key_goes_only_to_replicates_own_origin(
    fake: FakeReplicate, session: aiohttp.ClientSession, image_host: tuple[str, list[str]]
) -> None:
    host, asked = image_host
    upstream = adapter(fake, session)
    elsewhere = UpstreamHandle(request_id="x", poll_url=f"{host}/prediction-x")

    with pytest.raises(UpstreamRejected):
        await upstream.poll(elsewhere)

    assert asked == ["/prediction-x"]  # asked, without the key


# --- masks ------------------------------------------------------------------------------


async def test_a_mask_is_converted_to_the_configured_convention_and_sent_as_mask(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(
        FakeModel(
            "owner/fill", "5" * 64, image_field="image", mask_field="mask", mask_edits_opaque=True
        )
    )
    entry = model_entry("owner/fill", image_field="image")
    upstream = adapter(fake, session, mask_convention="opaque_edits")

    result = await edit(upstream, call_for(entry, mask=InputImage(mask(), "image/png")))

    [request] = fake.create_requests
    assert request.document["input"]["mask"] != data_url(mask())  # converted, not as sent
    assert isinstance(result, EditOutput)
    assert pixel(result.image, EDIT_PIXEL) == INVERTED_RED
    assert pixel(result.image, KEEP_PIXEL) == RED


async def test_a_mask_sent_by_url_that_needs_converting_is_refused_clearly(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session, mask_convention="opaque_edits", input_transfer="url")
    call = edit_call(mask=InputImage(b"", "image/png", url="http://127.0.0.1:9/mask.png"))

    with pytest.raises(UpstreamRejected, match='input_transfer = "inline"'):
        await upstream.submit(call)

    assert fake.create_requests == []


async def test_a_mask_for_an_upstream_without_masks_becomes_an_image_and_a_sentence(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.add_model(
        FakeModel("owner/multi", "3" * 64, image_field="image", image_list=True, max_images=2)
    )
    entry = model_entry("owner/multi", image_field="image", max_images=2)
    upstream = adapter(fake, session, supports_mask=False)

    result = await edit(upstream, call_for(entry, mask=InputImage(mask(), "image/png")))

    [request] = fake.create_requests
    sent = request.document["input"]
    assert sent["image"] == [data_url(png(color=RED)), data_url(mask())]
    assert "mask" not in sent and sent["prompt"] != "make it pop"
    assert isinstance(result, EditOutput)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "code", "status"),
    [
        (
            problem(401, "You did not pass a valid authentication token"),
            UpstreamRejected,
            "upstream_auth_failed",
            401,
        ),
        (problem(403, "You do not have permission"), UpstreamRejected, "upstream_auth_failed", 403),
        (problem(402, NO_CREDIT), InsufficientCredits, "insufficient_credits", 402),
        (problem(500, "Internal server error"), UpstreamError, "upstream_error", 500),
        (
            Fault.raw(503, "<html>upstream connect error</html>", content_type="text/html"),
            UpstreamError,
            "upstream_error",
            503,
        ),
    ],
)
async def test_submit_errors_map_into_the_upstream_error_tree(
    fake: FakeReplicate,
    session: aiohttp.ClientSession,
    fault: Fault,
    kind: type[UpstreamError],
    code: str,
    status: int,
) -> None:
    fake.fail_next("create", fault)

    with pytest.raises(UpstreamError) as caught:
        await adapter(fake, session).submit(edit_call())

    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.upstream_status) == (code, status)
    assert fake.submissions == 0


async def test_a_wrong_key_is_replicates_own_401(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        await adapter(fake, session, api_key=SecretStr("r8_wrong")).submit(edit_call())

    assert (caught.value.code, caught.value.upstream_status) == ("upstream_auth_failed", 401)
    assert "valid authentication token" in caught.value.message


@pytest.mark.parametrize(
    ("fault", "wait_s"),
    [
        (throttled(2), 2.0),  # Retry-After header
        (throttled(3, header=False), 3.0),  # "Expected available in 3 seconds."
        (problem(429, "Request was throttled. Your rate limit resets in ~30s."), 30.0),
        (problem(429, "Request was throttled."), None),
    ],
)
async def test_a_429_is_rate_limited_with_its_retry_hint(
    fake: FakeReplicate, session: aiohttp.ClientSession, fault: Fault, wait_s: float | None
) -> None:
    fake.fail_next("create", fault)

    with pytest.raises(UpstreamRateLimited) as caught:
        await adapter(fake, session).submit(edit_call())

    assert (caught.value.upstream_status, caught.value.retry_after) == (429, wait_s)
    assert "throttled" in caught.value.message


async def test_a_failed_status_request_is_transient_and_the_next_poll_succeeds(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())
    await fake.wait_ended(handle.request_id)
    fake.fail_next("get", problem(502, "Bad gateway"), throttled(1))

    with pytest.raises(UpstreamError) as server_error:
        await upstream.poll(handle)
    with pytest.raises(UpstreamRateLimited) as throttle:
        await upstream.poll(handle)
    result = await upstream.poll(handle)

    assert type(server_error.value) is UpstreamError and server_error.value.upstream_status == 502
    assert throttle.value.retry_after == 1.0
    assert isinstance(result, EditOutput)
    assert fake.submissions == 1


async def test_a_broken_submit_answer_is_a_bad_response(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.fail_next(
        "create",
        Fault.raw(201, json.dumps({"status": "starting"}), content_type="application/json"),
    )

    with pytest.raises(UpstreamBadResponse, match="no id"):
        await adapter(fake, session).submit(edit_call())


# --- how a prediction ends ----------------------------------------------------------------


async def test_moderation_is_content_filtered(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.blocked_words = {"forbidden"}

    error = failure(await edit(adapter(fake, session), edit_call(prompt="a forbidden edit")))

    assert isinstance(error, ContentFiltered) and error.code == "content_filtered"
    assert "flagged as sensitive" in error.message
    assert fake.downloads == 0


async def test_a_failed_prediction_is_a_retryable_upstream_error(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.fail_next_predictions("CUDA error: out of memory")

    error = failure(await edit(adapter(fake, session), edit_call()))

    assert type(error) is UpstreamError
    assert (error.code, error.upstream_status) == ("upstream_error", None)
    assert "CUDA error: out of memory" in error.message


async def test_a_scripted_moderation_error_is_content_filtered(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.fail_next_predictions(MODERATED_ERROR)

    assert isinstance(failure(await edit(adapter(fake, session), edit_call())), ContentFiltered)


async def test_an_output_deleted_after_its_hour_is_an_expired_result(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.output_ttl_s = 0.05
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())
    await fake.wait_ended(handle.request_id)
    await asyncio.sleep(0.1)

    error = failure(await upstream.poll(handle))

    assert isinstance(error, UpstreamBadResponse) and error.code == "upstream_result_expired"
    assert "deleted" in error.message
    assert fake.downloads == 0


async def test_an_output_url_that_expired_before_the_download_is_an_expired_result(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.fail_next("file", Fault.raw(404, "Not Found"))

    error = failure(await edit(adapter(fake, session), edit_call()))

    assert (error.code, error.upstream_status) == ("upstream_result_expired", 404)
    assert fake.downloads == 1


async def test_a_download_that_fails_with_a_5xx_is_retried_by_the_next_poll(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.fail_next("file", Fault.raw(503, "Service Unavailable"))
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())
    await fake.wait_ended(handle.request_id)

    with pytest.raises(UpstreamError) as caught:
        await upstream.poll(handle)
    result = await upstream.poll(handle)

    assert caught.value.upstream_status == 503 and not isinstance(caught.value, UpstreamRejected)
    assert isinstance(result, EditOutput) and pixel(result.image) == INVERTED_RED
    assert (fake.submissions, fake.downloads) == (1, 2)


# --- cancel -----------------------------------------------------------------------------


async def test_cancel_posts_to_urls_cancel_and_the_prediction_ends_canceled(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.processing_s = 30.0
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())

    assert await upstream.cancel(handle) is True
    error = failure(await upstream.poll(handle))

    assert fake.cancels == [handle.request_id]
    assert fake.predictions[handle.request_id].status == "canceled"
    assert error.code == "upstream_canceled"
    assert fake.in_flight == 0


async def test_a_cancel_replicate_refuses_raises(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = adapter(fake, session)
    handle = await upstream.submit(edit_call())
    fake.fail_next("cancel", problem(500, "Internal server error"))

    with pytest.raises(UpstreamError) as caught:
        await upstream.cancel(handle)

    assert caught.value.upstream_status == 500


# --- the fake itself (what end-to-end tests rely on) ---------------------------------------


async def test_the_fake_honours_prefer_wait_and_counts_predictions_in_flight(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    fake.processing_s = 1.0
    url = f"{fake.origin}/v1/models/{KONTEXT.name}/predictions"
    body = {"input": {"prompt": "p", "input_image": data_url(png())}}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def create(prefer: str | None) -> tuple[int, dict[str, Any]]:
        extra = {"Prefer": prefer} if prefer else {}
        async with session.post(url, json=body, headers={**headers, **extra}) as answer:
            return answer.status, await answer.json(content_type=None)

    started = [await create(None) for _ in range(3)]
    waited = await create("wait=5")  # the three others are still processing meanwhile
    refused = await create("wait=61")
    for _, document in started:
        await fake.wait_ended(document["id"])
    after = await create("wait")  # alone in flight: the maximum stays

    assert [status for status, document in started] == [201, 201, 201]
    assert all(document["status"] == "starting" for _, document in started)
    assert waited[0] == 201 and waited[1]["status"] == "succeeded"
    assert refused[0] == 400
    assert after[1]["status"] == "succeeded"
    assert (fake.submissions, fake.max_in_flight, fake.in_flight) == (5, 4, 0)


# --- configuration --------------------------------------------------------------------------


async def test_the_registry_builds_replicate_as_an_async_upstream(
    fake: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    upstream = build_async_upstream(upstream_config(fake), session)

    assert isinstance(upstream, ReplicateUpstream)
    assert isinstance(await edit(upstream, edit_call()), EditOutput)
