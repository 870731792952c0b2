"""The SSRF guard: address classes, URL syntax, the resolver and the bounded fetch; and
the bounded reader of untrusted streams."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.base_protocol import BaseProtocol

from app.errors import InvalidRequest, PayloadTooLarge
from app.net import (
    CHUNK,
    ForbiddenAddress,
    GuardedResolver,
    check_url,
    fetch_bounded,
    forbidden_reason,
    guarded_session,
    read_bounded,
)

PARAM = "images[0].image_url"
PUBLIC_V4 = "93.184.216.34"


class FixedResolver(AbstractResolver):
    """Answers every lookup with the same addresses, like a rebinding DNS server would."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00:ec2::254", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1, a loopback"),
        ("::ffff:10.1.2.3", "embeds 10.1.2.3, a private"),
        ("64:ff9b::7f00:1", "embeds 127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "embeds 169.254.169.254, a link-local"),
        ("2002:7f00:1::", "embeds 127.0.0.1"),
        ("2002:c0a8:101::1", "embeds 192.168.1.1"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::93.184.216.34", "IPv4-compatible"),
    ],
)
def test_forbidden_addresses(address: str, words: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert words in reason


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC_V4,
        "8.8.8.8",
        "2001:4860:4860::8888",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
    ],
)
def test_global_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/a.png",
        "http://172.16.0.1/",
        "https://192.168.1.1:8443/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:8080/",
        "http://[::1]/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[fe80::1]/",
        "http://[fe80::1%25eth0]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://1.2.3.04/",
    ],
)
def test_check_url_refuses_internal_and_numeric_hosts(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url(url, param=PARAM, allow_private=False)
    assert caught.value.param == PARAM
    assert PARAM in caught.value.message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///etc/passwd", "http or https"),
        ("gopher://x", "http or https"),
        ("ftp://x", "http or https"),
        ("data:image/png;base64,AAAA", "http or https"),
        ("//example.com/a.png", "http or https"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://user@example.com/", "credentials"),
        ("http:///a.png", "no host"),
        ("http://example.com:0/", "port"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://exa mple.com/", "host name"),
        ("http://127.0.0.%31/", "host name"),
        ("http://example.com/" + "a" * 9000, "longer than"),
    ],
)
def test_check_url_refuses_bad_syntax(url: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url(url, param=PARAM, allow_private=True)
    assert caught.value.param == PARAM
    assert words in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/",
        "https://example.com/x.png",
        "https://EXAMPLE.com:8443/a/b.png?sig=1#frag",
        "http://[2001:4860:4860::8888]/",
        "https://bücher.example/a.png",
        "http://localhost/",  # names are vetted when resolved
    ],
)
def test_check_url_allows_public_urls(url: str) -> None:
    parsed = check_url(url, param=PARAM, allow_private=False)
    assert parsed.scheme in ("http", "https")


def test_check_url_allow_private_still_refuses_numeric_tricks() -> None:
    assert check_url("http://127.0.0.1:9/", param=PARAM, allow_private=True).port == 9
    assert check_url("http://[::1]/", param=PARAM, allow_private=True).host == "::1"
    with pytest.raises(InvalidRequest):
        check_url("http://2130706433/", param=PARAM, allow_private=True)


async def test_resolver_refuses_localhost_unless_private_allowed() -> None:
    with pytest.raises(ForbiddenAddress, match="loopback"):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    results = await GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert results
    assert all(ipaddress.ip_address(result["host"]).is_loopback for result in results)


async def test_resolver_refuses_when_any_address_is_internal() -> None:
    inner = FixedResolver(PUBLIC_V4, "127.0.0.1")
    resolver = GuardedResolver(allow_private=False, inner=inner)
    with pytest.raises(ForbiddenAddress, match=r"127\.0\.0\.1"):
        await resolver.resolve("rebind.example", 443)
    assert inner.lookups == 1


async def test_resolver_returns_exactly_the_vetted_addresses() -> None:
    inner = FixedResolver(PUBLIC_V4, "2001:4860:4860::8888")
    results = await GuardedResolver(allow_private=False, inner=inner).resolve("ok.example", 443)
    assert [result["host"] for result in results] == [PUBLIC_V4, "2001:4860:4860::8888"]
    assert inner.lookups == 1


async def test_resolver_refuses_mapped_and_empty_answers() -> None:
    mapped = GuardedResolver(allow_private=False, inner=FixedResolver("::ffff:10.0.0.5"))
    with pytest.raises(ForbiddenAddress, match="private"):
        await mapped.resolve("mapped.example")
    with pytest.raises(ForbiddenAddress, match="no addresses"):
        await GuardedResolver(allow_private=False, inner=FixedResolver()).resolve("none.example")


async def _small(request: web.Request) -> web.Response:
    return web.Response(body=b"hello")


async def _large(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(10):
        await response.write(bytes(1000))
    return response


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        while True:
            await response.write(bytes(16 * 1024))
    except ConnectionError:  # the reader hung up, as it should
        return response


@pytest.fixture
async def local_port() -> AsyncIterator[int]:
    """A tiny HTTP server on 127.0.0.1; yields its port."""
    app = web.Application()
    app.router.add_get("/small", _small)
    app.router.add_get("/large", _large)
    app.router.add_get("/endless", _endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _fetch(
    url: str, *, allow_private: bool, resolver: AbstractResolver | None = None
) -> bytes:
    target = check_url(url, param=PARAM, allow_private=allow_private)
    async with guarded_session(allow_private=allow_private, timeout_s=5, resolver=resolver) as s:
        return await fetch_bounded(s, target, max_bytes=5000, timeout_s=5, param=PARAM)


async def test_session_refuses_a_name_for_loopback(local_port: int) -> None:
    url = f"http://localhost:{local_port}/small"
    with pytest.raises(InvalidRequest, match="loopback") as caught:
        await _fetch(url, allow_private=False)
    assert caught.value.param == PARAM
    assert await _fetch(url, allow_private=True) == b"hello"


async def test_session_refuses_a_rebinding_name(local_port: int) -> None:
    url = f"http://rebind.example:{local_port}/small"
    rebinding = FixedResolver(PUBLIC_V4, "127.0.0.1")
    with pytest.raises(InvalidRequest, match="forbidden address"):
        await _fetch(url, allow_private=False, resolver=rebinding)
    internal_only = FixedResolver("127.0.0.1")
    assert await _fetch(url, allow_private=True, resolver=internal_only) == b"hello"


async def test_fetch_counts_a_body_without_length(local_port: int) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await _fetch(f"http://127.0.0.1:{local_port}/large", allow_private=True)
    assert caught.value.param == PARAM


async def test_fetch_takes_a_body_of_exactly_the_limit(local_port: int) -> None:
    url = check_url(f"http://127.0.0.1:{local_port}/large", param=PARAM, allow_private=True)
    async with guarded_session(allow_private=True, timeout_s=5) as session:
        body = await fetch_bounded(session, url, max_bytes=10_000, timeout_s=5, param=PARAM)
        assert body == bytes(10_000)
        with pytest.raises(PayloadTooLarge, match="larger than 9999 bytes"):
            await fetch_bounded(session, url, max_bytes=9_999, timeout_s=5, param=PARAM)


LIMIT = 10_000


def finished_stream(data: bytes) -> StreamReader:
    """A body stream that has received all of ``data``."""
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), limit=2**16, loop=loop)
    stream.feed_data(data)
    stream.feed_eof()
    return stream


def refusing(counts: list[int]) -> Callable[[int], PayloadTooLarge]:
    """A ``too_large`` that notes the byte counts it was called with."""

    def too_large(count: int) -> PayloadTooLarge:
        counts.append(count)
        return PayloadTooLarge(f"body is larger than {LIMIT} bytes", param="body")

    return too_large


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 1 << 20])
async def test_read_bounded_takes_exactly_the_limit(chunk_bytes: int) -> None:
    data = random.Random(chunk_bytes).randbytes(LIMIT)
    counts: list[int] = []
    too_large = refusing(counts)
    read = await read_bounded(
        finished_stream(data), LIMIT, too_large=too_large, chunk_bytes=chunk_bytes
    )
    assert read == data
    assert counts == []
    with pytest.raises(PayloadTooLarge) as caught:
        await read_bounded(
            finished_stream(data + b"!"), LIMIT, too_large=too_large, chunk_bytes=chunk_bytes
        )
    assert caught.value.param == "body"
    assert counts == [LIMIT + 1]


async def test_read_bounded_without_an_error_keeps_the_first_limit_bytes() -> None:
    data = random.Random(1).randbytes(3 * LIMIT)
    assert (
        await read_bounded(finished_stream(data), LIMIT, too_large=None, chunk_bytes=4096)
        == (data[:LIMIT])
    )
    assert await read_bounded(finished_stream(data[:10]), LIMIT, too_large=None) == data[:10]
    assert await read_bounded(finished_stream(b""), LIMIT, too_large=None) == b""


async def test_read_bounded_reads_one_multipart_part() -> None:
    image, prompt = random.Random(2).randbytes(LIMIT), b"a prompt"
    body = (
        b"--frontier\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + image
        + b'\r\n--frontier\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
        + prompt
        + b"\r\n--frontier--\r\n"
    )
    reader = MultipartReader(
        {"Content-Type": "multipart/form-data; boundary=frontier"}, finished_stream(body)
    )
    counts: list[int] = []
    part = await reader.next()
    assert isinstance(part, BodyPartReader)
    assert await read_bounded(part, LIMIT, too_large=refusing(counts), chunk_bytes=4096) == image
    part = await reader.next()
    assert isinstance(part, BodyPartReader)
    with pytest.raises(PayloadTooLarge):
        await read_bounded(part, len(prompt) - 1, too_large=refusing(counts))
    assert counts == [len(prompt)]


async def test_read_bounded_stops_an_endless_body_one_chunk_past_the_limit(
    local_port: int,
) -> None:
    counts: list[int] = []
    limit = 1_000_000
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{local_port}/endless") as response,
    ):
        with pytest.raises(PayloadTooLarge):
            await read_bounded(response.content, limit, too_large=refusing(counts))
    assert len(counts) == 1
    assert limit < counts[0] <= limit + CHUNK
