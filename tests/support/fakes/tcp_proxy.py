"""A TCP proxy for tests that cut a server off: ``stop`` aborts every connection through
it and stops listening (clients are refused, as if the server were down), ``start``
listens on the same port again.

::

    proxy = TcpProxy("127.0.0.1", s3_port)
    await proxy.start()          # point clients at proxy.url
    await proxy.stop()           # the outage
    await proxy.start()          # the server is back
"""

from __future__ import annotations

import asyncio

from app.cli.embedded import free_port


class TcpProxy:
    """Forwards every connection on ``port`` to ``target``; ``stop`` cuts them all and
    stops listening (clients get refused), ``start`` listens on the same port again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again) on ``port``."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and abort every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            self._handlers.discard(task)
            return
        self._writers.add(target_writer)
        try:
            await asyncio.gather(
                _pipe(reader, target_writer), _pipe(target_reader, writer), return_exceptions=True
            )
        finally:
            for end in (writer, target_writer):
                end.transport.abort()
                self._writers.discard(end)
            self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.transport.abort()
