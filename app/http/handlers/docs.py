"""GET /docs and GET /openapi.json: the API's description, both built once at start-up
from the route table (``app.http.openapi``, ``app.http.docs_page``)."""

from __future__ import annotations

from aiohttp import web

from app.http.app_keys import API_DOCUMENT, DOCS_PAGE
from app.http.openapi import Reply, operation


@operation(
    "API reference page",
    tags=("docs",),
    replies={200: Reply(media_type="text/html", description="this reference as HTML")},
)
async def docs(request: web.Request) -> web.Response:
    """GET /docs: every operation, parameter, body and schema, readable in a browser."""
    return web.Response(text=request.app[DOCS_PAGE], content_type="text/html")


@operation(
    "OpenAPI document",
    tags=("docs",),
    replies={200: Reply(description="the OpenAPI 3.1 document of this API")},
)
async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document, generated from the code."""
    return web.Response(body=request.app[API_DOCUMENT].body, content_type="application/json")
