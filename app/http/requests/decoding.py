"""Decoding a request's images within budgets of pixels, so no request can take the
API's memory from the others.

Every image's header is read first (``read_headers``, no pixel decoded): an image
its header refuses (format, pixels) and a request whose images declare more than
``max_request_pixels`` in all are refused (400/415) before any decode. Pixels are
counted at what their decode costs in memory (``app.core.images.DECODE_WEIGHT``: a
WebP pixel counts four times). Each decode
(``decode``) then holds its pixels from the process-wide budget (``process_pixels``)
while it runs in the executor, so concurrent requests decode one after another
instead of all at once, and a decode that cannot start within ``wait_s`` is answered
503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from functools import partial

from app.core.images import CheckedImage, DeclaredImage, check_image, read_header
from app.errors import InvalidRequest, ServiceUnavailable


class PixelBudget:
    """A weighted semaphore of pixels (an asyncio one: the event loop's requests)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Condition()

    @property
    def free(self) -> int:
        """Pixels not held now."""
        return self._free

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int, *, wait_s: float) -> AsyncIterator[None]:
        """Hold ``pixels`` (at most the capacity) for the block; ServiceUnavailable
        when they do not come free within ``wait_s`` seconds."""
        wanted = min(pixels, self.capacity)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._free >= wanted), wait_s)
            except TimeoutError:
                raise ServiceUnavailable(
                    "too many images are being checked right now; try again shortly",
                    retry_after=max(1.0, wait_s),
                ) from None
            self._free -= wanted
        try:
            yield
        finally:
            async with self._changed:
                self._free += wanted
                self._changed.notify_all()


class ImageDecoder:
    """Checks a request's images (``app.core.images.check_image``) within the budgets."""

    def __init__(
        self,
        executor: Executor,
        *,
        max_image_pixels: int,
        max_request_pixels: int,
        process_pixels: int,
        wait_s: float,
    ) -> None:
        self._executor = executor
        self._max_image_pixels = max_image_pixels
        self._max_request_pixels = max_request_pixels
        self._wait_s = wait_s
        self.budget = PixelBudget(process_pixels)

    def read_headers(self, images: list[tuple[str, bytes]]) -> list[DeclaredImage]:
        """What each ``(param, bytes)`` declares, in order, nothing decoded; raises the
        first image's refusal (``read_header``), then InvalidRequest when they declare
        more than ``max_request_pixels`` in all."""
        declared = [
            read_header(data, param=param, max_pixels=self._max_image_pixels)
            for param, data in images
        ]
        pixels = sum(image.decode_cost for image in declared)
        if pixels > self._max_request_pixels:
            raise InvalidRequest(
                f"the images declare {pixels:,} pixels in all; a request may carry at "
                f"most {self._max_request_pixels:,}",
                param=images[0][0],
            )
        return declared

    async def decode(
        self, images: list[tuple[str, bytes]], declared: list[DeclaredImage]
    ) -> list[CheckedImage]:
        """Each ``(param, bytes)`` decoded and checked, in order, holding the pixels its
        header ``declared`` (from ``read_headers``); raises the first image's error."""
        loop = asyncio.get_running_loop()
        checked = []
        for (param, data), header in zip(images, declared, strict=True):
            check = partial(check_image, data, param=param, max_pixels=self._max_image_pixels)
            async with self.budget.hold(header.decode_cost, wait_s=self._wait_s):
                checked.append(await loop.run_in_executor(self._executor, check))
        return checked
