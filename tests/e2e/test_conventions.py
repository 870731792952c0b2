"""The conventions clients of other APIs expect from editq: OpenAI's model lookup,
list fields as repeated multipart parts, Server-Sent Events that end, ``Prefer:
wait``, links on every object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import httpx_sse
import openai
import orq_ai_sdk
import pytest

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, png
from tests.support.service import RunningService

UPSTREAM_MODEL = "fake/gpt-image-1"
FALLBACK_MODEL = "fake/flux-kontext"


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


def multipart(parts: list[tuple[str, Any]]) -> aiohttp.FormData:
    """A multipart body of text parts in order (dicts and lists as JSON parts, as
    orq's SDK sends ``fallbacks``) plus one ``image`` file."""
    form = aiohttp.FormData()
    for name, value in parts:
        if isinstance(value, dict | list):
            form.add_field(name, json.dumps(value), content_type="application/json")
        else:
            form.add_field(name, str(value))
    form.add_field("image", png(), filename="in.png", content_type="image/png")
    return form


async def post_form(
    service: RunningService, path: str, form: aiohttp.FormData
) -> tuple[int, dict[str, Any]]:
    """POST a multipart body with key-a; status and JSON body."""
    async with service.client.post(service.url(path), data=form, headers=service.auth()) as reply:
        return reply.status, await reply.json()


def orq_shaped(codes_field: str) -> aiohttp.FormData:
    """An edit as orq's SDK sends it: plain fields, a list of scalars as repeated
    ``codes_field`` parts, a list of objects as one JSON part."""
    return multipart(
        [
            ("model", UPSTREAM_MODEL),
            ("prompt", "make it grayscale"),
            (codes_field, "400"),
            (codes_field, "422"),
            ("fallbacks", [{"model": FALLBACK_MODEL}]),
        ]
    )


@pytest.mark.parametrize("codes_field", ["fallback_on_codes[]", "fallback_on_codes"])
async def test_a_list_field_as_repeated_parts_takes_effect(
    service: RunningService, fake_upstream: FakeUpstream, codes_field: str
) -> None:
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="no"))
    status, job = await post_form(service, "/v1/jobs", orq_shaped(codes_field))
    assert status == 202, job
    assert job["request"]["routing"]["fallback_on_codes"] == [400, 422]
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done  # 400 is not a default fallback code
    assert [r.model for r in fake_upstream.requests] == ["gpt-image-1", "flux-kontext"]


async def test_a_list_of_objects_as_repeated_json_parts(service: RunningService) -> None:
    status, job = await post_form(
        service,
        "/v1/jobs",
        multipart(
            [
                ("model", UPSTREAM_MODEL),
                ("prompt", "invert it"),
                ("fallbacks[]", {"model": FALLBACK_MODEL}),
                ("fallbacks[]", {"model": "local/editor"}),
                ("webhook_events[]", "job.failed"),
            ]
        ),
    )
    assert status == 202, job
    assert job["request"]["routing"]["fallbacks"] == [
        {"model": FALLBACK_MODEL},
        {"model": "local/editor"},
    ]
    assert job["request"]["webhook_events"] == ["job.failed"]


@pytest.mark.parametrize("name", ["prompt", "prompt[]", "size"])
async def test_a_repeated_single_value_field_is_refused_by_name(
    service: RunningService, name: str
) -> None:
    value = "1024x1024" if name == "size" else "invert it"
    parts = [("model", "local/editor"), (name, value), (name, value)]
    if name == "size":
        parts.append(("prompt", "invert it"))
    status, body = await post_form(service, "/v1/jobs", multipart(parts))
    assert status == 400, body
    assert body["error"]["param"] == name.removesuffix("[]")
    _, listing = await service.get("/v1/jobs")
    assert listing["data"] == []


async def test_batch_variants_and_events_as_repeated_parts(service: RunningService) -> None:
    status, batch = await post_form(
        service,
        "/v1/batches",
        multipart(
            [
                ("defaults", {"model": "local/editor", "prompt": "invert it"}),
                ("variants[]", {"size": "64x64"}),
                ("variants[]", {"prompt": "make it grayscale"}),
                ("webhook_events[]", "batch.completed"),
            ]
        ),
    )
    assert status in (200, 202), batch
    assert batch["total"] == 2
    status, body = await post_form(
        service,
        "/v1/batches",
        multipart([("defaults", {"model": "local/editor", "prompt": "x"}), ("n", 2), ("n", 3)]),
    )
    assert status == 400, body
    assert body["error"]["param"] == "n"


async def test_the_orq_sdk_top_level_fallback_codes_take_effect(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="no"))

    def edit() -> Any:
        with orq_ai_sdk.Orq(api_key="key-a", server_url=service.url("")) as orq:
            return orq.router.images.edits.create(
                model=UPSTREAM_MODEL,
                prompt="make it grayscale",
                image={"file_name": "in.png", "content": png(), "content_type": "image/png"},
                fallback_on_codes=[400],
                fallbacks=[{"model": FALLBACK_MODEL}],
                retries=orq_ai_sdk.utils.RetryConfig("none", None, False),  # type: ignore[arg-type]
            )

    result = await asyncio.to_thread(edit)
    assert result.data
    assert [r.model for r in fake_upstream.requests] == ["gpt-image-1", "flux-kontext"]


async def open_stream(
    service: RunningService, path: str, last_event_id: str | None = None
) -> tuple[int, str]:
    """GET an event stream to its end; status and body text."""
    headers = {**service.auth(), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with service.client.get(
        service.url(path), headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        return response.status, await response.text()


def event_ids(body: str) -> list[str]:
    return [line.removeprefix("id: ") for line in body.splitlines() if line.startswith("id: ")]


async def test_a_reconnect_after_a_finished_jobs_last_event_is_204(
    service: RunningService,
) -> None:
    _, job, _ = await service.submit()
    await service.wait(job["id"])
    path = f"/v1/jobs/{job['id']}/events"
    status, body = await open_stream(service, path)
    assert status == 200
    assert body.startswith("retry: ")  # how long a browser waits before reconnecting
    ids = event_ids(body)
    status, _ = await open_stream(service, path, last_event_id=ids[-1])
    assert status == 204  # a browser's EventSource stops reconnecting on 204
    status, body = await open_stream(service, path, last_event_id=ids[-2])
    assert (status, event_ids(body)) == (200, ids[-1:])  # not yet at the end: the rest
    status, _ = await open_stream(service, f"{path}?last_event_id={ids[-1]}")
    assert status == 204


async def test_a_reconnect_after_a_finished_batchs_last_event_is_204(
    service: RunningService,
) -> None:
    status, batch = await service.post("/v1/batches", body=batch_of(1))
    assert status == 202, batch
    path = f"/v1/batches/{batch['id']}/events"
    status, body = await open_stream(service, path)  # ends when the batch does
    assert status == 200
    assert "retry: " in body
    status, _ = await open_stream(service, path, last_event_id=event_ids(body)[-1])
    assert status == 204


def batch_of(n: int, model: str = "local/editor") -> dict[str, Any]:
    return {
        "defaults": {
            "model": model,
            "prompt": "invert it",
            "images": [{"image_url": data_url(png())}],
        },
        "n": n,
    }


async def post_json(
    service: RunningService, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any], Any]:
    """POST JSON with key-a and extra headers; status, JSON body and headers."""
    async with service.client.post(
        service.url(path), json=body, headers={**service.auth(), **headers}
    ) as reply:
        return reply.status, await reply.json(), reply.headers


def edit_of(model: str = "local/editor") -> dict[str, Any]:
    return {"model": model, "prompt": "invert it", "images": [{"image_url": data_url(png())}]}


async def test_prefer_wait_answers_201_with_the_finished_job(service: RunningService) -> None:
    status, job, headers = await post_json(service, "/v1/jobs", edit_of(), {"Prefer": "wait=20"})
    assert status == 201, job
    assert job["status"] == "succeeded"
    assert job["result"]["data"][0]["url"].startswith("http")
    assert headers["Preference-Applied"] == "wait=20"
    assert headers["Location"] == f"/v1/jobs/{job['id']}"


async def test_prefer_wait_is_bounded_by_the_longest_long_poll(
    settings: Settings, providers: ProvidersConfig
) -> None:
    async with RunningService(settings.model_copy(update={"max_wait_s": 7}), providers) as api:
        status, job, headers = await post_json(api, "/v1/jobs", edit_of(), {"Prefer": "wait=600"})
    assert status == 201, job
    assert headers["Preference-Applied"] == "wait=7"


async def test_prefer_wait_past_the_wait_is_202_as_without_it(
    api_only: RunningService,
) -> None:  # no worker: the job cannot finish
    status, job, headers = await post_json(
        api_only, "/v1/jobs", edit_of(), {"Prefer": "respond-async, wait=1"}
    )
    assert status == 202, job
    assert job["status"] == "queued"
    status, job, headers = await post_json(api_only, "/v1/jobs", edit_of(), {})
    assert status == 202
    assert "Preference-Applied" not in headers
    status, batch, _ = await post_json(api_only, "/v1/batches", batch_of(1), {"Prefer": "wait=1"})
    assert status == 202, batch
    assert batch["status"] == "running"


async def test_prefer_wait_answers_201_with_the_finished_batch(service: RunningService) -> None:
    status, batch, headers = await post_json(
        service, "/v1/batches", batch_of(2), {"Prefer": "wait=20"}
    )
    assert status == 201, batch
    assert (batch["status"], batch["counts"]["succeeded"]) == ("completed", 2)
    assert headers["Preference-Applied"] == "wait=20"


async def test_jobs_and_batches_link_to_their_endpoints(service: RunningService) -> None:
    status, job, _ = await post_json(service, "/v1/jobs", edit_of(), {})
    assert status == 202
    base = f"/v1/jobs/{job['id']}"
    assert job["urls"] == {"get": base, "cancel": f"{base}/cancel", "events": f"{base}/events"}
    for path in (job["urls"]["get"], job["urls"]["events"]):
        status, _ = await open_stream(service, path)
        assert status == 200
    status, batch = await service.post("/v1/batches", body=batch_of(1))
    assert status == 202
    base = f"/v1/batches/{batch['id']}"
    assert batch["urls"] == {
        "get": base,
        "cancel": f"{base}/cancel",
        "events": f"{base}/events",
        "results": f"{base}/results",
        "download": f"{base}/download",
    }
    _, listed = await service.get("/v1/jobs")
    assert all(item["urls"]["get"] == f"/v1/jobs/{item['id']}" for item in listed["data"])


async def test_openai_edit_parameters_are_stored_and_forwarded(
    service: RunningService, sdk: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    raw = await sdk.images.with_raw_response.edit(
        model=UPSTREAM_MODEL,
        image=("a.png", png(), "image/png"),
        prompt="keep the face",
        input_fidelity="high",
        quality="standard",
    )
    assert "x-editq-ignored-params" not in raw.headers
    sent = fake_upstream.requests[-1]
    assert (sent.fields["input_fidelity"], sent.fields["quality"]) == ("high", "standard")
    _, job = await service.get(f"/v1/jobs/{raw.headers['x-job-id']}")
    assert job["request"]["input_fidelity"] == "high"
    status, body = await post_form(
        service,
        "/v1/jobs",
        multipart([("model", UPSTREAM_MODEL), ("prompt", "x"), ("input_fidelity", "exact")]),
    )
    assert (status, body["error"]["param"]) == (400, "input_fidelity")


async def test_parameters_editq_does_not_model_are_named_in_a_header(
    service: RunningService,
) -> None:
    form = multipart(
        [("model", "local/editor"), ("prompt", "invert it"), ("moderation", "low"), ("x_y", "1")]
    )
    async with service.client.post(
        service.url("/v1/jobs"), data=form, headers=service.auth()
    ) as reply:
        assert reply.status == 202
        assert reply.headers["x-editq-ignored-params"] == "moderation, x_y"
    status, _, headers = await post_json(
        service, "/v1/jobs", {**edit_of(), "seed": 7, "input_fidelity": "low"}, {}
    )
    assert status == 202
    assert headers["x-editq-ignored-params"] == "seed"
    status, _, headers = await post_json(service, "/v1/jobs", edit_of(), {})
    assert "x-editq-ignored-params" not in headers
    body = batch_of(1)
    body["defaults"]["style"] = "vivid"
    status, _, headers = await post_json(service, "/v1/batches", {**body, "priority": 1}, {})
    assert status == 202
    assert headers["x-editq-ignored-params"] == "defaults.style, priority"


@pytest.fixture
async def limited(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API (no worker) allowing 2 requests a minute per key."""
    update = {"rate_limit_per_minute": 2}
    async with RunningService(settings.model_copy(update=update), providers, worker=False) as api:
        yield api


async def test_metrics_scrapes_do_not_count_against_the_key(limited: RunningService) -> None:
    for _ in range(4):
        async with limited.client.get(limited.url("/metrics"), headers=limited.auth()) as reply:
            assert reply.status == 200
    status, _ = await limited.get("/v1/models")
    assert status == 200


async def test_a_rate_limited_answer_says_when_the_window_resets(limited: RunningService) -> None:
    for _ in range(2):
        await limited.get("/v1/models")
    async with limited.client.get(limited.url("/v1/models"), headers=limited.auth()) as reply:
        assert reply.status == 429
        reset = reply.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 1 <= int(reset.removesuffix("s")) <= 60


@pytest.fixture
async def cors_api(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API (no worker) letting one browser origin call it."""
    update = {"cors_origins": ("https://app.example",)}
    async with RunningService(settings.model_copy(update=update), providers, worker=False) as api:
        yield api


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


async def test_a_preflight_from_an_allowed_origin_is_answered_before_auth(
    cors_api: RunningService,
) -> None:
    headers = {"Origin": "https://app.example", **PREFLIGHT}
    async with cors_api.client.options(cors_api.url("/v1/jobs"), headers=headers) as reply:
        assert reply.status == 204  # no key needed: a browser sends none on a preflight
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in reply.headers["Access-Control-Allow-Methods"]
        allowed = reply.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type", "idempotency-key"} <= {
            name.strip() for name in allowed.split(",")
        }
    headers = {"Origin": "https://app.example", **cors_api.auth()}
    async with cors_api.client.get(cors_api.url("/v1/models"), headers=headers) as reply:
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "x-request-id" in reply.headers["Access-Control-Expose-Headers"]
        assert "Origin" in reply.headers["Vary"]


async def test_other_origins_and_the_default_get_no_cors(
    cors_api: RunningService, api_only: RunningService
) -> None:
    for api, origin in ((cors_api, "https://evil.example"), (api_only, "https://app.example")):
        headers = {"Origin": origin, **PREFLIGHT}
        async with api.client.options(api.url("/v1/jobs"), headers=headers) as reply:
            assert reply.status != 204
            assert "Access-Control-Allow-Origin" not in reply.headers
        headers = {"Origin": origin, **api.auth()}
        async with api.client.get(api.url("/v1/models"), headers=headers) as reply:
            assert "Access-Control-Allow-Origin" not in reply.headers


async def test_an_sse_client_library_reads_a_job_live_and_stops_at_its_end(
    service: RunningService,
) -> None:
    """httpx-sse, a common Python SSE client, follows a job from its submit to its end;
    its reconnect from the last id is answered 204, which ends an EventSource."""
    _, job, _ = await service.submit()
    url = service.url(f"/v1/jobs/{job['id']}/events")
    async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as http:
        async with httpx_sse.aconnect_sse(http, "GET", url, headers=service.auth()) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [event async for event in source.aiter_sse()]
        assert [event.event for event in events] == ["job.queued", "job.running", "job.succeeded"]
        assert events[0].retry is not None and events[0].retry > 0
        finished = json.loads(events[-1].data)
        assert finished["status"] == "succeeded" and job["id"] in events[-1].data
        headers = {**service.auth(), "Last-Event-ID": events[-1].id}
        reconnect = await http.get(url, headers=headers)
        assert reconnect.status_code == 204


async def test_a_stream_url_opens_its_own_event_stream_and_nothing_else(
    service: RunningService,
) -> None:
    _, job, _ = await service.submit()
    _, other, _ = await service.submit()
    status, minted = await service.post(f"/v1/jobs/{job['id']}/events/url")
    assert status == 200 and minted["object"] == "stream_url", minted
    token = minted["url"].split("?token=", 1)[1]
    async with httpx.AsyncClient(base_url=service.url(""), timeout=30) as http:
        opened = await http.get(minted["url"])  # no key
        assert opened.status_code == 200 and "event: job.succeeded" in opened.text
        for path in (
            f"/v1/jobs/{other['id']}/events?token={token}",  # another job
            f"/v1/jobs/{job['id']}?token={token}",  # the job itself
            f"/v1/jobs?token={token}",
        ):
            refused = await http.get(path)
            assert refused.status_code == 401, path
    status, missing = await service.post("/v1/jobs/job_nosuchjob0000000000000000/events/url")
    assert status == 404, missing
    status, foreign = await service.post(f"/v1/jobs/{job['id']}/events/url", key="key-b")
    assert status == 404, foreign  # another key's job does not exist for it
    status, minted = await service.post("/v1/batches", body=batch_of(1))
    assert status == 202, minted
    status, batch_url = await service.post(f"/v1/batches/{minted['id']}/events/url")
    assert status == 200, batch_url
    async with httpx.AsyncClient(base_url=service.url(""), timeout=30) as http:
        opened = await http.get(batch_url["url"])
        assert opened.status_code == 200 and "event: batch.completed" in opened.text
