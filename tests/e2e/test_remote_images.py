"""Remote ``image_url`` inputs: fetched at submit time through the SSRF guard, then
checked like uploads; every failure is a 4xx naming the parameter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.images import data_url, mask, png
from tests.support.service import RunningService

MAX_IMAGE_BYTES = 200_000
PARAM = "images[0].image_url"


class ImageHost:
    """A small HTTP server with good and bad image URLs; counts the requests it gets."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.port = 0
        app = web.Application()
        app.router.add_get("/a.png", self._png)
        app.router.add_get("/mask.png", self._mask)
        app.router.add_get("/together.png", self._together)
        app.router.add_get("/text", self._text)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/broken", self._broken)
        app.router.add_get("/slow-headers", self._slow_headers)
        app.router.add_get("/slow-body", self._slow_body)
        app.router.add_get("/big", self._big)
        app.router.add_get("/big-chunked", self._big_chunked)
        app.middlewares.append(self._count)
        self._runner = web.AppRunner(app)

    async def __aenter__(self) -> ImageHost:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """An absolute URL on this server."""
        return f"http://{host}:{self.port}{path}"

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def _png(self, request: web.Request) -> web.Response:
        return web.Response(body=png(), content_type="image/png")

    async def _mask(self, request: web.Request) -> web.Response:
        return web.Response(body=mask(), content_type="image/png")

    async def _together(self, request: web.Request) -> web.Response:
        """Answers once three requests are in flight at the same time (or after 3 s)."""
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while self.in_flight < 3 and self.most_in_flight < 3:
                    await asyncio.sleep(0.01)
        self.in_flight -= 1
        body = mask() if request.query.get("as") == "mask" else png()
        return web.Response(body=body, content_type="image/png")

    async def _text(self, request: web.Request) -> web.Response:
        return web.Response(text="not an image", content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/a.png")

    async def _missing(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def _broken(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def _slow_headers(self, request: web.Request) -> web.Response:
        await self._stall()
        return web.Response(body=png(), content_type="image/png")

    async def _slow_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(png())
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(png()[:20])
            await self._stall()
            await response.write(png()[20:])
        return response

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=bytes(MAX_IMAGE_BYTES + 1), content_type="image/png")

    async def _big_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_IMAGE_BYTES // 10_000 + 2):
                await response.write(bytes(10_000))
        return response

    async def _stall(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.release.wait()


@pytest.fixture
async def image_host() -> AsyncIterator[ImageHost]:
    """The image server on 127.0.0.1."""
    async with ImageHost() as host:
        yield host


@pytest.fixture
async def private_service(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API and a worker, allowed to fetch from private addresses (the test server)."""
    allowed = settings.model_copy(
        update={
            "allow_private_urls": True,
            "remote_fetch_timeout_s": 0.5,
            "max_image_bytes": MAX_IMAGE_BYTES,
        }
    )
    async with RunningService(allowed, providers) as running:
        yield running


def _body(*urls: str, mask_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "local/editor",
        "prompt": "make it grayscale",
        "images": [{"image_url": url} for url in urls],
    }
    if mask_url is not None:
        body["mask"] = {"image_url": mask_url}
    return body


async def test_remote_image_runs_end_to_end(
    private_service: RunningService, image_host: ImageHost
) -> None:
    status, job = await private_service.post("/v1/jobs", body=_body(image_host.url("/a.png")))
    assert status == 202, job
    assert job["request"]["images"][0]["bytes"] == len(png())
    done = await private_service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert image_host.hits == ["/a.png"]


async def test_remote_images_are_fetched_concurrently_with_a_mask(
    private_service: RunningService, image_host: ImageHost
) -> None:
    together = image_host.url("/together.png")
    body = _body(together, together, data_url(png()), mask_url=f"{together}?as=mask")
    status, job = await private_service.post("/v1/jobs", body=body)
    assert status == 202, job
    assert len(job["request"]["images"]) == 3
    assert job["request"]["mask"]["width"] == 64
    assert image_host.most_in_flight == 3


async def test_remote_mask_goes_through_the_mask_checks(
    private_service: RunningService, image_host: ImageHost
) -> None:
    body = _body(image_host.url("/a.png"), mask_url=image_host.url("/a.png"))
    status, answer = await private_service.post("/v1/jobs", body=body)
    assert status == 400, answer
    assert answer["error"]["param"] == "mask.image_url"
    assert "alpha" in answer["error"]["message"]

    body = _body(image_host.url("/a.png"), mask_url=image_host.url("/mask.png"))
    status, job = await private_service.post("/v1/jobs", body=body)
    assert status == 202, job


@pytest.mark.parametrize(
    ("path", "status", "code", "words"),
    [
        ("/text", 415, "unsupported_media_type", "not an image"),
        ("/redirect", 400, "invalid_request_error", "302"),
        ("/missing", 400, "invalid_request_error", "404"),
        ("/broken", 400, "invalid_request_error", "503"),
        ("/slow-headers", 400, "invalid_request_error", "timed out after 0.5 s"),
        ("/slow-body", 400, "invalid_request_error", "timed out after 0.5 s"),
        ("/big", 413, "payload_too_large", str(MAX_IMAGE_BYTES)),
        ("/big-chunked", 413, "payload_too_large", str(MAX_IMAGE_BYTES)),
    ],
)
async def test_bad_remote_images(
    private_service: RunningService,
    image_host: ImageHost,
    path: str,
    status: int,
    code: str,
    words: str,
) -> None:
    got, answer = await private_service.post("/v1/jobs", body=_body(image_host.url(path)))
    assert got == status, answer
    error = answer["error"]
    assert (error["code"], error["param"]) == (code, PARAM), answer
    assert words in error["message"]
    assert image_host.hits == [path]  # the redirect was not followed


async def test_a_dead_port_is_a_400(private_service: RunningService) -> None:
    status, answer = await private_service.post("/v1/jobs", body=_body("http://127.0.0.1:9/x"))
    assert status == 400, answer
    assert answer["error"]["param"] == PARAM


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"])
async def test_private_addresses_are_refused_by_default(
    service: RunningService, image_host: ImageHost, host: str
) -> None:
    status, answer = await service.post("/v1/jobs", body=_body(image_host.url("/a.png", host)))
    assert status == 400, answer
    assert answer["error"]["param"] == PARAM
    assert PARAM in answer["error"]["message"]
    assert image_host.hits == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1/x", "ftp://example.com/a.png", "a.png"]
)
async def test_other_schemes_are_refused(service: RunningService, url: str) -> None:
    status, answer = await service.post("/v1/jobs", body=_body(url))
    assert status == 400, answer
    assert answer["error"]["param"] == PARAM


async def test_too_many_remote_images_are_refused_before_fetching(
    private_service: RunningService, image_host: ImageHost
) -> None:
    urls = [image_host.url("/a.png")] * (private_service.settings.max_images + 1)
    status, answer = await private_service.post("/v1/jobs", body=_body(*urls))
    assert status == 400, answer
    assert answer["error"]["param"] == "images"
    assert image_host.hits == []
