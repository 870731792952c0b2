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
``max_images`` (its entry: ``EditCall.model_entry``) are refused before anything is
sent. The key goes only to BFL's origin and its regional hosts (``regional_host``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any

import aiohttp
from yarl import URL

from app.core.providers_config import UpstreamConfig
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
from worker.providers.http.errors import error_for_status

STATUS_TIMEOUT_S = 30.0
"""Cap on one submit or status request (each is small and quick)."""

DOWNLOAD_TIMEOUT_S = 120.0
"""Cap on downloading a finished image."""

MAX_STATUS_BYTES = 1024 * 1024
"""Largest submit or status answer read."""

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


def regional_host(url: str, base_url: str) -> bool:
    """Whether ``url`` is https on a host under the parent domain of ``base_url``'s host
    (BFL answers ``https://api.bfl.ai`` submissions with polling URLs on regional hosts
    such as ``api.us1.bfl.ai``, which take the key too)."""
    try:
        target, base = URL(url), URL(base_url)
    except ValueError:
        return False
    labels = (base.host or "").split(".")
    if target.scheme != "https" or base.scheme != "https" or len(labels) < 3:
        return False
    return (target.host or "").endswith("." + ".".join(labels[1:]))


class BflUpstream:
    """Black Forest Labs' API for one ``[[upstreams]]`` entry, over a shared aiohttp
    session (which ``close`` leaves open); see the module docstring."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self._config = config.model_copy(update={"supports_mask": False})
        key = config.api_key.get_secret_value() if config.api_key else ""
        self._key = {"x-key": key} if key else {}
        self._client = HttpUpstreamClient(config, session, auth=self._key)
        self._base_url = (config.base_url or "").rstrip("/")

    async def submit(self, call: EditCall) -> UpstreamHandle:
        """Hand the edit to BFL; raises UpstreamError when it refuses it."""
        max_images = call.model_entry.max_images if call.model_entry is not None else 1
        call = await adapt_mask(call, self._config)
        body = submit_body(call, max_images)
        url = f"{self._base_url}/v1/{call.model}"
        timeout = min(STATUS_TIMEOUT_S, call.timeout_s)
        return handle_from(await self._json("POST", url, timeout, body))

    async def poll(self, handle: UpstreamHandle) -> PollResult:
        """How the edit stands; a finished image is downloaded before returning."""
        answer = await self._json("GET", handle.poll_url, STATUS_TIMEOUT_S)
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

    async def _json(
        self, method: str, url: str, timeout_s: float, body: object | None = None
    ) -> object:
        """One JSON exchange with BFL; its HTTP errors mapped by ``error_for_status``."""
        key = self._client.auth_for(url) or (
            self._key if regional_host(url, self._base_url) else {}
        )
        if not key and self._key:
            raise UpstreamBadResponse(f"BFL pointed elsewhere: {url[:200]!r}")
        headers = {"Accept": "application/json", **key}
        payload = None if body is None else aiohttp.JsonPayload(body)
        answer = await self._client.exchange(
            method, url, timeout_s, MAX_STATUS_BYTES, headers, body=payload
        )
        if not 200 <= answer.status < 300:
            raise error_for_status(answer.status, answer.body, answer.retry_after)
        try:
            return json.loads(answer.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamBadResponse(
                "BFL answered with something other than JSON", upstream_status=answer.status
            ) from exc

    async def _fetch(self, sample: str | None) -> PollResult:
        if sample is None:
            raise UpstreamBadResponse("BFL said Ready without result.sample")
        deadline = asyncio.get_running_loop().time() + DOWNLOAD_TIMEOUT_S
        try:
            return EditOutput(image=await self._client.download(sample, deadline, 200))
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
