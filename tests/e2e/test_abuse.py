"""Hostile requests against the real service: each is refused with its documented
error, never a 5xx, without the API's memory jumping, and without holding a
connection open. The API runs in this process, so its memory is this process's."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest
from PIL import Image

from app.blobs import ObjectStore
from app.cli.embedded import free_port
from app.client.models import ServerSentEvent, SseDecoder
from app.core.providers_config import ProvidersConfig
from app.settings import MB, Settings
from tests.support.attacks import MANY_PARTS_TYPE, many_parts, maximal_metadata
from tests.support.bombs import lossless_webp, record_decodes
from tests.support.fakes.upstream import FakeUpstream
from tests.support.images import data_url, png
from tests.support.service import RunningService

BODY_TIMEOUT_S = 1.0


class PeakMemory:
    """How far this process's resident memory peaked above where it was on entry (bytes).

    Resets the kernel's high-water mark (``VmHWM``) on entry, so earlier tests'
    peaks do not hide this block's.
    """

    def __init__(self) -> None:
        self.growth = 0
        self._before_kb = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self._before_kb = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.growth = (_status_kb("VmHWM") - self._before_kb) * 1024


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match is not None, field
    return int(match[1])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels: tens of KB on the wire,
    hundreds of MB once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) with its IHDR rewritten to claim ``width`` x ``height``."""
    header = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _chunk(b"IHDR", header) + data[33:]


def uncompressed_png(side: int, shade: int) -> bytes:
    """An RGB PNG stored without compression: about 3 * side**2 bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 255 - shade, 128)).save(
        buffer, format="PNG", compress_level=0
    )
    return buffer.getvalue()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZ"}


def multipart(*parts: tuple[bytes | None, bytes]) -> bytes:
    """A multipart/form-data body (boundary ``XyZ``) written by hand: each part is its
    Content-Disposition (None: no such header at all) and its content."""
    body = b""
    for disposition, content in parts:
        header = b"" if disposition is None else b"Content-Disposition: " + disposition + b"\r\n"
        body += b"--XyZ\r\n" + header + b"\r\n" + content + b"\r\n"
    return body + b"--XyZ--\r\n"


def _assert_error(
    status: int, body: dict[str, Any], want: int, code: str, param: str | None
) -> None:
    assert status == want, body
    assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body


async def _post(
    service: RunningService, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with service.client.post(
        service.url("/v1/jobs"), data=data, headers={**service.auth(), **(headers or {})}
    ) as response:
        return response.status, await response.json()


def _head(service: RunningService, content_length: int, content_type: str) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
        f"Authorization: Bearer key-a\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head)[1])  # type: ignore[index]
    return status, json.loads(await reader.readexactly(length))


async def _hung_up(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (a reset counts: the client may still
    have been sending)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
async def lone_api(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API (no worker) with S3 in another process, so this process's memory is the
    API's alone (the shared S3 server keeps uploads in this process's memory)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _until_listening(port)
        apart = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"})
        storage = ObjectStore(apart)
        await storage.ensure_bucket()
        storage.close()
        async with RunningService(apart, providers, worker=False) as running:
            yield running
    finally:
        server.terminate()
        server.wait(10)


async def _until_listening(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


@pytest.fixture
async def impatient(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API (no worker) that waits only BODY_TIMEOUT_S for a request body."""
    quick = settings.model_copy(update={"body_read_timeout_s": BODY_TIMEOUT_S})
    async with RunningService(quick, providers, worker=False) as running:
        yield running


@pytest.mark.parametrize("side", [20_000, 8_000])  # past Pillow's own guard; past only ours
async def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    api_only: RunningService, side: int
) -> None:
    bomb = png_bomb(side)
    assert len(bomb) < 200_000
    with PeakMemory() as memory:
        status, body, _ = await api_only.submit(images=[bomb])
    _assert_error(status, body, 400, "invalid_request_error", "image[0]")
    assert f"limit is {api_only.settings.max_image_pixels} pixels" in body["error"]["message"]
    assert memory.growth < 100 * MB, f"memory grew {memory.growth / MB:.0f} MB"


@pytest.mark.parametrize(("width", "height"), [(640, 480), (64, 96), (32, 24)])
async def test_a_png_whose_header_lies_about_its_size_is_refused(
    api_only: RunningService, width: int, height: int
) -> None:
    liar = with_declared_size(png(64, 48), width, height)
    status, body, _ = await api_only.submit(images=[liar])
    _assert_error(status, body, 400, "invalid_request_error", "image[0]")


async def test_deeply_nested_json_is_refused(api_only: RunningService) -> None:
    depth = 100_000
    nested = b"[" * depth + b"]" * depth
    whole = b'{"model":"local/editor","prompt":"x","images":' + nested + b"}"
    status, body = await _post(api_only, whole, {"Content-Type": "application/json"})
    _assert_error(status, body, 400, "invalid_request_error", None)
    form = aiohttp.FormData({"model": "local/editor", "prompt": "x"})
    form.add_field("metadata", nested.decode())
    form.add_field("image", png(), filename="a.png", content_type="image/png")
    status, body = await _post(api_only, form)
    _assert_error(status, body, 400, "invalid_request_error", "metadata")


async def test_a_one_megabyte_prompt_is_refused_naming_prompt(api_only: RunningService) -> None:
    prompt = b"a" * MB
    body = multipart(
        (b'form-data; name="model"', b"local/editor"),
        (b'form-data; name="prompt"', prompt),
        (b'form-data; name="image"; filename="a.png"', png()),
    )
    status, answer = await _post(api_only, io.BytesIO(body), MULTIPART)
    _assert_error(status, answer, 400, "invalid_request_error", "prompt")
    document = {"model": "local/editor", "prompt": prompt.decode(), "images": [data_url(png())]}
    status, answer = await _post(
        api_only, io.BytesIO(json.dumps(document).encode()), {"Content-Type": "application/json"}
    )
    _assert_error(status, answer, 400, "invalid_request_error", "prompt")


async def test_invalid_utf8_is_refused(api_only: RunningService) -> None:
    body = multipart(
        (b'form-data; name="model"', b"local/editor"),
        (b'form-data; name="prompt"', b"make it \xff\xfe blue"),
        (b'form-data; name="image"; filename="a.png"', png()),
    )
    status, answer = await _post(api_only, body, MULTIPART)
    _assert_error(status, answer, 400, "invalid_request_error", "prompt")
    document = b'{"model": "local/editor", "prompt": "make it \xff blue", "images": []}'
    status, answer = await _post(api_only, document, {"Content-Type": "application/json"})
    _assert_error(status, answer, 400, "invalid_request_error", None)


@pytest.mark.parametrize("disposition", [b"form-data", b'form-data; name=""', None])
async def test_a_multipart_part_without_a_name_is_refused(
    api_only: RunningService, disposition: bytes | None
) -> None:
    body = multipart(
        (disposition, b"value"),
        (b'form-data; name="model"', b"local/editor"),
        (b'form-data; name="image"; filename="a.png"', png()),
    )
    status, answer = await _post(api_only, body, MULTIPART)
    _assert_error(status, answer, 400, "invalid_request_error", None)
    assert "no name" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("content_type", "start"),
    [("application/json", b'{"model":'), ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nCon")],
)
async def test_a_body_shorter_than_its_content_length_then_a_hang_up_is_no_500(
    impatient: RunningService, caplog: pytest.LogCaptureFixture, content_type: str, start: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    writer.write(_head(impatient, 1000, content_type) + start)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(BODY_TIMEOUT_S + 0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    answered = [
        re.search(r'" (\d{3}) ', r.getMessage())
        for r in caplog.records
        if r.name == "aiohttp.access"
    ]
    assert [match[1] for match in answered if match] == ["400"], caplog.text
    async with impatient.client.get(impatient.url("/readyz")) as response:
        assert response.status == 200


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b"])
async def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_closed(
    impatient: RunningService, content_type: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    try:
        started = time.monotonic()
        writer.write(_head(impatient, 1000, content_type) + b"--b\r\nConte")
        await writer.drain()
        status, body = await asyncio.wait_for(_read_response(reader), 10)
        _assert_error(status, body, 408, "request_timeout", None)
        assert await _hung_up(reader)
        assert BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 3
    finally:
        writer.close()


@pytest.mark.parametrize("interval_s", [1.0, BODY_TIMEOUT_S / 4])
async def test_a_slow_loris_upload_is_cut_off(impatient: RunningService, interval_s: float) -> None:
    """One byte every ``interval_s``: even when each byte comes well within the
    timeout, the body as a whole does not."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)

    async def trickle() -> None:
        writer.write(_head(impatient, 10_000, "application/json"))
        for _ in range(10_000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(interval_s)

    sender = asyncio.create_task(trickle())
    try:
        started = time.monotonic()
        status, body = await asyncio.wait_for(_read_response(reader), 10)
        _assert_error(status, body, 408, "request_timeout", None)
        assert time.monotonic() - started < BODY_TIMEOUT_S + 3
        assert await _hung_up(reader)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def test_sixteen_three_megabyte_images_keep_memory_bounded(lone_api: RunningService) -> None:
    images = [uncompressed_png(1000, shade) for shade in range(16)]
    size = sum(map(len, images))
    assert size > 16 * 3_000_000
    form = aiohttp.FormData({"model": "local/editor", "prompt": "make it blue"})
    for index, data in enumerate(images):
        form.add_field("image[]", io.BytesIO(data), filename=f"{index}.png")
    with PeakMemory() as memory:
        status, job = await _post(lone_api, form)
    assert status == 202, job
    assert len(job["request"]["images"]) == 16
    assert memory.growth < 4 * size, (
        f"memory grew {memory.growth / MB:.0f} MB for {size / MB:.0f} MB"
    )


ATTACKERS = 4


async def _accepted_job(service: RunningService) -> str:
    """A job accepted before an attack, left queued (no worker yet) through it."""
    status, job, _ = await service.submit()
    assert status == 202, job
    return str(job["id"])


async def _still_intact(service: RunningService, job_id: str) -> None:
    """After an attack: the job accepted before it is the only one, and it runs."""
    _, page = await service.get("/v1/jobs")
    assert [job["id"] for job in page["data"]] == [job_id]
    await service.start_worker()
    assert (await service.wait(job_id))["status"] == "succeeded"
    async with service.client.get(service.url("/healthz")) as response:
        assert response.status == 200


async def test_clients_sending_ten_thousand_parts_at_once_are_all_refused(
    api_only: RunningService,
) -> None:
    """Several clients at once, half with an ``Idempotency-Key``, each send bodies of
    10,000 tiny parts: every one gets the part cap's 400, and nothing is harmed."""
    job_id = await _accepted_job(api_only)
    body = many_parts(10_000)

    async def attack(client: int) -> list[tuple[int, dict[str, Any]]]:
        answers = []
        for round_ in range(2):
            headers = {**api_only.auth(), "Content-Type": MANY_PARTS_TYPE}
            if client % 2:
                headers["Idempotency-Key"] = f"parts-{client}-{round_}"
            async with api_only.client.post(
                api_only.url("/v1/jobs"), data=body, headers=headers
            ) as response:
                answers.append((response.status, await response.json()))
        return answers

    for answers in await asyncio.gather(*(attack(client) for client in range(ATTACKERS))):
        for status, answer in answers:
            _assert_error(status, answer, 400, "invalid_request_error", None)
            assert "at most 64 parts" in answer["error"]["message"]
    await _still_intact(api_only, job_id)


async def _replays(service: RunningService, path: str) -> list[list[ServerSentEvent]]:
    """Open the event stream from the start again and again, reading 1, 2, 4 ... events
    each time, until it was read whole (to its final event) twice; every read."""
    reads: list[list[ServerSentEvent]] = []
    take, whole = 1, 0
    while whole < 2:
        async with service.client.get(
            service.url(path), headers=service.auth(), timeout=aiohttp.ClientTimeout(total=60)
        ) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "text/event-stream"
            decoder, events = SseDecoder(), []
            async for chunk in response.content.iter_any():
                events += decoder.feed(chunk)
                if len(events) >= take:
                    break
            else:
                events += decoder.end()
        reads.append(events)
        whole += bool(events) and events[-1].event != "batch.progress"
        take *= 2
    return reads


async def test_three_readers_replaying_a_batch_of_maximal_metadata_get_bounded_events(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    """A batch whose metadata is at every cap, followed by three readers that replay
    its events from the start over and over while it runs: progress events stay a
    small summary, only the final one carries the batch and its metadata."""
    fake_upstream.latency_s = 0.05
    metadata = maximal_metadata()
    defaults = {
        "model": "fake/gpt-image-1",
        "prompt": "p",
        "images": [{"image_url": data_url(png())}],
    }
    status, batch = await service.post(
        "/v1/batches", body={"defaults": defaults, "n": 40, "metadata": metadata}
    )
    assert status == 202, batch
    assert batch["metadata"] == metadata
    path = f"/v1/batches/{batch['id']}/events"
    readers = await asyncio.gather(*(_replays(service, path) for _ in range(3)))
    for reads in readers:
        assert len(reads) >= 3
        for events in reads:
            assert events and events[0].event == "batch.progress"
            for event in events:
                if event.event == "batch.progress":
                    assert set(event.json()) == {"status", "counts", "at"}
                    assert len(event.data) < 300
            if events[-1].event != "batch.progress":
                assert events[-1].event == "batch.completed"
                assert events[-1].json()["batch"]["metadata"] == metadata
        whole = [events for events in reads if events[-1].event == "batch.completed"]
        assert [event.id for event in whole[0]] == [event.id for event in whole[-1]]
    status, done = await service.get(f"/v1/batches/{batch['id']}")
    assert (status, done["counts"]["succeeded"], done["metadata"]) == (200, 40, metadata)


async def test_four_clients_posting_sixteen_lossless_webp_bombs_are_refused_undecoded(
    api_only: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four clients at once, each posting 16 lossless 7000x7000 WebPs (about 50 bytes
    each, 49 million pixels once decoded) in one request, twice: each request is
    refused from the images' headers (a WebP pixel counts four, so each is over the
    per-image cap, and all of them over the request's budget) before a single image
    is decoded."""
    bomb = lossless_webp(7000)
    job_id = await _accepted_job(api_only)
    decodes = record_decodes(monkeypatch)

    async def attack() -> list[tuple[int, dict[str, Any]]]:
        answers = []
        for _ in range(2):
            form = aiohttp.FormData({"model": "local/editor", "prompt": "p"})
            for index in range(16):
                form.add_field("image[]", bomb, filename=f"{index}.webp", content_type="image/webp")
            answers.append(await _post(api_only, form))
        return answers

    for answers in await asyncio.gather(*(attack() for _ in range(ATTACKERS))):
        for status, answer in answers:
            _assert_error(status, answer, 400, "invalid_request_error", "image[0]")
            assert "the limit is 12500000 pixels for a WebP" in answer["error"]["message"]
    assert decodes == []
    monkeypatch.undo()
    await _still_intact(api_only, job_id)
