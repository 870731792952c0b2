"""A webhook receiver for tests: a real aiohttp server that records every POST and
answers from a script (status, headers), 200 when the script is empty."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from app.cli.embedded import free_port


@dataclass(frozen=True)
class Received:
    """One POST as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class WebhookReceiver:
    """``url(path)`` to point webhooks at; ``answer_next(status, ...)`` scripts answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._script: deque[tuple[int, dict[str, str], float]] = deque()
        self._runner: web.AppRunner | None = None
        self.port = free_port()
        self._arrived = asyncio.Condition()

    def url(self, path: str = "/hook") -> str:
        """The receiver's URL for ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def answer_next(
        self, status: int, headers: dict[str, str] | None = None, *, delay_s: float = 0
    ) -> None:
        """Answer the next POST with ``status`` (and ``headers``) after ``delay_s``."""
        self._script.append((status, headers or {}, delay_s))

    async def wait_for(self, count: int, timeout_s: float = 15) -> list[Received]:
        """Return once ``count`` POSTs arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, dict(request.headers), await request.read()))
        async with self._arrived:
            self._arrived.notify_all()
        status, headers, delay_s = self._script.popleft() if self._script else (200, {}, 0.0)
        await asyncio.sleep(delay_s)
        if 300 <= status < 400:
            headers = {"Location": self.url("/elsewhere"), **headers}
        return web.Response(status=status, headers=headers, text="ok")

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
