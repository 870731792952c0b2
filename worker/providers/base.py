"""What every upstream adapter implements: one edit call that yields one image.

An adapter turns an ``EditCall`` into exactly one output image (the gateways reject
``n > 1``; a job with ``n`` outputs makes ``n`` calls). It raises the ``UpstreamError``
branch of ``app.errors`` on failure, keeping the upstream's message and status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from app.core.jobs import Usage


@dataclass(frozen=True)
class InputImage:
    """An input image's encoded bytes, as the client uploaded them."""

    data: bytes
    content_type: str  # image/png, image/jpeg or image/webp

    @property
    def extension(self) -> str:
        """File extension for the content type (png, jpeg, webp)."""
        return self.content_type.removeprefix("image/")


PartialSink = Callable[[int, bytes], Awaitable[None]]
"""Takes a partial image (its 0-based index, its encoded bytes) while a call runs; it
must not raise (a partial image is a preview: losing one never fails the edit)."""


@dataclass(frozen=True)
class EditCall:
    """One call to an upstream, for one output image.

    ``mask`` follows OpenAI's convention: transparent pixels mark the area to edit.
    ``size``, ``quality``, ``background``, ``output_compression``, ``input_fidelity``
    and ``user`` are None when the client did not set them (the upstream's default
    applies). An adapter that can stream (an OpenAI-compatible one) asks for
    ``partial_images`` previews when ``on_partial`` is set and hands each to it before
    returning; the others ignore both and make the image only.
    """

    model: str  # the upstream's own model name
    prompt: str
    images: tuple[InputImage, ...]
    mask: InputImage | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str = "png"
    output_compression: int | None = None
    input_fidelity: str | None = None
    user: str | None = None
    timeout_s: float = 300.0
    partial_images: int = 0
    on_partial: PartialSink | None = None


@dataclass(frozen=True)
class EditOutput:
    """One edited image as the upstream returned it, and the usage it reported."""

    image: bytes
    usage: Usage | None = None


class Upstream(Protocol):
    """An upstream that edits images. ``close`` releases its connections."""

    name: str

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit; raises app.errors.UpstreamError (or a subclass) on failure."""
        ...

    async def close(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...
