"""The async job API driven over HTTP as a client would, with a real worker,
Redis, S3 server and fake upstream."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, decode, mask, png
from tests.support.service import RunningService


async def test_multipart_submit_poll_and_download(service: RunningService) -> None:
    status, job, response = await service.submit(
        images=[png(80, 60)], prompt="make it grayscale", output_format="webp"
    )
    assert status == 202
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["x-request-id"]
    assert job["object"] == "edit.job"
    assert job["status"] in ("queued", "running", "succeeded")
    assert job["request"]["images"][0] == {
        "content_type": "image/png",
        "bytes": len(png(80, 60)),
        "width": 80,
        "height": 60,
    }

    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["started_at"] >= done["created_at"]
    assert done["finished_at"] >= done["started_at"]
    result = done["result"]
    assert result["output_format"] == "webp"
    assert result["size"] == "80x60"
    assert result["usage"]["total_tokens"] > 0
    image = decode(await service.download(result["data"][0]["url"]))
    assert (image.format, image.size) == ("WEBP", (80, 60))
    red, green, blue = image.convert("RGB").getpixel((2, 2))  # type: ignore[misc]
    assert red == green == blue  # grayscale really applied
    assert [a["status"] for a in done["attempts"]] == [200]


async def test_json_submit_with_data_urls(service: RunningService) -> None:
    body = {
        "model": "local/editor",
        "prompt": "invert it",
        "images": [{"image_url": data_url(png(64, 48))}],
        "mask": {"image_url": data_url(mask(64, 48))},
        "size": "32x24",
        "output_format": "jpeg",
        "output_compression": 30,
        "metadata": {"order": "42"},
        "vendor_extra": {"ignored": True},
    }
    status, job = await service.post("/v1/jobs", body=body)
    assert status == 202, job
    assert job["metadata"] == {"order": "42"}
    assert job["request"]["mask"]["width"] == 64
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    image = decode(await service.download(done["result"]["data"][0]["url"]))
    assert (image.format, image.size) == ("JPEG", (32, 24))


async def test_poll_without_wait_sees_queued_then_succeeded(api_only: RunningService) -> None:
    status, job, _ = await api_only.submit()
    assert status == 202
    _, polled = await api_only.get(f"/v1/jobs/{job['id']}")
    assert polled["status"] == "queued"
    await api_only.start_worker()
    for _ in range(200):
        _, polled = await api_only.get(f"/v1/jobs/{job['id']}")
        if polled["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert polled["status"] == "succeeded"


async def test_long_poll_returns_when_the_job_finishes(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.5
    _, job, _ = await service.submit(model="fake/gpt-image-1")
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, done = await service.get(f"/v1/jobs/{job['id']}?wait=20")
    assert status == 200
    assert done["status"] == "succeeded"
    assert loop.time() - began < 15  # woken by the event, not by the 20 s timeout


async def test_long_poll_times_out_with_the_current_state(api_only: RunningService) -> None:
    _, job, _ = await api_only.submit()
    status, polled = await api_only.get(f"/v1/jobs/{job['id']}?wait=0.3")
    assert (status, polled["status"]) == (200, "queued")


async def test_n3_runs_the_calls_in_parallel(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 1.0
    _, job, _ = await service.submit(model="fake/gpt-image-1", n=3)
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert len(done["result"]["data"]) == 3
    assert fake_upstream.max_in_flight == 3
    assert sorted(a["output_index"] for a in done["attempts"]) == [0, 1, 2]
    outputs = [await service.download(item["url"]) for item in done["result"]["data"]]
    assert all(decode(blob).format == "PNG" for blob in outputs)
    assert all(r.model == "gpt-image-1" for r in fake_upstream.requests)


async def test_n_accepts_integer_strings(service: RunningService) -> None:
    for text in ("2", "2.0"):
        status, job, _ = await service.submit(n=text)
        assert status == 202, job
        assert job["request"]["n"] == 2


async def test_several_images_and_a_mask_reach_the_upstream(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    status, job, _ = await service.submit(
        model="fake/gpt-image-1", images=[png(), png(), png()], mask=mask()
    )
    assert status == 202, job
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    sent = fake_upstream.requests[-1]
    assert len(sent.images) == 3
    assert sent.has_mask


async def test_cancel_a_queued_job_it_never_runs(
    api_only: RunningService, fake_upstream: FakeUpstream
) -> None:
    _, job, _ = await api_only.submit(model="fake/gpt-image-1")
    status, canceled = await api_only.post(f"/v1/jobs/{job['id']}/cancel")
    assert (status, canceled["status"]) == (200, "canceled")
    await api_only.start_worker()
    _, other, _ = await api_only.submit(model="fake/gpt-image-1")
    assert (await api_only.wait(other["id"]))["status"] == "succeeded"
    _, after = await api_only.get(f"/v1/jobs/{job['id']}")
    assert after["status"] == "canceled"
    assert after["attempts"] == []
    assert len(fake_upstream.requests) == 1  # only the other job's call


async def test_cancel_a_running_job_abandons_the_upstream_call(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 60
    _, job, _ = await service.submit(model="fake/gpt-image-1")
    await service.wait_for_status(job["id"], "running")
    await fake_upstream.wait_for_requests(1)
    status, canceled = await service.post(f"/v1/jobs/{job['id']}/cancel")
    assert (status, canceled["status"]) == (200, "canceled")
    await fake_upstream.wait_idle(timeout_s=5)  # the worker hung up on the upstream
    _, after = await service.get(f"/v1/jobs/{job['id']}")
    assert after["status"] == "canceled"
    status, again = await service.post(f"/v1/jobs/{job['id']}/cancel")
    assert (status, again["error"]["code"]) == (409, "conflict")


async def test_failed_job_reports_the_upstream_error_and_can_be_retried(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(500))
    _, job, _ = await service.submit(model="fake/gpt-image-1")
    failed = await service.wait(job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "upstream_error"
    assert failed["attempts"][0]["status"] == 500

    status, retried = await service.post(f"/v1/jobs/{job['id']}/retry")
    assert status == 202, retried
    assert retried["id"] == job["id"]
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded"
    assert [(a["run"], a["status"]) for a in done["attempts"]] == [(1, 500), (2, 200)]
    assert done["error"] is None

    status, refused = await service.post(f"/v1/jobs/{job['id']}/retry")
    assert (status, refused["error"]["code"]) == (409, "conflict")


async def test_a_prompt_the_local_editor_does_not_understand_fails_the_job(
    service: RunningService,
) -> None:
    status, job, _ = await service.submit(prompt="make it look like a watercolour")
    assert status == 202, job
    failed = await service.wait(job["id"])
    assert failed["status"] == "failed", failed
    assert failed["result"] is None
    assert failed["error"]["code"] == "unsupported_prompt"
    assert "sepia" in failed["error"]["message"]

    form = aiohttp.FormData({"model": "local/editor", "prompt": "make it look like a watercolour"})
    form.add_field("image", png(), filename="in.png", content_type="image/png")
    async with service.client.post(
        service.url("/v1/images/edits"), data=form, headers=service.auth()
    ) as response:
        answer = await response.json()
        assert response.status == 400, answer
    assert answer["error"]["code"] == "unsupported_prompt"


async def test_another_key_gets_404_for_everything(service: RunningService) -> None:
    _, job, _ = await service.submit(key="key-a")
    path = f"/v1/jobs/{job['id']}"
    for status, body in (
        await service.get(path, key="key-b"),
        await service.post(f"{path}/cancel", key="key-b"),
        await service.post(f"{path}/retry", key="key-b"),
    ):
        assert status == 404
        assert body["error"]["code"] == "not_found"
    _, listing = await service.get("/v1/jobs", key="key-b")
    assert listing["data"] == []


async def test_list_is_newest_first_and_cursor_paged(service: RunningService) -> None:
    ids = []
    for _ in range(3):
        _, job, _ = await service.submit()
        ids.append(job["id"])
    status, first = await service.get("/v1/jobs?limit=2")
    assert status == 200
    assert first["object"] == "list"
    assert [job["id"] for job in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    _, second = await service.get(f"/v1/jobs?limit=2&after={first['last_id']}")
    assert [job["id"] for job in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    for job_id in ids:
        await service.wait(job_id)
    _, succeeded = await service.get("/v1/jobs?status=succeeded")
    assert {job["id"] for job in succeeded["data"]} == set(ids)
    _, failed = await service.get("/v1/jobs?status=failed")
    assert failed["data"] == []


async def test_models_health_and_readiness(service: RunningService) -> None:
    status, models = await service.get("/v1/models")
    assert status == 200
    by_id = {model["id"]: model for model in models["data"]}
    assert "image_edit" in by_id["local/editor"]["capabilities"]
    assert "image_edit" not in by_id["text/chat-only"]["capabilities"]
    async with service.client.get(service.url("/healthz")) as response:
        assert response.status == 200
    async with service.client.get(service.url("/readyz")) as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"redis": "ok", "s3": "ok"}


async def test_docs_page_lists_every_route_without_a_key(service: RunningService) -> None:
    async with service.client.get(service.url("/docs")) as response:
        assert response.status == 200
        page = await response.text()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/retry", "/v1/models"):
        assert f"<code>{path}</code>" in page
