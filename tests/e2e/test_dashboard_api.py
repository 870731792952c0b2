"""The endpoints behind the dashboard: its files, a job's inputs, a batch's zip, the queue."""

from __future__ import annotations

import io
import re
import zipfile
from importlib import resources
from typing import Any

import pytest

from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, decode, mask, png
from tests.support.service import RunningService


async def wait_batch(service: RunningService, batch_id: str) -> dict[str, Any]:
    for _ in range(12):
        status, batch = await service.get(f"/v1/batches/{batch_id}?wait=5")
        assert status == 200, batch
        if batch["status"] != "running":
            return batch
    raise AssertionError(f"batch {batch_id} still running: {batch}")


async def read_raw(
    service: RunningService, path: str, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = service.auth(key) if key else {}
    async with service.client.get(service.url(path), headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_the_dashboard_files_are_public_and_locked_to_this_origin(
    api_only: RunningService, settings: Settings
) -> None:
    status, headers, body = await read_raw(api_only, "/ui")
    assert status == 200, body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/ui/app.js">' in body
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert f"img-src 'self' data: blob: {settings.s3_endpoint_url}" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert (await read_raw(api_only, "/ui/"))[2] == body

    scripts = [
        entry.name
        for entry in resources.files("app.http").joinpath("ui").iterdir()
        if entry.name.endswith(".js")
    ]
    assert "app.js" in scripts
    for name in scripts:
        status, headers, source = await read_raw(api_only, f"/ui/{name}")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        for imported in re.findall(rb'from "\./([\w.]+)"', source):
            assert (await read_raw(api_only, f"/ui/{imported.decode()}"))[0] == 200, imported
    assert (await read_raw(api_only, "/ui/app.css"))[1]["Content-Type"].startswith("text/css")

    for missing in ("/ui/nope.js", "/ui/__init__.py", "/ui/..%2Fmain.py"):
        status, _, body = await read_raw(api_only, missing)
        assert status == 404, (missing, body)
    assert (await read_raw(api_only, "/uix"))[0] == 401


async def test_the_root_redirects_to_the_dashboard(api_only: RunningService) -> None:
    """A browser pointed at the service's address lands on the dashboard, without a key."""
    async with api_only.client.get(api_only.url("/"), allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        assert response.headers["Location"] == "/ui"


async def test_a_jobs_inputs_are_linked_for_its_own_key_only(service: RunningService) -> None:
    status, job, _ = await service.submit(images=[png(64, 48)], mask=mask(64, 48))
    assert status == 202, job
    status, inputs = await service.get(f"/v1/jobs/{job['id']}/inputs")
    assert status == 200, inputs
    assert inputs["object"] == "edit.job.inputs" and inputs["job_id"] == job["id"]
    [image] = inputs["images"]
    assert (image["width"], image["height"], image["content_type"]) == (64, 48, "image/png")
    assert decode(await service.download(image["url"])).size == (64, 48)
    assert decode(await service.download(inputs["mask"]["url"])).mode == "RGBA"

    status, other = await service.get(f"/v1/jobs/{job['id']}/inputs", key="key-b")
    assert status == 404, other
    assert (await service.get("/v1/jobs/job_missing/inputs"))[0] == 404


async def test_a_batch_downloads_as_a_zip_of_its_succeeded_outputs(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.json_error(400, code="invalid_request_error", message="bad"))
    body = {
        "defaults": {"model": "fake/gpt-image-1", "images": [{"image_url": data_url(png(32, 24))}]},
        "variants": [{"prompt": f"variant {i}"} for i in range(4)],
    }
    status, batch = await service.post("/v1/batches", body=body)
    assert status == 202, batch
    done = await wait_batch(service, batch["id"])
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (3, 1)
    _, page = await service.get(f"/v1/batches/{batch['id']}/jobs")
    succeeded = [job for job in page["data"] if job["status"] == "succeeded"]

    status, headers, data = await read_raw(service, f"/v1/batches/{batch['id']}/download", "key-a")
    assert status == 200, data
    assert headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"] == f'attachment; filename="{batch["id"]}.zip"'
    assert "Content-Length" not in headers  # streamed while it is built
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == [f"variant-{job['variant_index']:04d}-0.png" for job in succeeded]
        for job, name in zip(succeeded, names, strict=True):
            expected = await service.download(job["result"]["data"][0]["url"])
            assert archive.read(name) == expected

    status, _, _ = await read_raw(service, f"/v1/batches/{batch['id']}/download", "key-b")
    assert status == 404


async def test_the_queue_shows_lanes_slots_and_live_workers(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 30
    status, job, _ = await service.submit(model="fake/gpt-image-1")
    assert status == 202, job
    await service.wait_for_status(job["id"], "running")
    await fake_upstream.wait_for_requests(1)
    status, queue = await service.get("/v1/queue")
    assert status == 200, queue
    assert queue["object"] == "queue"
    lanes = {lane["name"]: lane for lane in queue["lanes"]}
    assert set(lanes) == {"interactive", "bulk"}
    assert lanes["interactive"]["depth"] == 1  # the running job's leased run
    assert lanes["bulk"]["depth"] == 0
    assert all(lane["worker_alive"] and lane["worker_report"] for lane in lanes.values())
    upstreams = {upstream["name"]: upstream for upstream in queue["upstreams"]}
    assert upstreams["fake"] == {
        "name": "fake",
        "in_flight": 1,
        "max_concurrency": 16,
        "waiting": 0,
    }
    assert upstreams["local"]["in_flight"] == 0
    assert (await service.post(f"/v1/jobs/{job['id']}/cancel"))[0] == 200


async def test_without_a_worker_the_queue_says_so(api_only: RunningService) -> None:
    for _ in range(2):
        assert (await api_only.submit())[0] == 202
    status, queue = await api_only.get("/v1/queue", key="key-b")
    assert status == 200, queue
    assert [(lane["depth"], lane["worker_alive"]) for lane in queue["lanes"]] == [
        (2, False),
        (0, False),
    ]


@pytest.mark.parametrize(
    "path", ["/v1/queue", "/v1/jobs/job_x/inputs", "/v1/batches/batch_x/download"]
)
async def test_the_new_endpoints_need_a_key(api_only: RunningService, path: str) -> None:
    status, _, body = await read_raw(api_only, path)
    assert status == 401, body
