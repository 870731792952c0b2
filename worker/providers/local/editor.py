"""The built-in ``local`` upstream: edits with Pillow in-process, no network needed.

It waits the configured ``delay_s`` first, so it behaves like a slow upstream, then
applies the effects its prompt names (see ``worker.providers.local.effects``) in an
executor, never on the event loop. The result is always a PNG (alpha kept).
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor

from PIL import Image

from app.core.images import Undecodable, open_untrusted
from app.core.providers_config import UpstreamConfig
from app.errors import UnsupportedPrompt, UpstreamRejected
from worker.providers.base import EditCall, EditOutput, InputImage
from worker.providers.local.effects import VOCABULARY, edit_image, estimate_usage, understood

_MAX_INPUT_PIXELS = 100_000_000
_QUOTED_PROMPT_CHARS = 200


class LocalUpstream:
    """An upstream that edits locally; ``executor`` runs Pillow (the loop's default if None)."""

    def __init__(self, config: UpstreamConfig, executor: Executor | None = None) -> None:
        self.name = config.name
        self._delay_s = config.delay_s
        self._executor = executor

    async def edit(self, call: EditCall) -> EditOutput:
        """Edit ``call.images[0]`` as the prompt says; UnsupportedPrompt when the prompt
        names nothing it can do, UpstreamRejected for other bad input.

        Cancelling the call during the delay stops it at once.
        """
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _edit, call)

    async def close(self) -> None:
        """Nothing to release: the executor belongs to the caller."""


def _edit(call: EditCall) -> EditOutput:
    if not call.images:
        raise UpstreamRejected("the local upstream needs at least one image")
    # A transparent background is an edit of its own, even without a known word.
    if call.background != "transparent" and not understood(call.prompt, len(call.images)):
        prompt = call.prompt[:_QUOTED_PROMPT_CHARS]
        raise UnsupportedPrompt(
            f"the local editor found nothing it knows how to do in the prompt {prompt!r}; "
            f"it understands: {VOCABULARY}"
        )
    images = [_decode(image, f"image {index}") for index, image in enumerate(call.images)]
    mask = None if call.mask is None else _decode(call.mask, "mask")
    result = edit_image(images, mask, call.prompt, _size(call.size), call.background)
    buffer = io.BytesIO()
    result.save(buffer, "PNG")
    usage = estimate_usage(call.prompt, [image.size for image in images], result.size)
    return EditOutput(image=buffer.getvalue(), usage=usage)


def _decode(image: InputImage, what: str) -> Image.Image:
    def rejected(why: Undecodable) -> UpstreamRejected:
        if why.reason == "pixels":
            size = f"{why.width}x{why.height}"
            return UpstreamRejected(f"{what} is {size}, over {_MAX_INPUT_PIXELS} pixels")
        if why.reason == "bomb":
            return UpstreamRejected(f"{what} is too large: {why.detail}")
        return UpstreamRejected(f"{what} ({image.content_type}) cannot be decoded: {why.detail}")

    return open_untrusted(image.data, max_pixels=_MAX_INPUT_PIXELS, refuse=rejected)


def _size(size: str | None) -> tuple[int, int] | None:
    """``"WIDTHxHEIGHT"`` as a tuple; None for no size or ``"auto"``."""
    if size is None or size == "auto":
        return None
    width, _, height = size.partition("x")
    try:
        parsed = int(width), int(height)
    except ValueError:
        parsed = (0, 0)
    if min(parsed) < 1:
        raise UpstreamRejected(f"size must be 'auto' or WIDTHxHEIGHT, got {size!r}")
    return parsed
