"""The SSRF guard every outbound URL goes through (remote input images, webhooks), and
the one bounded reader of untrusted streams.

Three layers, all needed:

* ``check_url``: syntax. Only http(s), a host, no credentials, a real port; a
  literal IP must be globally routable (connectors skip the resolver for them) and
  non-canonical numeric hosts (``2130706433``, ``0x7f.1``, ``127.1``) are refused.
* ``GuardedResolver``: names. A host is resolved once and refused if *any* of its
  addresses is not global; aiohttp then connects to exactly the vetted addresses,
  so a second, rebinding answer is never asked for.
* ``fetch_bounded``: the request. No redirects, a deadline, a byte cap; every
  failure becomes a 400/413 naming the parameter, never a 5xx.

``read_bounded`` reads every untrusted stream (a request body, one of its multipart
parts, a remote image, an upstream's answer): it stops at the first chunk past the
caller's byte limit, so no sender can make a reader hold much more than that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import BodyPartReader, StreamReader
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from app.errors import InvalidRequest, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
MAX_URL_CHARS = 8192
CHUNK = 256 * 1024
YIELD_BYTES = 4 * 1024 * 1024
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.I)
HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$",
    re.I,
)


class ForbiddenAddress(OSError):
    """A host resolved to an address that is not globally routable.

    An ``OSError``, so aiohttp's connector reports it as a ``ClientConnectorError``
    whose ``os_error`` is this exception.
    """


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to, or None when it is globally routable.

    IPv6 addresses that embed an IPv4 destination (IPv4-mapped, NAT64 ``64:ff9b::/96``,
    6to4 ``2002::/16``) are judged by that destination; IPv4-compatible ``::a.b.c.d``
    (deprecated) is always refused.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        category = _category(ip)
        return f"{ip} is {category}" if category else None
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        category = _category(embedded)
        return f"{ip} embeds {embedded}, {category}" if category else None
    if ip in IPV4_COMPATIBLE and int(ip) > 1:
        return f"{ip} is a deprecated IPv4-compatible address"
    category = _category(ip)
    return f"{ip} is {category}" if category else None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _category(ip: IPAddress) -> str | None:
    checks = (
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (ip in SHARED_ADDRESS_SPACE, "a shared (carrier-grade NAT) address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def check_url(url: str, *, param: str, allow_private: bool) -> URL:
    """``url`` parsed, once it is a plain http(s) URL that may be fetched.

    Raises InvalidRequest naming ``param`` for any other scheme, a missing host,
    credentials, a bad port, a non-canonical numeric host, or (unless
    ``allow_private``) a literal IP that is not globally routable. Host names are
    vetted when they are resolved (``GuardedResolver``).
    """
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"{param} is longer than {MAX_URL_CHARS} characters", param=param)
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{param} is not a valid URL: {exc}", param=param) from None
    if parsed.scheme not in SCHEMES:
        raise InvalidRequest(
            f"{param} must be an http or https URL (got {parsed.scheme or 'no'} scheme)",
            param=param,
        )
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise InvalidRequest(f"{param} must not carry credentials (user:pass@)", param=param)
    port = parsed.explicit_port
    if port is not None and not 1 <= port <= 65535:
        raise InvalidRequest(f"{param} has an invalid port {port}", param=param)
    reason = _host_problem(parsed.raw_host, allow_private=allow_private)
    if reason is not None:
        raise InvalidRequest(f"{param} is refused: {reason}", param=param)
    return parsed


def _host_problem(host: str | None, *, allow_private: bool) -> str | None:
    if not host:
        return "the URL has no host"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
            return f"{host} is not a canonical IP address"
        if not HOSTNAME.match(host):
            return f"{host!r} is not a valid host name"
        return None
    return None if allow_private else forbidden_reason(ip)


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` once and refuses hosts with any non-global address.

    With ``allow_private`` it only resolves. The addresses it returns are the ones
    aiohttp connects to, so what was checked is what is used.
    """

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The vetted addresses of ``host``; ``ForbiddenAddress`` if any is not global."""
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise ForbiddenAddress(f"{host} resolved to no addresses")
        if self.allow_private:
            return results
        for result in results:
            reason = _address_problem(result["host"])
            if reason is not None:
                raise ForbiddenAddress(f"{host} resolves to a forbidden address: {reason}")
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def _address_problem(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    return forbidden_reason(ip)


def guarded_session(
    *,
    allow_private: bool,
    timeout_s: float,
    resolver: AbstractResolver | None = None,
    limit: int = 100,
) -> aiohttp.ClientSession:
    """A client session whose every connection goes through ``GuardedResolver``.

    Call inside a running event loop. Callers still run ``check_url`` first (literal
    IPs never reach a resolver) and pass ``allow_redirects=False``. Environment
    proxies are ignored and cookies are not kept, so one caller cannot affect another.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_private=allow_private, inner=resolver),
        use_dns_cache=False,
        limit=limit,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": "editq"},
    )


async def fetch_bounded(
    session: aiohttp.ClientSession, url: URL, *, max_bytes: int, timeout_s: float, param: str
) -> bytes:
    """The body of a GET of ``url``, at most ``max_bytes`` long, within ``timeout_s``.

    Raises PayloadTooLarge when the body is over ``max_bytes``, and InvalidRequest
    naming ``param`` for a redirect, a non-2xx status, a timeout, a refused address
    or any connection failure.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _get(session, url, max_bytes=max_bytes, param=param)
    except TimeoutError:
        raise InvalidRequest(
            f"{param} could not be fetched: timed out after {timeout_s:g} s", param=param
        ) from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error if isinstance(exc.os_error, ForbiddenAddress) else exc
        raise InvalidRequest(f"{param} could not be fetched: {reason}", param=param) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        raise InvalidRequest(f"{param} could not be fetched: {detail}", param=param) from None


async def _get(session: aiohttp.ClientSession, url: URL, *, max_bytes: int, param: str) -> bytes:
    async with session.get(url, allow_redirects=False) as response:
        if 300 <= response.status < 400:
            raise InvalidRequest(
                f"{param} answered {response.status} (a redirect); redirects are not followed",
                param=param,
            )
        if not 200 <= response.status < 300:
            raise InvalidRequest(f"{param} answered HTTP {response.status}", param=param)
        message = f"{param} is larger than {max_bytes} bytes"
        if response.content_length is not None and response.content_length > max_bytes:
            raise PayloadTooLarge(message, param=param)
        return await read_bounded(
            response.content, max_bytes, too_large=lambda _: PayloadTooLarge(message, param=param)
        )


async def read_bounded(
    source: StreamReader | BodyPartReader,
    limit: int,
    *,
    too_large: Callable[[int], Exception] | None,
    chunk_bytes: int = CHUNK,
) -> bytes:
    """The rest of ``source``, read ``chunk_bytes`` at a time, if it is at most ``limit`` bytes.

    ``source`` is a body (a request's ``content`` or a client response's) or one part
    of a multipart body, as sent (no transfer decoding). Once more than ``limit`` bytes
    have arrived it raises ``too_large(count)``, the caller's error, with ``count`` the
    bytes read so far (more than ``limit``, at most ``limit + chunk_bytes``); with
    ``too_large=None`` it returns the first ``limit`` bytes instead and leaves the rest
    unread. Either way it never holds more than ``limit + chunk_bytes`` bytes. The
    stream's own errors (a connection lost mid-body, bad framing) propagate. Every
    ``YIELD_BYTES`` it gives the event loop a turn: a stream already in memory never
    makes a read wait, and other requests must not wait for all of it.
    """
    read: Callable[[int], Awaitable[bytes]] = (
        source.read_chunk if isinstance(source, BodyPartReader) else source.read
    )
    chunks: list[bytes] = []
    size = 0
    while chunk := await read(chunk_bytes):
        size += len(chunk)
        if size > limit:
            if too_large is not None:
                raise too_large(size)
            chunks.append(chunk[: len(chunk) - (size - limit)])
            break
        chunks.append(chunk)
        if size // YIELD_BYTES != (size - len(chunk)) // YIELD_BYTES:
            await asyncio.sleep(0)
    return b"".join(chunks)
