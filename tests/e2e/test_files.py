"""The Files API and ``file_id`` references against the whole service: the official
openai SDK uploads, reads, lists and deletes files; jobs, batches and both drop-ins
name them by ``file_id``; bytes are stored once per tenant; a file is its key's alone;
expired files read as 404 and the janitor removes them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from app.store.keys import Keys
from tests.support.images import data_url, decode, mask, png
from tests.support.service import RunningService

MODEL = "local/editor"


@pytest.fixture
async def sdk(service: RunningService) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async openai SDK pointed at the service, without its own retries."""
    async with openai.AsyncOpenAI(
        base_url=service.url("/v1"), api_key="key-a", max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The test's bucket, read over HTTP from the S3 server."""
    store = ObjectStore(settings)
    yield store
    store.close()


async def upload(
    service: RunningService,
    data: bytes,
    *,
    key: str = "key-a",
    filename: str = "photo.png",
    **fields: str,
) -> tuple[int, dict[str, Any]]:
    """POST /v1/files as the openai SDK sends it; status and JSON body."""
    form = aiohttp.FormData()
    form.add_field("purpose", fields.pop("purpose", "vision"))
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    async with service.client.post(
        service.url("/v1/files"), data=form, headers=service.auth(key)
    ) as response:
        return response.status, await response.json()


async def post_json(
    service: RunningService, path: str, body: dict[str, Any], key: str = "key-a"
) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; status and JSON answer."""
    return await service.post(path, key, body)


async def test_the_openai_sdk_uploads_reads_lists_and_deletes_a_file(
    service: RunningService, sdk: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    image = png(40, 30)
    path = tmp_path / "photo.png"
    path.write_bytes(image)
    with path.open("rb") as handle:
        created = await sdk.files.create(file=handle, purpose="vision")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename) == ("file", len(image), "photo.png")
    assert created.purpose == "vision" and created.status == "processed"
    assert created.expires_at is None

    assert (await sdk.files.retrieve(created.id)).model_dump() == created.model_dump()
    listed = await sdk.files.list()
    assert [item.id for item in listed.data] == [created.id]
    content = await sdk.files.content(created.id)
    assert content.content == image

    deleted = await sdk.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(created.id)
    assert (await sdk.files.list()).data == []


async def test_the_sdk_sends_expires_after_and_it_sets_expires_at(
    service: RunningService, sdk: openai.AsyncOpenAI
) -> None:
    created = await sdk.files.create(
        file=("a.png", png(), "image/png"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(
            file=("a.png", png(), "image/png"),
            purpose="vision",
            expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert refused.value.body["param"] == "expires_after[seconds]"  # type: ignore[index]


async def test_a_job_uses_an_uploaded_file_by_file_id(
    service: RunningService, sdk: openai.AsyncOpenAI
) -> None:
    image = png(40, 30)
    created = await sdk.files.create(file=("a.png", image, "image/png"), purpose="vision")
    status, job = await post_json(
        service,
        "/v1/jobs",
        {"model": MODEL, "prompt": "make it grayscale", "images": [{"file_id": created.id}]},
    )
    assert status == 202, job
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done.get("error")
    assert done["request"]["images"][0]["bytes"] == len(image)
    output = decode(await service.download(done["result"]["data"][0]["url"]))
    assert output.size == (40, 30)


async def test_a_file_id_mask_is_accepted(service: RunningService) -> None:
    _, image = await upload(service, png(64, 48))
    _, holes = await upload(service, mask(64, 48), filename="mask.png")
    status, job = await post_json(
        service,
        "/v1/jobs",
        {
            "model": MODEL,
            "prompt": "make it grayscale",
            "images": [{"file_id": image["id"]}],
            "mask": {"file_id": holes["id"]},
        },
    )
    assert status == 202, job
    assert job["request"]["mask"]["bytes"] == holes["bytes"]
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done.get("error")


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v2/router/images/edits"])
async def test_both_drop_ins_take_a_file_id_in_json(service: RunningService, path: str) -> None:
    _, created = await upload(service, png(32, 32))
    status, body = await post_json(
        service,
        path,
        {"model": MODEL, "prompt": "make it grayscale", "images": [{"file_id": created["id"]}]},
    )
    assert status == 200, body
    assert len(body["data"]) == 1 and body["data"][0]["b64_json"]


async def test_a_batch_of_200_variants_takes_a_file_id_in_its_defaults(
    service: RunningService,
) -> None:
    _, created = await upload(service, png(24, 24))
    body = {
        "defaults": {
            "model": MODEL,
            "prompt": "make it grayscale",
            "images": [{"file_id": created["id"]}],
        },
        "n": 200,
    }
    started = time.monotonic()
    status, batch = await post_json(service, "/v1/batches", body)
    assert status == 202, batch
    async with service.client.delete(  # the variants hold the batch's own copy
        service.url(f"/v1/files/{created['id']}"), headers=service.auth()
    ) as response:
        assert response.status == 200
    deadline = time.monotonic() + 120
    while batch["status"] == "running" and time.monotonic() < deadline:
        _, batch = await service.get(f"/v1/batches/{batch['id']}?wait=10")
    print(f"\n200 variants from one file_id: {time.monotonic() - started:.1f} s")
    assert batch["status"] == "completed", batch
    assert batch["counts"]["succeeded"] == 200, batch


async def test_an_unknown_file_id_is_a_400_naming_the_param(service: RunningService) -> None:
    status, body = await post_json(
        service,
        "/v1/jobs",
        {"model": MODEL, "prompt": "x", "images": [{"file_id": "file-0000000000000000nothere"}]},
    )
    assert status == 400, body
    assert body["error"]["param"] == "images[0].file_id"
    status, body = await post_json(
        service,
        "/v1/jobs",
        {
            "model": MODEL,
            "prompt": "x",
            "images": [{"image_url": data_url(png())}],
            "mask": {"file_id": "../../etc"},
        },
    )
    assert status == 400, body
    assert body["error"]["param"] == "mask.file_id"


async def test_a_file_is_its_keys_alone(service: RunningService) -> None:
    _, created = await upload(service, png(), key="key-a")
    file_id = created["id"]
    for method, path in [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]:
        async with service.client.request(
            method, service.url(path), headers=service.auth("key-b")
        ) as response:
            assert response.status == 404, (method, path)
    status, listed = await service.get("/v1/files", "key-b")
    assert status == 200 and listed["data"] == []
    status, body = await post_json(
        service,
        "/v1/jobs",
        {"model": MODEL, "prompt": "x", "images": [{"file_id": file_id}]},
        key="key-b",
    )
    assert status == 400 and body["error"]["param"] == "images[0].file_id", body
    assert (await service.get(f"/v1/files/{file_id}", "key-a"))[0] == 200  # still there


async def test_the_same_bytes_uploaded_twice_are_one_object(
    service: RunningService, storage: ObjectStore
) -> None:
    image = png(50, 50)
    _, first = await upload(service, image, key="key-a")
    _, second = await upload(service, image, key="key-a", filename="again.png")
    _, other = await upload(service, image, key="key-b")
    assert len({first["id"], second["id"], other["id"]}) == 3
    assert len(await storage.list_keys("files/")) == 2  # one per tenant
    tenant_a = await storage.list_keys("files/")
    await service.client.delete(service.url(f"/v1/files/{first['id']}"), headers=service.auth())
    assert await storage.list_keys("files/") == tenant_a  # the second still uses it
    status, content = await _content(service, second["id"])
    assert status == 200 and content == image
    await service.client.delete(service.url(f"/v1/files/{second['id']}"), headers=service.auth())
    assert len(await storage.list_keys("files/")) == 1  # key-b's copy alone is left


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"this is not an image at all", 415, "unsupported_media_type"),
        (png()[:60], 400, "invalid_request_error"),
        (b"", 400, "invalid_request_error"),
    ],
)
async def test_a_bad_image_is_refused_as_at_submit(
    service: RunningService, data: bytes, status: int, code: str
) -> None:
    answered, body = await upload(service, data)
    submitted, job, _ = await service.submit(images=[data])
    assert (answered, submitted) == (status, status), (body, job)
    assert body["error"]["code"] == job["error"]["code"]
    assert body["error"]["param"] == "file" and job["error"]["param"] == "image[0]"
    assert (await service.get("/v1/files"))[1]["data"] == []


async def test_a_file_deleted_after_its_job_was_queued_does_not_break_it(
    api_only: RunningService,
) -> None:
    _, created = await upload(api_only, png(20, 20))
    status, job = await post_json(
        api_only,
        "/v1/jobs",
        {"model": MODEL, "prompt": "make it grayscale", "images": [{"file_id": created["id"]}]},
    )
    assert status == 202 and job["status"] == "queued", job
    async with api_only.client.delete(
        api_only.url(f"/v1/files/{created['id']}"), headers=api_only.auth()
    ) as response:
        assert response.status == 200
    await api_only.start_worker()
    assert (await api_only.wait(job["id"]))["status"] == "succeeded"


async def test_the_files_list_pages_filters_and_orders(service: RunningService) -> None:
    ids = []
    for index in range(3):
        _, created = await upload(
            service, png(10 + index, 10), purpose="vision" if index else "user_data"
        )
        ids.append(created["id"])
        await asyncio.sleep(0.002)  # distinct creation milliseconds
    _, page = await service.get("/v1/files?limit=2")
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    _, rest = await service.get(f"/v1/files?limit=2&after={page['last_id']}")
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    _, ascending = await service.get("/v1/files?order=asc")
    assert [f["id"] for f in ascending["data"]] == ids
    _, vision = await service.get("/v1/files?purpose=vision")
    assert [f["id"] for f in vision["data"]] == ids[::-1][:2]
    status, body = await service.get("/v1/files?order=sideways")
    assert status == 400 and body["error"]["param"] == "order"


async def test_an_expired_file_is_404_and_housekeeping_removes_it(
    settings: Settings, providers: ProvidersConfig, storage: ObjectStore
) -> None:
    quick = settings.model_copy(update={"janitor_interval_s": 0.3})
    async with RunningService(quick, providers) as service:
        shared, alone = png(30, 30), png(31, 31)
        _, expiring = await upload(service, shared, **_an_hour())
        _, kept = await upload(service, shared)
        _, lone = await upload(service, alone, **_an_hour())
        assert len(await storage.list_keys("files/")) == 2
        await _expire(settings, expiring["id"], lone["id"])

        for file_id in (expiring["id"], lone["id"]):
            assert (await service.get(f"/v1/files/{file_id}"))[0] == 404
            status, body = await post_json(
                service,
                "/v1/jobs",
                {"model": MODEL, "prompt": "x", "images": [{"file_id": file_id}]},
            )
            assert status == 400 and body["error"]["param"] == "images[0].file_id"
        _, listed = await service.get("/v1/files")
        assert [f["id"] for f in listed["data"]] == [kept["id"]]

        deadline = time.monotonic() + 10
        while len(await storage.list_keys("files/")) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(await storage.list_keys("files/")) == 1  # the lone object went
        status, content = await _content(service, kept["id"])
        assert status == 200 and content == shared  # the shared one stays for the kept file
        redis = Redis.from_url(settings.redis_url)
        try:
            keys = Keys(settings.key_prefix)
            assert not await redis.exists(keys.file(expiring["id"]), keys.file(lone["id"]))
        finally:
            await redis.aclose()


def _an_hour() -> dict[str, str]:
    return {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}


async def _expire(settings: Settings, *file_ids: str) -> None:
    """Move the files' expiry into the past, as if the hour had passed."""
    redis = Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    past = int(time.time()) - 1
    try:
        for file_id in file_ids:
            await redis.hset(keys.file(file_id), "expires_at", past)
            await redis.zadd(keys.files_expiry, {file_id: past * 1000})
    finally:
        await redis.aclose()


async def _content(service: RunningService, file_id: str) -> tuple[int, bytes]:
    async with service.client.get(
        service.url(f"/v1/files/{file_id}/content"), headers=service.auth()
    ) as response:
        return response.status, await response.read()
