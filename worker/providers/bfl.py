"""The adapter for Black Forest Labs' API (``kind = "bfl"``): FLUX Kontext and the like.

BFL is always asynchronous. ``submit`` sends ``POST {base_url}/v1/{upstream_model}``
(header ``x-key``) with JSON ``{prompt, input_image, input_image_2 …, output_format,
aspect_ratio?}`` and gets ``{id, polling_url}``; ``poll`` asks ``GET polling_url`` (with
``x-key``) and reads ``status``::

    Pending, Queued                         PollPending
    Ready                                   EditOutput: result.sample downloaded at once
                                            (a signed URL valid about 10 minutes)
    Request Moderated, Content Moderated    PollFailed(ContentFiltered): final
    Error, Failed                           PollFailed(UpstreamError): retryable
    Task not found                          PollFailed(UpstreamError upstream_task_lost)

An expired or refused result URL (403, 404 on download) is a failed edit too
(``PollFailed``, code ``upstream_result_expired``); a 5xx on download, or any failure
of the status request itself, raises (ask again later). HTTP errors of both requests
map through ``worker.providers.http.errors``. BFL has no cancel: ``cancel`` says False.

Kontext takes no mask: a mask goes as one more input image, the prompt saying which
area to edit (``adapt_mask`` with ``supports_mask`` off). Images beyond the model's
``max_images`` are refused before anything is sent.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import ContentFiltered, UpstreamBadResponse, UpstreamError, UpstreamRejected
from worker.providers.base import (
    EditCall,
    EditOutput,
    InputImage,
    PollFailed,
    PollPending,
    PollResult,
    UpstreamHandle,
)
from worker.providers.http.client import HttpUpstreamClient, adapt_mask

STATUS_TIMEOUT_S = 30.0
"""Cap on one submit or status request (each is small and quick)."""

DOWNLOAD_TIMEOUT_S = 120.0
"""Cap on downloading a finished image."""

PENDING_STATUSES = frozenset({"Pending", "Queued"})
MODERATED_STATUSES = frozenset({"Request Moderated", "Content Moderated"})
FAILED_STATUSES = frozenset({"Error", "Failed"})
OUTPUT_FORMATS = frozenset({"png", "jpeg"})


def submit_body(call: EditCall, max_images: int) -> dict[str, Any]:
    """The JSON body of one submission; UpstreamRejected when the call has more
    images than the model takes. A presigned ``url`` goes instead of an image's bytes."""
    if len(call.images) > max_images:
        raise UpstreamRejected(
            f"model {call.model} takes at most {max_images} input image(s), "
            f"this edit has {len(call.images)}",
            code="invalid_request_error",
        )
    body: dict[str, Any] = {
        "prompt": call.prompt,
        # editq converts the result to the client's format; webp is asked for as png.
        "output_format": call.output_format if call.output_format in OUTPUT_FORMATS else "png",
    }
    for index, image in enumerate(call.images):
        field = "input_image" if index == 0 else f"input_image_{index + 1}"
        body[field] = _image_value(image)
    ratio = aspect_ratio(call.size)
    if ratio is not None:
        body["aspect_ratio"] = ratio
    return body


def aspect_ratio(size: str | None) -> str | None:
    """BFL's ``aspect_ratio`` (``"3:2"``) for an OpenAI ``size`` (``"1536x1024"``);
    None for ``auto``, unset or unreadable sizes (the input's own ratio applies)."""
    if not size or "x" not in size:
        return None
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()) or not int(width) or not int(height):
        return None
    divisor = math.gcd(int(width), int(height))
    return f"{int(width) // divisor}:{int(height) // divisor}"


def _image_value(image: InputImage) -> str:
    return image.url if image.url else base64.b64encode(image.data).decode("ascii")


def handle_from(answer: object) -> UpstreamHandle:
    """The handle in a submission's answer ``{id, polling_url}``."""
    if isinstance(answer, dict):
        request_id, polling_url = answer.get("id"), answer.get("polling_url")
        if isinstance(request_id, str) and isinstance(polling_url, str) and polling_url:
            return UpstreamHandle(request_id=request_id, poll_url=polling_url)
    raise UpstreamBadResponse(
        f"BFL answered a submission without id and polling_url: {answer!r:.200}"
    )


def read_status(answer: object) -> tuple[str, str | None, str]:
    """``(status, result sample URL, details)`` from a status answer."""
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
        raise UpstreamBadResponse(f"BFL answered a poll without a status: {answer!r:.200}")
    result = answer.get("result")
    sample = result.get("sample") if isinstance(result, dict) else None
    details = answer.get("details")
    return answer["status"], sample if isinstance(sample, str) else None, str(details or "")


class BflUpstream:
    """Black Forest Labs' API; ``models`` are this upstream's model entries by
    ``upstream_model`` (for their ``max_images``)."""

    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        models: Mapping[str, ModelConfig],
    ) -> None:
        self.name = config.name
        self._config = config.model_copy(update={"supports_mask": False})
        self._client = HttpUpstreamClient(config, session, auth_header=("x-key", ""))
        self._base_url = (config.base_url or "").rstrip("/")
        self._max_images = {name: model.max_images for name, model in models.items()}

    async def submit(self, call: EditCall) -> UpstreamHandle:
        """Hand the edit to BFL; raises UpstreamError when it refuses it."""
        call = await adapt_mask(call, self._config)
        body = submit_body(call, self._max_images.get(call.model, 1))
        url = f"{self._base_url}/v1/{call.model}"
        timeout = min(STATUS_TIMEOUT_S, call.timeout_s)
        return handle_from(await self._client.exchange_json("POST", url, timeout, body))

    async def poll(self, handle: UpstreamHandle) -> PollResult:
        """How the edit stands; a finished image is downloaded before returning."""
        answer = await self._client.exchange_json("GET", handle.poll_url, STATUS_TIMEOUT_S)
        status, sample, details = read_status(answer)
        if status in PENDING_STATUSES:
            return PollPending()
        if status == "Ready":
            return await self._fetch(sample)
        reason = f"BFL {status.lower()}" + (f": {details}" if details else "")
        if status in MODERATED_STATUSES:
            return PollFailed(ContentFiltered(reason))
        if status == "Task not found":
            return PollFailed(UpstreamError(reason, code="upstream_task_lost"))
        if status in FAILED_STATUSES:
            return PollFailed(UpstreamError(reason))
        raise UpstreamBadResponse(f"BFL answered an unknown status {status!r:.100}")

    async def _fetch(self, sample: str | None) -> PollResult:
        if sample is None:
            raise UpstreamBadResponse("BFL said Ready without result.sample")
        try:
            return EditOutput(image=await self._client.download(sample, DOWNLOAD_TIMEOUT_S))
        except UpstreamBadResponse as exc:
            if exc.upstream_status in (403, 404, 410):
                message = f"BFL's result URL answered HTTP {exc.upstream_status} (expired)"
                return PollFailed(
                    UpstreamError(
                        message, upstream_status=exc.upstream_status, code="upstream_result_expired"
                    )
                )
            raise

    async def cancel(self, handle: UpstreamHandle) -> bool:
        """BFL's API has no cancel."""
        return False

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""
