"""The API's server: what aiohttp answers on its own comes in the OpenAI error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong

from app.cli.embedded import free_port
from app.errors import EditqError, InvalidRequest, UnsupportedMediaType
from app.http.middleware.errors import PARSE_ERROR_MESSAGE_CHARS, parse_error
from app.http.server import ApiRunner


async def fails(request: web.Request) -> web.Response:
    raise RuntimeError("a handler bug, with no middleware to answer it")


async def answers(request: web.Request) -> web.Response:
    return web.Response(text="fine")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A bare application (no middleware) served by ``ApiRunner``."""
    app = web.Application()
    app.router.add_get("/fails", fails)
    app.router.add_get("/answers", answers)
    runner = ApiRunner(app)
    await runner.setup()
    chosen = free_port()
    await web.TCPSite(runner, "127.0.0.1", chosen).start()
    yield chosen
    await runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[str, str, bytes]:
    """The status line, the Content-Type and the body of the answer to ``request``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    content_type = next(
        line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type")
    )
    return status_line, content_type, body


async def test_a_request_the_parser_refuses_gets_the_error_body(port: int) -> None:
    status, content_type, body = await exchange(port, b"GET /answers HTTP/1.1\r\nX A: b\r\n\r\n")
    assert status.split()[1] == "400"
    assert content_type.startswith("application/json")
    assert json.loads(body)["error"]["message"] == (
        "the request is not valid HTTP/1.1: Invalid header token"
    )


async def test_an_exception_that_escapes_the_app_is_a_500_with_the_error_body(port: int) -> None:
    status, content_type, body = await exchange(port, b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.split()[1] == "500"
    assert content_type.startswith("application/json")
    assert json.loads(body) == EditqError("internal error").body()


async def test_other_answers_are_untouched(port: int) -> None:
    request = b"GET /answers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, content_type, body = await exchange(port, request)
    assert (status.split()[1], content_type, body) == ("200", "text/plain; charset=utf-8", b"fine")


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("Can not decode content-encoding: brotli (br). Please install `Brotli`", "br"),
        (
            "Can not decode content-encoding: zstandard (zstd). Please install `backports.zstd`",
            "zstd",
        ),
        ("something else", "of this request"),
    ],
)
def test_an_encoding_the_parser_cannot_decode_is_a_415(message: str, named: str) -> None:
    error = parse_error(ContentEncodingError(message))
    assert isinstance(error, UnsupportedMediaType)
    assert error.message.startswith(f"Content-Encoding {named} is not supported; send ")


def test_the_parsers_message_is_cut_to_its_first_line_and_its_length() -> None:
    error = parse_error(BadHttpMessage("Invalid header value char:\n\n  b'X: \\x01'\n     ^"))
    assert isinstance(error, InvalidRequest)
    assert error.message == "the request is not valid HTTP/1.1: Invalid header value char"
    long = parse_error(BadHttpMessage("x" * 10_000)).message
    assert long == "the request is not valid HTTP/1.1: " + "x" * PARSE_ERROR_MESSAGE_CHARS


def test_an_over_size_line_is_not_quoted_back() -> None:
    error = parse_error(LineTooLong(b"a" * 100, 8190))
    assert error.message == "a line of the request's head is longer than 8190 bytes"
    assert "aaa" not in error.message


def test_anything_but_a_parser_error_is_a_500() -> None:
    assert parse_error(None).status == parse_error(RuntimeError("x")).status == 500
