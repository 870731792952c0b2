"""The lifecycle every fake upstream shares: one owner for starting and stopping a real
aiohttp server on 127.0.0.1, so each fake (``upstream``, ``bfl``, ``fal``, ``replicate``,
``gemini``) holds only what its provider's API does.

A subclass adds its routes in ``_add_routes`` and sets, as class attributes, its
``label`` (for error messages), ``max_body_bytes``, ``shutdown_timeout_s``,
``extra_sites`` (more free ports served by the same app, as fal's CDN origin) and
``fetches_urls`` (whether it needs a client session, ``_http``, to fetch input URLs the
way the real API does). ``_on_stop`` lets it end its own background work.

While running, ``_stopping`` is clear; ``stop`` sets it first, so handlers that wait
(``_pause``, ``_wait``) return at once and answer before the runner closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import ClassVar, Self

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

LOOPBACK = "127.0.0.1"


class FakeServer:
    """Start, stop, ``async with``, ports and URLs, and the waits a fake's handlers and
    tests use. ``start`` twice without ``stop`` is a RuntimeError; ``stop`` is idempotent.
    """

    label: ClassVar[str] = "the fake"
    max_body_bytes: ClassVar[int] = 64 * 1024 * 1024
    shutdown_timeout_s: ClassVar[float] = 60.0
    extra_sites: ClassVar[int] = 0
    fetches_urls: ClassVar[bool] = False
    middlewares: ClassVar[Sequence[Middleware]] = ()

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._host = ""
        self._ports: tuple[int, ...] = ()

    def _add_routes(self, app: web.Application) -> None:
        """Add the fake's routes to ``app`` (each subclass does)."""
        raise NotImplementedError

    async def _on_stop(self) -> None:
        """End the fake's own background work; called once ``_stopping`` is set."""

    async def start(self, host: str = LOOPBACK, port: int = 0) -> Self:
        """Listen on ``host:port`` (0 picks a free port), plus ``extra_sites`` free ports on
        ``host``; returns self."""
        if self._runner is not None:
            raise RuntimeError(f"{self.label} is already running")
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=self.middlewares)
        self._add_routes(app)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.shutdown_timeout_s,
        )
        await runner.setup()
        try:
            for site_port in (port, *[0] * self.extra_sites):
                await web.TCPSite(runner, host, site_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._stopping.clear()
        if self.fetches_urls:
            self._http = aiohttp.ClientSession()
        self._runner = runner
        self._host = host
        self._ports = tuple(address[1] for address in runner.addresses)
        return self

    async def stop(self) -> None:
        """Stop listening; waiting handlers answer first (as each fake says). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await self._on_stop()
        await runner.cleanup()
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port ``start`` was asked for, or the free one it picked."""
        if not self._ports:
            raise RuntimeError(f"{self.label} is not started")
        return self._ports[0]

    def _origin_of(self, port: int) -> str:
        host = {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def origin(self) -> str:
        """Scheme, host and port, e.g. ``http://127.0.0.1:41234``."""
        return self._origin_of(self.port)

    @property
    def base_url(self) -> str:
        """The ``base_url`` of an upstream pointed at the fake (its origin unless the
        API's paths share a prefix)."""
        return self.origin

    async def _pause(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (forever if None); False when the fake stops meanwhile."""
        if seconds is not None and seconds <= 0:
            return not self._stopping.is_set()
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def _wait(self, event: asyncio.Event, seconds: float | None) -> None:
        """Until ``event`` is set or the fake stops, at most ``seconds`` (None: no limit)."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiting = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({stopping, waiting}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            waiting.cancel()


class CountsInFlight:
    """``in_flight`` (now) and ``max_in_flight`` (the most at once, since the start or a
    reset) for a fake that counts as work starts and ends: a request being answered, or
    an accepted task not settled yet. Fakes that derive the count from their tasks
    define these as properties instead."""

    in_flight: int = 0
    max_in_flight: int = 0

    def _took_off(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _landed(self) -> None:
        self.in_flight -= 1

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Counted in flight while the block runs."""
        self._took_off()
        try:
            yield
        finally:
            self._landed()


async def wait_until(done: Callable[[], bool], timeout_s: float, every_s: float = 0.005) -> None:
    """Return once ``done()`` is true, checking every ``every_s``; TimeoutError after
    ``timeout_s`` (what each fake's ``wait_for_...`` does)."""
    async with asyncio.timeout(timeout_s):
        while not done():
            await asyncio.sleep(every_s)


def serve_until_interrupted(
    fake: FakeServer, banner: str, *, port: int, host: str = LOOPBACK
) -> None:
    """Run ``fake`` on ``host:port`` until Ctrl-C (each fake's ``python -m`` entry point).

    ``banner`` is printed once it listens, formatted with ``fake`` (e.g.
    ``"fake BFL API on {fake.base_url}"``), so it can name the port picked."""

    async def serve() -> None:
        await fake.start(host, port)
        print(f"{banner.format(fake=fake)} (Ctrl-C stops)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
