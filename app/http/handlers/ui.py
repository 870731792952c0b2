"""GET /ui: the dashboard, a static single-page app (``app/http/ui/``) over the public
API; GET / redirects to it.

The files are public; the page asks for an API key and sends it with every API
call, so it shows only what that key may see. A Content-Security-Policy keeps the
page to this origin, plus the object store's origin for images.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from app.errors import NotFound
from app.http.app_keys import SETTINGS
from app.http.openapi import Reply, operation

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file of ``app/http/ui`` by name, with its content type (read once)."""
    assets = {}
    for entry in resources.files("app.http").joinpath("ui").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return assets


def _policy(image_origin: str) -> str:
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src 'self' data: blob: {image_origin}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def _origin(url: str | None) -> str:
    if url is None:
        return "https:"  # AWS: presigned URLs name the bucket's own host
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _asset_response(request: web.Request, name: str) -> web.Response:
    asset = _assets().get(name)
    if asset is None:
        raise NotFound(f"no file {name} in the dashboard")
    body, content_type = asset
    image_origin = _origin(request.app[SETTINGS].presign_endpoint_url)
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8" if content_type.startswith("text/") else None,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": _policy(image_origin),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


@operation(
    "Redirect to the dashboard",
    tags=("dashboard",),
    replies={302: Reply(media_type="text/plain", description="to /ui", headers=("Location",))},
)
async def root(request: web.Request) -> web.Response:
    """The service's address in a browser: redirects to the dashboard at ``/ui``."""
    raise web.HTTPFound("/ui")


@operation(
    "Dashboard",
    tags=("dashboard",),
    replies={200: Reply(media_type="text/html", description="the dashboard page")},
)
async def index(request: web.Request) -> web.Response:
    """The dashboard: sign in with an API key, then jobs, batches, submit and the queue."""
    return _asset_response(request, "index.html")


@operation(
    "Dashboard file",
    tags=("dashboard",),
    replies={200: Reply(media_type="text/javascript", description="a script, style or page")},
    errors=(404,),
)
async def asset(request: web.Request) -> web.Response:
    """A file of the dashboard (scripts, styles); ``/ui/`` is the page itself."""
    return _asset_response(request, request.match_info["name"] or "index.html")
