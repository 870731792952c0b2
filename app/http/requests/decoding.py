"""Decoding a request's images within budgets of pixels, so no request can take the
API's memory from the others.

Each image's width and height are read from its header first (no pixel decoded).
A request whose images declare more than ``max_request_pixels`` in all is refused
(400) before any decode; each decode then holds its pixels from the process-wide
budget (``process_pixels``) while it runs in the executor, so concurrent requests
decode one after another instead of all at once, and a decode that cannot start
within ``wait_s`` is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from functools import partial

from app.core.images import CheckedImage, check_image, declared_pixels
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

    async def check_all(self, images: list[tuple[str, bytes]]) -> list[CheckedImage]:
        """Each ``(param, bytes)`` checked, in order; raises the first image's error."""
        declared = [declared_pixels(data) for _, data in images]
        if sum(declared) > self._max_request_pixels:
            raise InvalidRequest(
                f"the images declare {sum(declared):,} pixels in all; a request may carry at "
                f"most {self._max_request_pixels:,}",
                param=images[0][0],
            )
        loop = asyncio.get_running_loop()
        checked = []
        for (param, data), pixels in zip(images, declared, strict=True):
            check = partial(check_image, data, param=param, max_pixels=self._max_image_pixels)
            async with self.budget.hold(pixels, wait_s=self._wait_s):
                checked.append(await loop.run_in_executor(self._executor, check))
        return checked
