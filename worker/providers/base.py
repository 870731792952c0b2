"""What every upstream adapter implements: one edit call that yields one image.

An adapter turns an ``EditCall`` into exactly one output image (the gateways reject
``n > 1``; a job with ``n`` outputs makes ``n`` calls). It raises the ``UpstreamError``
branch of ``app.errors`` on failure, keeping the upstream's message and status.

Two shapes. A synchronous adapter (``Upstream``) makes one call and returns the image.
An asynchronous one (``AsyncUpstream``: Black Forest Labs, Replicate, fal) submits the
edit and answers with an ``UpstreamHandle`` at once; the handle is recorded with the
call before any waiting, and ``poll`` is then asked, as scheduled work, how the edit
stands: ``PollPending``, ``EditOutput`` (done) or ``PollFailed``. ``poll`` *raises*
only when asking failed (the status request itself): a transient error means "ask
again later", a rejection (401, 403) ends the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.core.jobs import Usage
from app.core.providers_config import ModelConfig
from app.errors import UpstreamError


@dataclass(frozen=True)
class InputImage:
    """An input image's encoded bytes, as the client uploaded them; or, for an upstream
    whose ``input_transfer`` is ``url``, no bytes (``data`` empty) and a short-lived
    presigned ``url`` of the stored copy, which the upstream fetches itself."""

    data: bytes
    content_type: str  # image/png, image/jpeg or image/webp
    url: str | None = None

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

    ``model_entry`` is the providers file's entry for the model, whose fields the
    native APIs read (Replicate's and fal's ``prompt_field``/``image_field``,
    ``max_images``, ``version``); None where nothing reads them.
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
    model_entry: ModelConfig | None = None


@dataclass(frozen=True)
class EditOutput:
    """One edited image as the upstream returned it, and the usage it reported."""

    image: bytes
    usage: Usage | None = None


@dataclass(frozen=True)
class UpstreamHandle:
    """An edit an asynchronous upstream accepted: enough to poll, fetch and cancel it
    from any worker (it is stored in the job's record as JSON, so strings only)."""

    request_id: str
    poll_url: str
    result_url: str | None = None  # fal: where the finished result is read
    cancel_url: str | None = None  # Replicate, fal


@dataclass(frozen=True)
class PollPending:
    """Still queued or working; ``retry_after`` is the upstream's hint, in seconds."""

    queue_position: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class PollFailed:
    """The upstream ran the edit and it failed (moderation: ``ContentFiltered``)."""

    error: UpstreamError


PollResult = PollPending | EditOutput | PollFailed


@runtime_checkable
class Upstream(Protocol):
    """An upstream that edits images. ``close`` releases its connections."""

    name: str

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit; raises app.errors.UpstreamError (or a subclass) on failure."""
        ...

    async def close(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...


@runtime_checkable
class AsyncUpstream(Protocol):
    """An upstream that takes an edit and is polled for its result (see the module
    docstring). ``edit`` is not offered: waiting is the caller's scheduled work."""

    name: str

    async def submit(self, call: EditCall) -> UpstreamHandle:
        """Hand the edit over; raises UpstreamError when the upstream refuses it."""
        ...

    async def poll(self, handle: UpstreamHandle) -> PollResult:
        """How the edit stands; a finished image is downloaded before returning (result
        URLs expire). Raises UpstreamError only when asking failed."""
        ...

    async def cancel(self, handle: UpstreamHandle) -> bool:
        """Ask the upstream to stop; False where its API has no cancel."""
        ...

    async def close(self) -> None:
        """Release connections; the adapter is not used afterwards."""
        ...
