"""Streamed responses that end cleanly when something fails after they have started.

Once a streamed response's status line and headers are sent, no error can be
answered any more: writing an error response then would put a second status line
inside a chunked body (``illegal chunk header`` for the client). ``started_stream``
prepares the response and runs the block that writes it; when the block fails, the
failure is logged and the connection is closed without the chunked body's final
chunk, so every client sees a truncated response rather than a complete-looking
one. When the block succeeds the body is finished normally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

log = logging.getLogger(__name__)


@asynccontextmanager
async def started_stream(
    request: web.Request, response: web.StreamResponse, what: str
) -> AsyncIterator[web.StreamResponse]:
    """Prepare ``response``, run the block, then finish it; see the module docstring.

    ``what`` names the stream in the log line of a failure.
    """
    await response.prepare(request)
    try:
        yield response
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        log.debug("%s: the client went away", what)
        return
    except Exception:
        log.exception("%s failed after it had started; the response is cut short", what)
        request.protocol.force_close()
        if request.transport is not None:
            request.transport.close()
        return
    await response.write_eof()
