"""The pure parts of idempotent submission: key checks, fingerprints, what is kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from app.errors import InvalidRequest
from app.http.middleware.idempotency import (
    KEY_HEADER,
    SYNC_JOB,
    body_stream,
    kept_response,
    parse_key,
    request_fingerprint,
    with_body,
)
from app.net import YIELD_BYTES
from app.settings import Settings

Part = tuple[str, str | None, bytes]


def multipart(boundary: str, parts: list[Part]) -> bytes:
    """A multipart/form-data body of (name, filename, bytes) parts."""
    lines = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        lines += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        lines += data + b"\r\n"
    return lines + f"--{boundary}--\r\n".encode()


def request(content_type: str, path: str = "/v1/jobs") -> web.Request:
    return make_mocked_request("POST", path, headers={"Content-Type": content_type})


async def fingerprint(content_type: str, body: bytes, path: str = "/v1/jobs") -> str:
    """The fingerprint of a request with ``body``, as the middleware takes it."""
    return await request_fingerprint(
        await with_body(request(content_type, path), body), body, Settings()
    )


async def form_print(boundary: str, parts: list[Part], path: str = "/v1/jobs") -> str:
    content_type = f"multipart/form-data; boundary={boundary}"
    return await fingerprint(content_type, multipart(boundary, parts), path)


@pytest.mark.parametrize("key", ["a", "k" * 255, "order 42/retry:1", "~!@#$%^&*()"])
def test_printable_ascii_keys_up_to_255_pass(key: str) -> None:
    assert parse_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there", "caf\u00e9", "nul\x00"])
def test_other_keys_are_refused_naming_the_header(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_key(key)
    assert caught.value.param == KEY_HEADER


async def test_multipart_prints_ignore_the_boundary_but_not_the_parts() -> None:
    parts: list[Part] = [("prompt", None, b"sepia"), ("image[]", "a.png", b"\x89PNG...")]
    first = await form_print("boundary-one", parts)
    assert await form_print("another-boundary-2", parts) == first
    assert await form_print("b", [parts[0], ("image[]", "a.png", b"\x89PNG..!")]) != first
    assert await form_print("b", [parts[0], ("image[]", "b.png", b"\x89PNG...")]) != first
    assert await form_print("b", [parts[1], parts[0]]) != first
    assert await form_print("b", parts, path="/v1/images/edits") != first


async def test_json_prints_are_of_the_bytes_and_the_content_type() -> None:
    body = json.dumps({"prompt": "sepia"}).encode()
    first = await fingerprint("application/json", body)
    assert await fingerprint("application/json", body) == first
    assert await fingerprint("application/json", body + b" ") != first
    assert await fingerprint("text/plain", body) != first


async def test_a_malformed_multipart_body_is_printed_as_bytes() -> None:
    content_type = "multipart/form-data; boundary=x"
    first = await fingerprint(content_type, b"not multipart at all")
    assert await fingerprint(content_type, b"not multipart at all") == first
    assert await fingerprint(content_type, b"not multipart at al!") != first


async def turns_during(work: Awaitable[object]) -> int:
    """How many turns of the event loop another task got while ``work`` ran."""
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)  # the counter is running
    before = turns
    await work
    during = turns - before
    counter.cancel()
    return during


async def test_printing_a_big_body_lets_other_tasks_run() -> None:
    """A body in memory never makes a read wait: reading its parts and hashing them
    give the loop a turn every few MB instead of holding it throughout."""
    size = 12 * 1024 * 1024
    read_and_hashed = 2 * size // YIELD_BYTES
    parts: list[Part] = [("image[]", "a.png", bytes(size))]
    assert await turns_during(form_print("b", parts)) >= read_and_hashed
    assert await turns_during(fingerprint("application/json", bytes(size))) >= size // YIELD_BYTES


async def test_a_body_stream_yields_the_body_then_ends() -> None:
    stream = await body_stream(b"x" * 1_000_000)
    assert await stream.read(10) == b"x" * 10
    assert len(await stream.read()) == 1_000_000 - 10
    assert stream.at_eof()


def test_a_2xx_is_kept_with_its_location_and_an_error_is_not() -> None:
    accepted = web.json_response({"id": "job_1"}, status=202, headers={"Location": "/v1/jobs/1"})
    kept = kept_response(request("application/json"), accepted)
    assert kept is not None
    assert (kept.status, json.loads(kept.body or "")) == (202, {"id": "job_1"})
    assert kept.headers["Location"] == "/v1/jobs/1"
    assert kept.headers["Content-Type"].startswith("application/json")
    refused = web.json_response({"error": {}}, status=400)
    assert kept_response(request("application/json"), refused) is None
    assert kept_response(request("application/json"), None) is None


def test_a_sync_edit_keeps_its_job_whatever_the_answer() -> None:
    sync = request("application/json", path="/v1/images/edits")
    assert kept_response(sync, web.json_response({}, status=503)) is None  # no job yet
    sync[SYNC_JOB] = "job_9"
    for response in (web.json_response({}, status=504), None):
        kept = kept_response(sync, response)
        assert kept is not None
        assert (kept.job_id, kept.body) == ("job_9", None)
