"""The HTTP server around the API application: aiohttp's, except that what aiohttp
refuses on its own also gets the OpenAI error body.

aiohttp (3.x) answers a request its HTTP parser cannot read (a bad header, an
over-size line, a body encoding it cannot decode here) with a ``text/plain`` 400
written by its connection handler, before any middleware runs. Its one hook for that
answer is ``RequestHandler.handle_error``; ``ApiRunner`` serves the app through a
handler that overrides it, so every server of the API (``editq api``, ``editq dev``,
the tests) is built here. Requests that reach the application are answered by
``app.http.middleware.errors`` as before.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

from aiohttp import web
from aiohttp.web_request import BaseRequest

from app.http.middleware.errors import error_response, parse_error

# ``web.run_app``'s keep-alive, which ``editq api`` used before (aiohttp's own is an hour).
KEEPALIVE_S = 75.0


class _JsonErrorsRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors in the OpenAI shape."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Log as aiohttp does (and give up as it does once a response was sent), then
        answer ``parse_error``'s error; the connection is closed after it."""
        super().handle_error(request, status, exc, message)
        response = error_response(parse_error(exc), str(uuid.uuid4()))
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    """aiohttp's server, its connections handled by ``_JsonErrorsRequestHandler``."""

    def __call__(self) -> web.RequestHandler:
        return _JsonErrorsRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers aiohttp's own errors with the error body."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up
        # The same server with another connection handler: aiohttp builds its Server
        # from the app's private request handler and factory, so it is re-classed
        # rather than built again here.
        server.__class__ = _JsonErrorsServer
        return server


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` on ``host``:``port`` until SIGINT or SIGTERM, then shut it down
    gracefully (requests in flight get aiohttp's shutdown timeout)."""
    runner = ApiRunner(app, keepalive_timeout=KEEPALIVE_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
