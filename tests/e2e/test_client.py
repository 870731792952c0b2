"""The Python client (app.client) against the real running service: submit, wait,
download, cancel, retry, list, errors; the blocking client from a thread; and the
SSE reader against a small server speaking the event-stream format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from app.cli.embedded import free_port
from app.client.api import AsyncEditqClient, EditqClient
from app.client.models import EditqClientError, EditqConnectionError, ServerSentEvent
from tests.support.images import decode, mask, png
from tests.support.service import RunningService


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[AsyncEditqClient]:
    """The async client for key-a of the running service."""
    async with AsyncEditqClient(service.base_url, "key-a") as client:
        yield client


@pytest.fixture
async def queued_client(api_only: RunningService) -> AsyncIterator[AsyncEditqClient]:
    """The async client for key-a of a service with no worker (jobs stay queued)."""
    async with AsyncEditqClient(api_only.base_url, "key-a") as client:
        yield client


async def test_submit_wait_and_download(client: AsyncEditqClient, tmp_path: Path) -> None:
    job = await client.submit(
        [png(80, 60)],
        "make it grayscale",
        model="local/editor",
        output_format="webp",
        metadata={"order": "7"},
    )
    assert job.object == "edit.job"
    assert job.status in ("queued", "running", "succeeded")
    assert job.metadata == {"order": "7"}
    assert job.request["images"][0]["width"] == 80

    done = await client.wait(job.id, timeout=30)
    assert done.status == "succeeded", done
    assert done.terminal
    assert done.result is not None
    assert (done.result.output_format, done.result.size) == ("webp", "80x60")
    url = done.result.data[0].url
    assert url is not None
    image = decode(await client.download(url))
    assert (image.format, image.size) == ("WEBP", (80, 60))
    red, green, blue = image.convert("RGB").getpixel((2, 2))  # type: ignore[misc]
    assert red == green == blue

    paths = await client.download_outputs(done, tmp_path / "out")
    assert paths == [tmp_path / "out" / f"{job.id}-0.webp"]
    assert decode(paths[0].read_bytes()).size == (80, 60)


async def test_submit_from_paths_with_mask_and_n(client: AsyncEditqClient, tmp_path: Path) -> None:
    photo, stencil = tmp_path / "photo.png", tmp_path / "mask.png"
    photo.write_bytes(png(64, 48))
    stencil.write_bytes(mask(64, 48))
    job = await client.submit(
        photo,
        "invert it",
        model="local/editor",
        mask=stencil,
        n=2,
        size="32x24",
        output_format="jpeg",
    )
    assert job.request["mask"]["width"] == 64
    assert job.request["n"] == 2
    done = await client.wait(job.id, timeout=30)
    assert done.status == "succeeded", done
    paths = await client.download_outputs(done, tmp_path)
    assert [path.name for path in paths] == [f"{job.id}-0.jpeg", f"{job.id}-1.jpeg"]
    for path in paths:
        image = decode(path.read_bytes())
        assert (image.format, image.size) == ("JPEG", (32, 24))


async def test_cancel_retry_and_cancel_again(queued_client: AsyncEditqClient) -> None:
    job = await queued_client.submit(png(), "blur it", model="local/editor")
    canceled = await queued_client.cancel(job.id)
    assert (canceled.id, canceled.status) == (job.id, "canceled")
    retried = await queued_client.retry(job.id)
    assert (retried.id, retried.status) == (job.id, "queued")
    assert (await queued_client.cancel(job.id)).status == "canceled"
    with pytest.raises(EditqClientError) as caught:
        await queued_client.cancel(job.id)
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert str(caught.value).startswith("409 conflict: ")


async def test_list_pages_newest_first(queued_client: AsyncEditqClient) -> None:
    first = await queued_client.submit(png(), "mirror it", model="local/editor")
    second = await queued_client.submit(png(), "flip it", model="local/editor")
    page = await queued_client.list(limit=1)
    assert [job.id for job in page.data] == [second.id]
    assert page.has_more
    rest = await queued_client.list(limit=10, after=page.last_id)
    assert [job.id for job in rest.data] == [first.id]
    assert not rest.has_more
    await queued_client.cancel(first.id)
    queued = await queued_client.list(status="queued")
    assert [job.id for job in queued.data] == [second.id]


async def test_wait_gives_up_after_its_timeout(queued_client: AsyncEditqClient) -> None:
    job = await queued_client.submit(png(), "blur it", model="local/editor")
    with pytest.raises(TimeoutError, match="still queued"):
        await queued_client.wait(job.id, timeout=0.3)


async def test_errors_carry_status_code_and_param(
    client: AsyncEditqClient, service: RunningService
) -> None:
    with pytest.raises(EditqClientError) as caught:
        await client.submit(png(), "blur it", model="local/editor", n=11)
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "invalid_request_error", "n")
    assert error.type == "invalid_request_error"
    assert str(error) == (
        "400 invalid_request_error (param n): n: Input should be less than or equal to 10"
    )
    with pytest.raises(EditqClientError) as caught:
        await client.get("job_doesnotexist")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    async with AsyncEditqClient(service.base_url, "wrong-key") as stranger:
        with pytest.raises(EditqClientError) as caught:
            await stranger.list()
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


async def test_unreachable_service_is_a_connection_error() -> None:
    async with AsyncEditqClient(f"http://127.0.0.1:{free_port()}", "key-a") as client:
        with pytest.raises(EditqConnectionError) as caught:
            await client.get("job_x")
    assert caught.value.status is None
    assert "cannot connect to http://127.0.0.1:" in str(caught.value)
    assert "Connection refused" in str(caught.value)


async def test_blocking_client_from_a_thread(service: RunningService, tmp_path: Path) -> None:
    def use_it() -> tuple[str, list[Path], int]:
        with EditqClient(service.base_url, "key-a") as client:
            job = client.submit(png(40, 30), "make it sepia", model="local/editor")
            done = client.wait(job.id, timeout=30)
            paths = client.download_outputs(done, tmp_path)
            listed = client.list(limit=5)
            return done.status, paths, len(listed.data)

    status, paths, listed = await asyncio.to_thread(use_it)
    assert (status, listed) == ("succeeded", 1)
    assert decode(paths[0].read_bytes()).size == (40, 30)


async def test_blocking_client_refuses_a_running_loop(service: RunningService) -> None:
    client = EditqClient(service.base_url, "key-a")
    try:
        with pytest.raises(RuntimeError, match="AsyncEditqClient"):
            client.get("job_x")
    finally:
        await asyncio.to_thread(client.close)


async def test_events_reads_the_event_stream_format() -> None:
    """Not the editq endpoint (being built): a server speaking text/event-stream with
    a BOM, comments, CRLF and CR line ends, multi-line data, ids, retry and UTF-8,
    sent in chunks that split lines and characters."""
    seen_headers: list[str | None] = []
    body = (
        "\ufeff: keep-alive\r\n\r\n"
        'id: 1\r\nevent: job.running\r\ndata: {"status": "running"}\r\n\r\n'
        "retry: 2500\rdata: line one\rdata:line two\r\r"
        "event: note\ndata: café ✓ naïve\n\n"
        'id: 3\nevent: job.succeeded\ndata: {"status":\n\n'
        "data: unfinished event is dropped"
    ).encode()

    async def stream(request: web.Request) -> web.StreamResponse:
        seen_headers.append(request.headers.get("Last-Event-ID"))
        assert request.match_info["job_id"] == "job_1"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 7):
            await response.write(body[start : start + 7])
            await asyncio.sleep(0)
        return response

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/events", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AsyncEditqClient(f"http://127.0.0.1:{port}", "key-a") as client:
            events = [event async for event in client.events("job_1", last_event_id="0")]
    finally:
        await runner.cleanup()
    assert seen_headers == ["0"]
    assert events == [
        ServerSentEvent("job.running", '{"status": "running"}', "1"),
        ServerSentEvent("message", "line one\nline two", "1", 2500),
        ServerSentEvent("note", "café ✓ naïve", "1", 2500),
        ServerSentEvent("job.succeeded", '{"status":', "3", 2500),
    ]
    assert events[0].json() == {"status": "running"}
