"""``x-editq-ignored-params`` on every answer to a request that sent fields editq
ignores (see ``app.http.requests.ignored``).

The list is put on the request before any handler runs, so the copy of the request
the idempotency middleware hands on shares it; the header is added when the answer
is prepared, so streamed answers carry it too.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from app.http.requests.ignored import HEADER, IGNORED_PARAMS, header_value


@web.middleware
async def ignored_params_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an empty list of ignored parameters for its readers to fill."""
    request[IGNORED_PARAMS] = []
    return await handler(request)


async def ignored_params_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: name the ignored parameters, if any."""
    ignored = request.get(IGNORED_PARAMS)
    if ignored:
        response.headers[HEADER] = header_value(ignored)
