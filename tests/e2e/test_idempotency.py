"""``Idempotency-Key`` on every submit endpoint, against the whole service: a retried
request replays the first answer and creates nothing."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from json import dumps
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from PIL import Image

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream
from tests.support.images import data_url, png
from tests.support.service import RunningService

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
UPSTREAM_MODEL = "fake/gpt-image-1"
BODY_LIMIT = 3_000_000

Reply = tuple[int, dict[str, Any], CIMultiDictProxy[str]]


def json_edit(prompt: str = "make it grayscale", **extra: Any) -> dict[str, Any]:
    """An edit request in the JSON shape, on the fake upstream."""
    return {
        "model": UPSTREAM_MODEL,
        "prompt": prompt,
        "images": [{"image_url": data_url(png())}],
        **extra,
    }


def edit_form(prompt: str = "make it grayscale", image: bytes | None = None) -> aiohttp.FormData:
    """A multipart edit request, built afresh (so with a new random boundary) each call."""
    form = aiohttp.FormData()
    form.add_field("model", UPSTREAM_MODEL)
    form.add_field("prompt", prompt)
    # A stream, not bytes: aiohttp warns about large raw-bytes bodies (an error here).
    data = io.BytesIO(image or png())
    form.add_field("image[]", data, filename="in.png", content_type="image/png")
    return form


async def post(
    service: RunningService,
    path: str,
    *,
    idem: str | None,
    json: Any = None,
    data: aiohttp.FormData | None = None,
    key: str = "key-a",
) -> Reply:
    """POST with an optional Idempotency-Key; status, JSON body, headers."""
    headers = service.auth(key)
    if idem is not None:
        headers[KEY] = idem
    body: aiohttp.FormData | io.BytesIO | None = data
    if json is not None:  # a stream: aiohttp warns about large raw-bytes bodies
        body = io.BytesIO(dumps(json).encode())
        headers["Content-Type"] = "application/json"
    async with service.client.post(service.url(path), headers=headers, data=body) as response:
        return response.status, await response.json(), response.headers


async def job_ids(service: RunningService, key: str = "key-a") -> list[str]:
    """The ids of every job ``key`` owns."""
    status, page = await service.get("/v1/jobs?limit=100", key)
    assert status == 200, page
    return [job["id"] for job in page["data"]]


def noise_png(raw_bytes: int) -> bytes:
    """A PNG of random pixels: it does not compress, so it is about ``raw_bytes`` long."""
    side = int((raw_bytes / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def small_bodies(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API (no worker) with a body limit of ``BODY_LIMIT`` bytes."""
    async with RunningService(
        settings.model_copy(update={"max_body_bytes": BODY_LIMIT}), providers, worker=False
    ) as running:
        yield running


async def test_a_retried_json_submit_replays_the_202_and_runs_once(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    status, first, headers = await post(service, "/v1/jobs", idem="retry-json", json=json_edit())
    assert status == 202, first
    assert REPLAYED not in headers
    for _ in range(2):
        again, body, replay_headers = await post(
            service, "/v1/jobs", idem="retry-json", json=json_edit()
        )
        assert (again, body) == (202, first)
        assert replay_headers[REPLAYED] == "true"
        assert replay_headers["Location"] == headers["Location"] == f"/v1/jobs/{first['id']}"
    done = await service.wait(first["id"])
    assert done["status"] == "succeeded"
    replayed = await post(service, "/v1/jobs", idem="retry-json", json=json_edit())
    assert replayed[:2] == (202, first)  # the original answer, though the job moved on
    assert await job_ids(service) == [first["id"]]
    assert len(fake_upstream.requests) == 1


async def test_a_retried_multipart_submit_with_a_new_boundary_replays(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    image = png(80, 60)
    forms = [edit_form(image=image), edit_form(image=image)]
    status, first, _ = await post(service, "/v1/jobs", idem="retry-form", data=forms[0])
    again, second, headers = await post(service, "/v1/jobs", idem="retry-form", data=forms[1])
    assert status == again == 202
    assert second == first
    assert headers[REPLAYED] == "true"
    assert (await service.wait(first["id"]))["status"] == "succeeded"
    assert await job_ids(service) == [first["id"]]
    assert len(fake_upstream.requests) == 1
    assert fake_upstream.requests[0].images[0] == image


async def test_the_same_key_with_another_request_is_422(service: RunningService) -> None:
    status, first, _ = await post(service, "/v1/jobs", idem="reused", json=json_edit("sepia"))
    assert status == 202, first
    attempts = [
        post(service, "/v1/jobs", idem="reused", json=json_edit("invert")),
        post(service, "/v1/jobs", idem="reused", data=edit_form("sepia")),
        post(service, "/v1/batches", idem="reused", json={"defaults": json_edit("sepia")}),
    ]
    for attempt in attempts:
        status, body, headers = await attempt
        assert status == 422, body
        assert body["error"]["code"] == "idempotency_key_reused"
        assert body["error"]["param"] == KEY
        assert REPLAYED not in headers
    assert await job_ids(service) == [first["id"]]


async def test_concurrent_duplicates_make_exactly_one_job(
    api_only: RunningService,
) -> None:
    replies = await asyncio.gather(
        *(post(api_only, "/v1/jobs", idem="burst", data=edit_form()) for _ in range(5))
    )
    originals = [
        body for status, body, headers in replies if status == 202 and REPLAYED not in headers
    ]
    assert len(originals) == 1 and "id" in originals[0], replies
    for status, body, headers in replies:
        if REPLAYED in headers:
            assert (status, body) == (202, originals[0])
        elif status != 202:
            assert (status, body["error"]["code"]) == (409, "idempotency_key_in_use")
    assert await job_ids(api_only) == [originals[0]["id"]]


async def test_keys_are_scoped_to_the_api_key(api_only: RunningService) -> None:
    _, job_a, _ = await post(api_only, "/v1/jobs", idem="shared", json=json_edit(), key="key-a")
    status, job_b, headers = await post(
        api_only, "/v1/jobs", idem="shared", json=json_edit(), key="key-b"
    )
    assert status == 202 and REPLAYED not in headers
    assert job_b["id"] != job_a["id"]
    assert await job_ids(api_only, "key-a") == [job_a["id"]]
    assert await job_ids(api_only, "key-b") == [job_b["id"]]


async def test_a_retried_batch_replays_the_same_batch(api_only: RunningService) -> None:
    body = {"defaults": json_edit(), "variants": [{"prompt": "one"}, {"prompt": "two"}]}
    status, first, _ = await post(api_only, "/v1/batches", idem="batch", json=body)
    again, second, headers = await post(api_only, "/v1/batches", idem="batch", json=body)
    assert status == again == 202
    assert second == first and headers[REPLAYED] == "true"
    assert headers["Location"] == f"/v1/batches/{first['id']}"
    _, page = await api_only.get("/v1/batches")
    assert [batch["id"] for batch in page["data"]] == [first["id"]]
    assert first["total"] == 2


async def test_a_retried_sync_edit_answers_from_the_same_job(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    path = "/v1/images/edits"
    status, first, headers = await post(service, path, idem="sync", json=json_edit())
    assert status == 200, first
    again, second, replay_headers = await post(service, path, idem="sync", json=json_edit())
    assert again == 200
    assert second["data"] == first["data"] and second["data"][0]["b64_json"]
    assert replay_headers["x-job-id"] == headers["x-job-id"]
    assert replay_headers[REPLAYED] == "true"
    assert await job_ids(service) == [headers["x-job-id"]]
    assert len(fake_upstream.requests) == 1


async def test_a_sync_edit_still_running_is_waited_on_by_its_retry_then_replayed(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.0
    path = "/v2/router/images/edits"
    first = asyncio.create_task(post(service, path, idem="slow", data=edit_form()))
    await fake_upstream.wait_for_requests(1)
    status, joined, joined_headers = await post(service, path, idem="slow", data=edit_form())
    assert status == 200, joined  # not 409: it waited on the first request's job
    assert joined_headers[REPLAYED] == "true"
    status, answer, headers = await first
    assert status == 200, answer
    assert joined_headers["x-job-id"] == headers["x-job-id"]
    again, replay, replay_headers = await post(service, path, idem="slow", data=edit_form())
    assert again == 200 and replay_headers[REPLAYED] == "true"
    assert replay_headers["x-job-id"] == headers["x-job-id"]
    assert replay["data"] == answer["data"] == joined["data"]
    assert len(fake_upstream.requests) == 1


async def test_a_sync_edit_that_outlived_its_wait_waits_again_on_the_same_job(
    settings: Settings, providers: ProvidersConfig, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.5
    impatient = RunningService(settings.model_copy(update={"sync_wait_limit_s": 0.5}), providers)
    await impatient.start()
    try:
        path = "/v1/images/edits"
        status, body, headers = await post(impatient, path, idem="patient", json=json_edit())
        assert status == 504 and body["error"]["code"] == "sync_wait_exceeded"
        job_id = headers["x-job-id"]
        await impatient.wait(job_id)
        status, body, headers = await post(impatient, path, idem="patient", json=json_edit())
        assert status == 200, body
        assert body["data"][0]["b64_json"]
        assert (headers["x-job-id"], headers[REPLAYED]) == (job_id, "true")
        assert await job_ids(impatient) == [job_id]
        assert len(fake_upstream.requests) == 1
    finally:
        await impatient.stop()


@pytest.mark.parametrize("idem", ["", "x" * 256, "tab\there", "caf\u00e9"])
async def test_an_invalid_key_is_400(api_only: RunningService, idem: str) -> None:
    headers = {**api_only.auth(), KEY: idem}
    async with api_only.client.post(
        api_only.url("/v1/jobs"), headers=headers, json=json_edit()
    ) as response:
        body = await response.json()
    assert response.status == 400, body
    assert body["error"]["param"] == KEY
    assert await job_ids(api_only) == []


async def test_a_255_character_key_is_accepted(api_only: RunningService) -> None:
    status, body, _ = await post(api_only, "/v1/jobs", idem="k" * 255, json=json_edit())
    assert status == 202, body


async def test_a_refused_request_does_not_take_the_key(api_only: RunningService) -> None:
    """A 4xx is not stored: the client may fix the request and retry with the same key."""
    status, refused, _ = await post(api_only, "/v1/jobs", idem="fix-me", json=json_edit(n=99))
    assert status == 400 and refused["error"]["param"] == "n"
    status, accepted, headers = await post(api_only, "/v1/jobs", idem="fix-me", json=json_edit(n=2))
    assert status == 202 and REPLAYED not in headers
    status, replayed, _ = await post(api_only, "/v1/jobs", idem="fix-me", json=json_edit(n=2))
    assert (status, replayed) == (202, accepted)
    assert await job_ids(api_only) == [accepted["id"]]


async def test_bodies_near_the_limit_reach_the_handler_whole(
    small_bodies: RunningService,
) -> None:
    image = noise_png(BODY_LIMIT - 100_000)
    assert BODY_LIMIT - 200_000 < len(image) < BODY_LIMIT
    form_ids = set()
    for _ in range(2):
        form = edit_form(image=image)
        status, job, _ = await post(small_bodies, "/v1/jobs", idem="big-form", data=form)
        assert status == 202, job
        form_ids.add(job["id"])
    encoded = noise_png((BODY_LIMIT - 100_000) * 3 // 4)
    document = json_edit(images=[{"image_url": data_url(encoded)}])
    json_ids = set()
    for _ in range(2):
        status, job, _ = await post(small_bodies, "/v1/jobs", idem="big-json", json=document)
        assert status == 202, job
        json_ids.add(job["id"])
    assert len(form_ids) == len(json_ids) == 1
    jobs = {job_id: (await small_bodies.get(f"/v1/jobs/{job_id}"))[1] for job_id in form_ids}
    side = int(((BODY_LIMIT - 100_000) / 3) ** 0.5)
    assert next(iter(jobs.values()))["request"]["images"][0]["width"] == side
    assert sorted(await job_ids(small_bodies)) == sorted(form_ids | json_ids)


async def test_an_oversized_body_is_413_and_leaves_the_key_free(
    small_bodies: RunningService,
) -> None:
    too_big = edit_form(image=noise_png(BODY_LIMIT + 50_000))
    status, body, _ = await post(small_bodies, "/v1/jobs", idem="too-big", data=too_big)
    assert status == 413, body
    status, job, headers = await post(small_bodies, "/v1/jobs", idem="too-big", data=edit_form())
    assert status == 202 and REPLAYED not in headers
    assert await job_ids(small_bodies) == [job["id"]]


async def test_requests_without_a_key_are_not_deduplicated(api_only: RunningService) -> None:
    for _ in range(2):
        status, _, headers = await post(api_only, "/v1/jobs", idem=None, json=json_edit())
        assert status == 202 and REPLAYED not in headers
    assert len(await job_ids(api_only)) == 2
